defmodule BeamBridge.StandardError do
  @moduledoc """
  Holds the registered name `:standard_error`, so that what an evaluation
  writes there becomes that evaluation's output instead of a line in the
  node's log.

  User code cannot name standard error (the policy allows output only to
  the fragment's own device), but Elixir's compiler prints its warnings to
  `:standard_error` from whichever process compiles: the evaluation, or a
  process it starts to compile a module or to check its calls. Left alone,
  those warnings would reach the node's stderr (the gateway's log, for an
  embedded node) unbounded by any output limit, in pool names the model
  never chose, and the model would never see them.

  The router answers io requests (`{:io_request, from, reply_as, request}`)
  by the requester's group leader:

    * a `BeamBridge.IOProxy`: the request goes to the proxy, which rewrites
      the text in the session's names and counts it as output; the router
      relays the proxy's reply to the requester, or `{:error, :terminated}`
      when the proxy ends first.
    * any other live process on this node, or a process elsewhere (the
      node's logger, OTP reports, a remote shell): the message goes as it is
      to the device that held the name before, which replies to the
      requester itself.
    * a process whose group leader is gone: the reply is
      `{:error, :terminated}`, as from a device that ended. User code starts
      no processes, so the writers in that state are the compiler's helpers
      of an evaluation being killed, whose text must not go to the log.
    * a requester that is gone itself (an evaluation killed while its write
      waited here): nobody awaits the reply, and the request is dropped.

  Telling a proxy apart costs two reads of process fields per request, the
  price of each line the node logs to stderr.

  The device that held the name is kept in `:persistent_term` the first
  time the router starts: a router restarted by its supervisor finds the
  name free, and must not take itself for the original. Between one
  router's end and the next one's start, writes to `:standard_error` fail
  as they would with no device; a router that stops cleanly gives the name
  back to the original device first.

  `ExUnit.CaptureIO.capture_io(:stderr, fun)` keeps working: it moves the
  name to its own device and back to the router afterwards, so while it
  captures, everything written to standard error (the evaluations'
  warnings included) is captured.
  """

  use GenServer

  alias BeamBridge.IOProxy

  @name :standard_error
  @original {__MODULE__, :original}

  @doc "Starts the router and moves the name `:standard_error` to it."
  @spec start_link(keyword) :: GenServer.on_start()
  def start_link(opts \\ []), do: GenServer.start_link(__MODULE__, opts)

  @doc "The device that held `:standard_error` before the router, if it has started."
  @spec original() :: pid | nil
  def original, do: :persistent_term.get(@original, nil)

  @doc """
  Makes the router forward what is not an evaluation's to `device` instead
  of the original device, and returns the device it replaced. For tests,
  which need to see where text went; the next restart forgets it.
  """
  @spec put_device(pid) :: pid
  def put_device(device), do: GenServer.call(@name, {:put_device, device})

  @impl true
  def init(_opts) do
    # To give the name back in `terminate/2` when the supervisor stops us.
    Process.flag(:trap_exit, true)
    original = remember_original()
    take_name()
    {:ok, %{device: original, pending: %{}}}
  end

  defp remember_original do
    case original() do
      nil ->
        device = Process.whereis(@name)
        :persistent_term.put(@original, device)
        device

      device ->
        device
    end
  end

  defp take_name do
    if Process.whereis(@name), do: unregister()
    Process.register(self(), @name)
  end

  @impl true
  def handle_info({:io_request, from, reply_as, request} = message, state) when is_pid(from) do
    case writer(from) do
      {:proxy, proxy} ->
        {:noreply, forward(proxy, from, reply_as, request, state)}

      :other ->
        send(state.device, message)
        {:noreply, state}

      :orphan ->
        send(from, {:io_reply, reply_as, {:error, :terminated}})
        {:noreply, state}

      :gone ->
        {:noreply, state}
    end
  end

  def handle_info({:io_reply, ref, reply}, %{pending: pending} = state)
      when is_map_key(pending, ref) do
    Process.demonitor(ref, [:flush])
    {{from, reply_as}, pending} = Map.pop(pending, ref)
    send(from, {:io_reply, reply_as, reply})
    {:noreply, %{state | pending: pending}}
  end

  def handle_info({:DOWN, ref, :process, _, _}, %{pending: pending} = state)
      when is_map_key(pending, ref) do
    {{from, reply_as}, pending} = Map.pop(pending, ref)
    send(from, {:io_reply, reply_as, {:error, :terminated}})
    {:noreply, %{state | pending: pending}}
  end

  def handle_info(_message, state), do: {:noreply, state}

  @impl true
  def handle_call({:put_device, device}, _from, state) do
    {:reply, state.device, %{state | device: device}}
  end

  @impl true
  def terminate(_reason, _state) do
    if Process.whereis(@name) == self() do
      unregister()
      give_back()
    end
  end

  defp give_back do
    Process.register(original(), @name)
  rescue
    # The original device is gone or has taken another name: nothing to
    # give the name back to.
    ArgumentError -> :ok
  end

  # Whose text a request is. A group leader on another node is never a
  # proxy, and cannot be asked whether it is alive.
  defp writer(from) when node(from) != node(), do: :other

  defp writer(from) do
    case Process.info(from, :group_leader) do
      {:group_leader, leader} when node(leader) != node() -> :other
      {:group_leader, leader} -> leader_kind(leader)
      nil -> :gone
    end
  end

  defp leader_kind(leader) do
    case Process.info(leader, :initial_call) do
      {:initial_call, call} ->
        if call == IOProxy.initial_call(), do: {:proxy, leader}, else: :other

      nil ->
        :orphan
    end
  end

  # The proxy replies to the router, under a monitor, so that a proxy that
  # ends before replying still gets the requester an answer.
  defp forward(proxy, from, reply_as, request, state) do
    ref = Process.monitor(proxy)
    send(proxy, {:standard_error_request, self(), ref, request})
    %{state | pending: Map.put(state.pending, ref, {from, reply_as})}
  end

  defp unregister do
    Process.unregister(@name)
  rescue
    # Another process moved the name in the meantime.
    ArgumentError -> :ok
  end
end
