defmodule BeamBridge.Connection do
  @moduledoc """
  One gateway connection: the handshake, then requests in and events out.

  The connection owns the sessions it opened. Sessions send their events to
  it as `{:bridge_event, map}`; it encodes each one as a frame, so all the
  events of a session leave in the order the session produced them. When the
  connection goes away its sessions see the owner die and stop.

  Every frame is decoded with `binary_to_term(bin, [:safe])`; anything that
  cannot be acted on is answered with an `:error` message and the connection
  keeps serving. Only a wrong handshake or an oversized frame closes it.

  Until the hello is accepted a peer is a stranger: it has
  `:handshake_timeout_ms` to send it, and its frames may be at most
  #{64 * 1024} bytes, so an unauthenticated peer can hold neither a
  process nor a large buffer for long.
  """

  use GenServer, restart: :temporary
  require Logger

  alias BeamBridge.{Config, Session}

  @version 1
  @max_session_id_bytes 128
  # Largest frame before the handshake: a hello is a few dozen bytes.
  @max_hello_bytes 64 * 1024

  @doc false
  @spec start(:gen_tcp.socket(), keyword) :: DynamicSupervisor.on_start_child()
  def start(socket, opts) do
    DynamicSupervisor.start_child(BeamBridge.ConnectionSupervisor, {__MODULE__, {socket, opts}})
  end

  @doc false
  def start_link({socket, opts}), do: GenServer.start_link(__MODULE__, {socket, opts})

  @impl true
  def init({socket, opts}) do
    state = %{
      socket: socket,
      secret: Keyword.fetch!(opts, :secret),
      max_frame_bytes: Keyword.fetch!(opts, :max_frame_bytes),
      authenticated: false,
      buffer: "",
      sessions: %{}
    }

    timer =
      Process.send_after(self(), :handshake_timeout, Keyword.fetch!(opts, :handshake_timeout_ms))

    {:ok, Map.put(state, :handshake_timer, timer)}
  end

  @impl true
  def handle_info(:socket_ready, state) do
    :ok = :inet.setopts(state.socket, active: :once)
    {:noreply, state}
  end

  def handle_info({:tcp, socket, data}, state) do
    case take_frames(state.buffer <> data, state) do
      {:ok, rest, state} ->
        :ok = :inet.setopts(socket, active: :once)
        {:noreply, %{state | buffer: rest}}

      :closed ->
        {:stop, :normal, nil}
    end
  end

  def handle_info({:tcp_error, _socket, reason}, state) do
    Logger.info("bridge connection error: #{inspect(reason)}")
    {:stop, :normal, state}
  end

  def handle_info({:tcp_closed, _socket}, state), do: {:stop, :normal, state}

  def handle_info(:handshake_timeout, %{authenticated: false} = state) do
    refuse(state, :bad_handshake, "no hello within the handshake timeout")
    {:stop, :normal, state}
  end

  def handle_info(:handshake_timeout, state), do: {:noreply, state}

  # Events waiting in the mailbox leave in the same write: a fragment's
  # result and its block's `done` usually arrive together.
  def handle_info({:bridge_event, event}, state) do
    :gen_tcp.send(state.socket, [frame(event) | more_frames(64)])
    {:noreply, state}
  end

  def handle_info({:DOWN, _ref, :process, pid, _reason}, state) do
    sessions = for {id, p} <- state.sessions, p != pid, into: %{}, do: {id, p}
    {:noreply, %{state | sessions: sessions}}
  end

  # -- frames

  # Frames are cut here rather than by the socket's `packet: 4` mode so that
  # an oversized frame can still be answered before the connection closes.
  defp take_frames(<<size::32, _rest::binary>>, %{authenticated: false} = state)
       when size > @max_hello_bytes do
    refuse(state, :frame_too_large, "frame of #{size} bytes before the handshake")
    :closed
  end

  defp take_frames(<<size::32, _rest::binary>>, state) when size > state.max_frame_bytes do
    reply_error(
      state,
      :frame_too_large,
      "frame of #{size} bytes is over #{state.max_frame_bytes}"
    )

    :gen_tcp.close(state.socket)
    :closed
  end

  defp take_frames(<<size::32, frame::binary-size(size), rest::binary>>, state) do
    case handle_frame(frame, state) do
      nil -> :closed
      state -> take_frames(rest, state)
    end
  end

  defp take_frames(partial, state), do: {:ok, partial, state}

  defp handle_frame(frame, state) do
    case decode(frame) do
      {:ok, message} ->
        handle_message(message, state)

      :error ->
        if state.authenticated do
          reply_error(state, :bad_frame, "frame is not valid ETF or names an unknown atom")
          state
        else
          refuse(state, :bad_handshake, "the first frame must be a valid hello")
        end
    end
  end

  defp decode(frame) do
    {:ok, :erlang.binary_to_term(frame, [:safe])}
  rescue
    ArgumentError -> :error
  end

  defp handle_message(%{type: :hello} = hello, %{authenticated: false} = state) do
    cond do
      hello[:version] != @version ->
        refuse(state, :bad_version, "this node speaks bridge protocol version #{@version}")

      not is_binary(hello[:secret]) or not secret_matches?(hello[:secret], state.secret) ->
        refuse(state, :unauthorized, "wrong secret")

      true ->
        send_frame(state, %{
          type: :welcome,
          version: @version,
          node: Atom.to_string(node()),
          max_frame_bytes: state.max_frame_bytes
        })

        Process.cancel_timer(state.handshake_timer)
        %{state | authenticated: true}
    end
  end

  defp handle_message(_message, %{authenticated: false} = state) do
    refuse(state, :bad_handshake, "the first frame must be a hello")
  end

  defp handle_message(%{type: :ping} = ping, state) do
    send_frame(state, %{type: :pong, ref: Map.get(ping, :ref), stats: stats()})
    state
  end

  defp handle_message(%{type: :open, session: id} = msg, state) when is_binary(id) do
    options = Map.get(msg, :options, %{})

    cond do
      byte_size(id) == 0 or byte_size(id) > @max_session_id_bytes ->
        reply_error(state, :bad_request, "session id must be 1 to #{@max_session_id_bytes} bytes")
        state

      not is_map(options) ->
        reply_error(state, :bad_request, "options must be a map", id)
        state

      true ->
        start_session(id, [owner: self(), options: options], state)
    end
  end

  defp handle_message(%{type: :fork, session: id, at: at, new_session: new_id}, state)
       when is_binary(new_id) and is_integer(at) and at >= 0 do
    # The new session copies the context from its parent itself: the
    # context goes from one process to the other once, not through here.
    with_session(state, id, fn pid ->
      start_session(new_id, [owner: self(), fork_of: {pid, id, at}], state)
    end)
  end

  defp handle_message(%{type: type, session: id} = msg, state) when is_binary(id) do
    case request(type, msg) do
      {:ok, request} ->
        with_session(state, id, fn pid ->
          Session.request(pid, request)
          state
        end)

      {:error, message} ->
        reply_error(state, :bad_request, message, id)
        state
    end
  end

  defp handle_message(message, state) do
    reply_error(state, :bad_request, "cannot act on #{describe(message)}")
    state
  end

  defp request(:chunk, %{text: text}) when is_binary(text), do: {:ok, {:chunk, text}}
  defp request(:end, _msg), do: {:ok, :end}
  defp request(:eval, %{code: code}) when is_binary(code), do: {:ok, {:eval, code}}
  defp request(:cancel, _msg), do: {:ok, :cancel}
  defp request(:close, _msg), do: {:ok, :close}

  defp request(:rewind, %{to: to}) when is_integer(to) and to >= 0, do: {:ok, {:rewind, to}}

  defp request(type, _msg) when type in [:chunk, :eval, :rewind, :fork],
    do: {:error, "#{type}: missing or mistyped fields (see protocol/bridge.md)"}

  defp request(type, _msg), do: {:error, "unknown request type #{inspect(type)}"}

  # -- sessions

  defp start_session(id, opts, state) do
    if session_count() >= Config.caps().max_sessions do
      reply_error(
        state,
        :limit,
        "the node holds its most sessions (#{Config.caps().max_sessions})",
        id
      )

      state
    else
      open_session(id, opts, state)
    end
  end

  defp session_count, do: DynamicSupervisor.count_children(BeamBridge.SessionSupervisor).active

  defp open_session(id, opts, state) do
    case Session.start(id, opts) do
      {:ok, pid} ->
        Process.monitor(pid)
        %{state | sessions: Map.put(state.sessions, id, pid)}

      # The error names the session that was not made, so that the gateway
      # can answer the fork's request with it.
      {:error, {:fork_refused, message}} ->
        reply_error(state, :bad_request, message, id)
        state

      {:error, {:already_started, _}} ->
        reply_error(state, :session_exists, "session #{inspect(id)} already exists", id)
        state

      {:error, reason} ->
        reply_error(state, :internal, "could not open session: #{inspect(reason)}", id)
        state
    end
  end

  defp with_session(state, id, fun) do
    case Map.fetch(state.sessions, id) do
      {:ok, pid} ->
        fun.(pid)

      :error ->
        reply_error(state, :unknown_session, "no session #{inspect(id)} on this connection", id)
        state
    end
  end

  # -- helpers

  # What a gateway reports about the node on its /metrics: the atom table
  # above all, since atoms are never collected and the VM dies at the limit.
  defp stats do
    %{
      atoms: :erlang.system_info(:atom_count),
      atom_limit: :erlang.system_info(:atom_limit),
      processes: :erlang.system_info(:process_count),
      memory_bytes: :erlang.memory(:total),
      sessions: session_count()
    }
  end

  defp secret_matches?(given, expected) do
    byte_size(given) == byte_size(expected) and :crypto.hash_equals(given, expected)
  end

  defp describe(%{type: type}), do: "a #{inspect(type)} message with these fields"
  defp describe(map) when is_map(map), do: "a map without a type"
  defp describe(_other), do: "a term that is not a map"

  defp refuse(state, code, message) do
    reply_error(state, code, message)
    :gen_tcp.close(state.socket)
    nil
  end

  defp reply_error(state, code, message, session \\ nil) do
    error = %{type: :error, code: code, message: message}
    send_frame(state, if(session, do: Map.put(error, :session, session), else: error))
  end

  defp send_frame(state, message), do: :gen_tcp.send(state.socket, frame(message))

  defp frame(message) do
    payload = :erlang.term_to_binary(message)
    [<<byte_size(payload)::32>>, payload]
  end

  defp more_frames(0), do: []

  defp more_frames(budget) do
    receive do
      {:bridge_event, event} -> [frame(event) | more_frames(budget - 1)]
    after
      0 -> []
    end
  end
end
