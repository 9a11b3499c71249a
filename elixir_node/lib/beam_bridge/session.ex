defmodule BeamBridge.Session do
  @moduledoc """
  One session: its context, the history of contexts after each committed
  fragment, the splitter holding the pending buffer, and the queue of
  committed fragments waiting to run.

  Text arrives as `{:chunk, text}` requests; the `BeamBridge.Splitter` hands
  back fragments as soon as each is certain to be complete. Each fragment
  gets the next index (1, 2, … over the session's life), is announced to the
  owner at once, and joins the queue. Fragments run one at a time, in order,
  each in its own process (`BeamBridge.Evaluator`), so evaluating fragment
  *n* overlaps with fragment *n + 1* still arriving.

  Every event goes to the owner (the gateway connection) as
  `{:bridge_event, map}`, in the shapes of `protocol/bridge.md`.

  The context changes only when a fragment succeeds. `history` maps every
  finished fragment's index to the context after it (index 0 is the fresh
  context), which is what `rewind` and `fork` read; BEAM terms are
  immutable, so an entry costs only what the fragment added.

  Options (from the `open` request, all optional):

    * `:on_error` - `:continue` (default) or `:halt`: after a failure,
      the rest of the block is skipped
    * `:limits` - lowers the server's limits, see `BeamBridge.Config`
    * `:trace` - send step events (default `false`), see `BeamBridge.Trace`
    * `:speculate` - run a complete fragment before its commit when that
      cannot be observed (default `true`), see `BeamBridge.Speculation`
  """

  use GenServer, restart: :temporary

  @watch_ms 20

  alias BeamBridge.{Config, Evaluator, IOProxy, Policy, Speculation, Splitter}
  alias BeamBridge.Policy.Scope

  @type request ::
          {:chunk, binary}
          | :end
          | {:eval, binary}
          | :cancel
          | {:rewind, non_neg_integer}
          | :close

  # -- API

  @doc """
  Starts the session `id` under the session supervisor.

  Options: `:owner` (required, receives the events), `:options` (the client's
  session options), `:fork_of` (`{parent_pid, parent_id, at}`: start from the
  parent's context after fragment `at`, fetched from the parent; fails with
  `{:fork_refused, message}`), or `:context` and `:forked_from` (`{id, at}`),
  `:caps` (overrides of `BeamBridge.Config.caps/0`, for tests), `:sandbox`
  (check fragments with `BeamBridge.Policy`; default: the node's setting).
  """
  @spec start(binary, keyword) :: DynamicSupervisor.on_start_child()
  def start(id, opts) do
    DynamicSupervisor.start_child(BeamBridge.SessionSupervisor, {__MODULE__, {id, opts}})
  end

  @doc false
  def start_link({id, opts}) do
    GenServer.start_link(__MODULE__, {id, opts}, name: via(id))
  end

  @doc "Looks up a live session by id."
  @spec whereis(binary) :: pid | nil
  def whereis(id) do
    case Registry.lookup(BeamBridge.SessionRegistry, id) do
      [{pid, _}] -> pid
      [] -> nil
    end
  end

  @doc "Sends a request to the session; its answers come as events."
  @spec request(pid, request) :: :ok
  def request(pid, request), do: GenServer.cast(pid, {:request, request})

  @doc """
  The context after fragment `at` and the session's options, for a fork.
  Fails when fragment `at` has not finished.
  """
  @spec context_at(pid, non_neg_integer) :: {:ok, Evaluator.context(), map} | {:error, binary}
  def context_at(pid, at), do: GenServer.call(pid, {:context_at, at})

  defp via(id), do: {:via, Registry, {BeamBridge.SessionRegistry, id}}

  # -- server

  @impl true
  def init({id, opts}) do
    case Keyword.fetch(opts, :fork_of) do
      {:ok, {parent, parent_id, at}} ->
        case context_at(parent, at) do
          {:ok, context, options} ->
            forked = [context: context, options: options, forked_from: {parent_id, at}]
            start_state(id, Keyword.merge(opts, forked))

          {:error, message} ->
            {:stop, {:fork_refused, message}}
        end

      :error ->
        start_state(id, opts)
    end
  end

  defp start_state(id, opts) do
    owner = Keyword.fetch!(opts, :owner)
    Process.monitor(owner)
    options = normalize_options(Keyword.get(opts, :options, %{}))
    sandbox = Keyword.get(opts, :sandbox, Config.sandbox?())

    context =
      case Keyword.fetch(opts, :context) do
        {:ok, {binding, env, scope}} -> {binding, env, scope && Scope.fork(scope, id)}
        :error -> Evaluator.new_context(id, sandbox)
      end

    state = %{
      id: id,
      owner: owner,
      options: options,
      limits: Config.session_limits(Map.get(options, :limits, %{})),
      splitter: Splitter.new(),
      context: context,
      history: %{0 => context},
      next_index: 1,
      queue: :queue.new(),
      running: nil,
      block: 1,
      block_fragments: 0,
      block_errors: %{},
      halted: MapSet.new(),
      unspeculated: nil,
      caps: Map.merge(Config.caps(), Keyword.get(opts, :caps, %{})),
      history_floor: 1
    }

    opened =
      case Keyword.get(opts, :forked_from) do
        {from, at} -> %{forked_from: from, at: at}
        nil -> %{}
      end

    emit(state, :opened, opened)
    {:ok, state}
  end

  @impl true
  def handle_cast({:request, request}, state) do
    case handle_request(request, state) do
      {:stop, state} -> {:stop, :normal, state}
      state -> {:noreply, run_next(state)}
    end
  end

  @impl true
  def handle_call({:context_at, at}, _from, state) do
    case unknown_context(state, at) do
      nil -> {:reply, {:ok, Map.fetch!(state.history, at), state.options}, state}
      message -> {:reply, {:error, "cannot fork: " <> message}, state}
    end
  end

  @impl true
  def handle_info({:evaluation_output, ref, text}, %{running: %{ref: ref}} = state) do
    {:noreply, emit_or_hold(state, :output, %{text: text})}
  end

  def handle_info({:evaluation_step, ref, line, text}, %{running: %{ref: ref}} = state) do
    {:noreply, emit_or_hold(state, :step, %{line: line, value: text})}
  end

  # A speculative run keeps its outcome until its fragment is committed.
  def handle_info({:evaluation_result, ref, outcome}, %{running: %{ref: ref} = running} = state)
      when running.index == nil do
    {:noreply, put_in(state.running.outcome, outcome)}
  end

  def handle_info({:evaluation_result, ref, outcome}, %{running: %{ref: ref} = running} = state) do
    {:noreply, run_next(take_outcome(state, running, outcome))}
  end

  # A speculative run that hits a limit is dropped; the fragment runs again,
  # unspeculated, once it is committed.
  def handle_info({limit, ref}, %{running: %{ref: ref, index: nil}} = state)
      when limit in [:evaluation_timeout, :evaluation_output_limit] do
    {:noreply, drop_speculation(state)}
  end

  def handle_info(
        {:DOWN, monitor, :process, _, reason},
        %{running: %{monitor: monitor, index: nil}} = state
      )
      when reason != :normal do
    {:noreply, drop_speculation(state)}
  end

  # `max_heap_size` does not count binaries over 64 bytes, which live off
  # the heap: the session watches them itself, every @watch_ms.
  def handle_info({:watch_binaries, ref}, %{running: %{ref: ref} = running} = state) do
    bytes = binary_bytes(running.pid)

    cond do
      bytes <= state.limits.max_heap_bytes ->
        Process.send_after(self(), {:watch_binaries, ref}, @watch_ms)
        {:noreply, state}

      running.index == nil ->
        {:noreply, drop_speculation(state)}

      true ->
        message =
          "evaluation held #{bytes} bytes of binaries, over #{state.limits.max_heap_bytes}"

        {:noreply, run_next(kill_running(state, "memory", message))}
    end
  end

  def handle_info({:evaluation_timeout, ref}, %{running: %{ref: ref}} = state) do
    message = "evaluation exceeded #{state.limits.timeout_ms} ms"
    {:noreply, run_next(kill_running(state, "timeout", message))}
  end

  def handle_info({:evaluation_output_limit, ref}, %{running: %{ref: ref}} = state) do
    message = "output exceeded #{state.limits.max_output_bytes} bytes"
    {:noreply, run_next(kill_running(state, "output_limit", message))}
  end

  # The evaluation died without a result: with a normal exit the result is
  # still on its way through the proxy; `:killed` here can only be the heap
  # limit, since the session demonitors before killing.
  def handle_info({:DOWN, monitor, :process, _, reason}, %{running: %{monitor: monitor}} = state) do
    case reason do
      :normal ->
        {:noreply, state}

      :killed ->
        message = "evaluation exceeded #{state.limits.max_heap_bytes} bytes of heap"
        {:noreply, run_next(kill_running(state, "memory", message))}

      other ->
        {:noreply, run_next(kill_running(state, "internal", inspect(other)))}
    end
  end

  def handle_info({:DOWN, _, :process, owner, _}, %{owner: owner} = state) do
    state = kill_quietly(state)
    purge_modules(state.context, nil)
    {:stop, :normal, state}
  end

  # Messages of evaluations that were already killed.
  def handle_info(_stale, state), do: {:noreply, state}

  # -- requests

  defp handle_request({:chunk, text}, state) do
    case over_cap(state, text) do
      nil -> take_chunk(state, text)
      message -> refuse(state, message)
    end
  end

  defp handle_request(:end, state) do
    {fragments, splitter} = Splitter.finish(state.splitter)
    state = commit(fragments, %{state | splitter: splitter})
    done = {:done, state.block, state.block_fragments}
    %{state | queue: :queue.in(done, state.queue), block: state.block + 1, block_fragments: 0}
  end

  defp handle_request({:eval, code}, state) do
    case over_cap(state, code) do
      nil -> handle_request(:end, take_chunk(state, code))
      message -> refuse(state, message)
    end
  end

  defp handle_request(:cancel, state), do: cancel(state)

  defp handle_request({:rewind, to}, state) do
    case unknown_context(state, to) do
      nil ->
        state = cancel(state)
        history = Map.reject(state.history, fn {index, _} -> index > to end)
        context = Map.fetch!(history, to)
        purge_modules(state.context, context)
        emit(state, :rewound, %{to: to})
        %{state | context: context, history: history, next_index: to + 1}

      message ->
        emit(state, :error, %{code: :bad_request, message: "cannot rewind: " <> message})
        state
    end
  end

  defp handle_request(:close, state) do
    state = kill_quietly(state)
    purge_modules(state.context, nil)
    emit(state, :closed, %{})
    {:stop, state}
  end

  # A chunk that would pass a cap is refused whole, with an error event; the
  # text accepted before it stays as it was.
  defp over_cap(state, text) do
    pending = byte_size(Splitter.pending(state.splitter)) + byte_size(text)
    queued = :queue.len(state.queue)

    cond do
      pending > state.caps.max_pending_bytes ->
        cap = state.caps.max_pending_bytes
        "the pending buffer would hold #{pending} bytes, over #{cap}; chunk refused"

      queued >= state.caps.max_queued_fragments ->
        "#{queued} fragments are waiting to run, the most a session may queue; chunk refused"

      true ->
        nil
    end
  end

  defp refuse(state, message) do
    emit(state, :error, %{code: :limit, message: message})
    state
  end

  # Why the context after fragment `at` cannot be had, or nil when it can.
  defp unknown_context(state, at) do
    last = state.next_index - 1

    cond do
      at > last ->
        "the session has #{last} fragments, not #{at}"

      Map.has_key?(state.history, at) ->
        nil

      at < state.history_floor ->
        "fragment #{at} is older than the #{state.caps.max_history} the history keeps"

      true ->
        "fragment #{at} has not finished"
    end
  end

  defp take_chunk(state, text) do
    {fragments, splitter} = Splitter.feed(state.splitter, text)
    state = commit(fragments, %{state | splitter: splitter})

    # A continuation arrived: the speculative run was of the wrong code.
    case state.running do
      %{index: nil, code: code, line: line} ->
        if Splitter.speculative(splitter) == %{code: code, line: line},
          do: state,
          else: kill_quietly(state)

      _ ->
        state
    end
  end

  # -- committing and running

  defp commit(fragments, state) do
    Enum.reduce(fragments, state, fn fragment, state ->
      index = state.next_index
      emit(state, :fragment, %{index: index, code: fragment.code, line: fragment.line})
      state = %{state | next_index: index + 1, block_fragments: state.block_fragments + 1}

      case state.running do
        %{index: nil, code: code, line: line}
        when code == fragment.code and line == fragment.line ->
          adopt(state, index)

        %{index: nil} ->
          state |> kill_quietly() |> enqueue({:fragment, index, state.block, fragment})

        _ ->
          enqueue(state, {:fragment, index, state.block, fragment})
      end
    end)
  end

  defp enqueue(state, item), do: %{state | queue: :queue.in(item, state.queue)}

  # The speculative run was of exactly the committed fragment: it becomes
  # the fragment's evaluation, and what it held back goes out now.
  defp adopt(state, index) do
    running = %{state.running | index: index, block: state.block}
    state = %{state | running: running}

    for {type, fields} <- Enum.reverse(running.held) do
      emit(state, type, Map.put(fields, :index, index))
    end

    case running.outcome do
      nil -> state
      outcome -> take_outcome(state, running, outcome)
    end
  end

  defp take_outcome(state, running, outcome) do
    Process.demonitor(running.monitor, [:flush])
    cancel_timer(running.timer)

    case outcome do
      {:ok, result, context} ->
        finish(%{state | context: context}, running, Map.put(result, :ok, true))

      # A failed fragment leaves bindings and env as they were, but its scope
      # counts the atoms it made and the modules it may have defined.
      {:error, error, scope} ->
        {elapsed, error} = Map.pop(error, :elapsed_us)
        state = %{state | context: put_elem(state.context, 2, scope)}
        finish(state, running, %{ok: false, error: error, elapsed_us: elapsed})
    end
  end

  # Runs the complete expression waiting in the splitter before it is
  # committed, when the session is idle and the run cannot be observed
  # (`BeamBridge.Speculation`). Its events are held until the commit.
  defp speculate(state) do
    with true <- state.options.speculate,
         %{code: code, line: line} <- Splitter.speculative(state.splitter),
         false <- code == state.unspeculated,
         false <- MapSet.member?(state.halted, state.block),
         {binding, _env, _scope} = state.context,
         true <- Speculation.pure?(code, binding) do
      running = start_evaluation(state, code, line)
      %{state | running: Map.merge(running, %{index: nil, block: nil, code: code, line: line})}
    else
      _ -> state
    end
  end

  defp drop_speculation(state) do
    %{kill_quietly(state) | unspeculated: state.running.code}
  end

  defp emit_or_hold(%{running: %{index: nil} = running} = state, type, fields) do
    %{state | running: %{running | held: [{type, fields} | running.held]}}
  end

  defp emit_or_hold(state, type, fields) do
    emit(state, type, Map.put(fields, :index, state.running.index))
    state
  end

  defp run_next(%{running: nil} = state) do
    case :queue.out(state.queue) do
      {:empty, _} ->
        speculate(state)

      {{:value, item}, queue} ->
        run_next(begin_item(item, %{state | queue: queue}))
    end
  end

  defp run_next(state), do: state

  defp begin_item({:done, block, fragments}, state) do
    {errors, block_errors} = Map.pop(state.block_errors, block, 0)
    emit(state, :done, %{fragments: fragments, errors: errors})
    %{state | block_errors: block_errors, halted: MapSet.delete(state.halted, block)}
  end

  defp begin_item({:fragment, index, block, %{error: %{} = error}}, state) do
    result = %{
      ok: false,
      elapsed_us: 0,
      error: %{kind: "SyntaxError", message: error.message, line: error.line}
    }

    record(state, index, block, result)
  end

  defp begin_item({:fragment, index, block, fragment}, state) do
    if MapSet.member?(state.halted, block) do
      error = %{
        kind: "skipped",
        message: "an earlier fragment of this block failed",
        line: fragment.line
      }

      record(state, index, block, %{ok: false, elapsed_us: 0, error: error})
    else
      running = start_evaluation(state, fragment.code, fragment.line)
      %{state | running: Map.merge(running, %{index: index, block: block})}
    end
  end

  defp start_evaluation(state, code, line) do
    opts = Map.put(state.limits, :trace, state.options.trace)
    running = Evaluator.start(code, line, state.context, opts)

    timer =
      Process.send_after(self(), {:evaluation_timeout, running.ref}, state.limits.timeout_ms)

    Process.send_after(self(), {:watch_binaries, running.ref}, @watch_ms)

    started = System.monotonic_time(:microsecond)
    Map.merge(running, %{timer: timer, started: started, held: [], outcome: nil})
  end

  defp finish(state, running, result) do
    record(%{state | running: nil}, running.index, running.block, result)
  end

  # Every fragment that ends, whatever the outcome, gets its result event and
  # a history entry holding the context after it.
  defp record(state, index, block, result) do
    emit(state, :result, Map.put(result, :index, index))
    state = state |> remember(index) |> forget_oldest()

    if result.ok do
      state
    else
      state = %{state | block_errors: Map.update(state.block_errors, block, 1, &(&1 + 1))}

      if state.options.on_error == :halt,
        do: %{state | halted: MapSet.put(state.halted, block)},
        else: state
    end
  end

  defp remember(state, index),
    do: %{state | history: Map.put(state.history, index, state.context)}

  # The history keeps the fresh context and the last `max_history` ones.
  defp forget_oldest(%{history: history, history_floor: floor} = state) do
    if map_size(history) > state.caps.max_history + 1 do
      %{state | history: Map.delete(history, floor), history_floor: floor + 1}
    else
      state
    end
  end

  # Kills the running evaluation and reports it with `kind`. Output the proxy
  # held or had already sent is delivered first, so it still precedes the
  # result.
  defp kill_running(%{running: running} = state, kind, message) do
    elapsed = System.monotonic_time(:microsecond) - running.started
    Process.demonitor(running.monitor, [:flush])
    Evaluator.kill(running)
    cancel_timer(running.timer)
    held = IOProxy.stop(running.proxy)
    state |> drain_output(running) |> emit_output(running, held)
    error = %{kind: kind, message: message, line: nil}
    finish(state, running, %{ok: false, elapsed_us: elapsed, error: error})
  end

  defp drain_output(state, %{ref: ref} = running) do
    receive do
      {:evaluation_output, ^ref, text} ->
        state |> emit_output(running, text) |> drain_output(running)

      {:evaluation_step, ^ref, line, text} ->
        emit(state, :step, %{index: running.index, line: line, value: text})
        drain_output(state, running)
    after
      0 -> state
    end
  end

  defp emit_output(state, _running, ""), do: state

  defp emit_output(state, running, text) do
    emit(state, :output, %{index: running.index, text: text})
    state
  end

  # Cancel: the running fragment and everything queued end as `cancelled`;
  # the pending buffer is dropped. Block ends already queued still report.
  defp cancel(state) do
    state =
      case state.running do
        nil -> state
        %{index: nil} -> kill_quietly(state)
        _ -> kill_running(state, "cancelled", "cancelled by the client")
      end

    {items, state} = {:queue.to_list(state.queue), %{state | queue: :queue.new()}}

    state =
      Enum.reduce(items, state, fn
        {:fragment, index, block, fragment}, state ->
          error = %{kind: "cancelled", message: "cancelled by the client", line: fragment.line}
          record(state, index, block, %{ok: false, elapsed_us: 0, error: error})

        done, state ->
          begin_item(done, state)
      end)

    %{state | splitter: Splitter.new()}
  end

  defp kill_quietly(%{running: nil} = state), do: state

  defp kill_quietly(%{running: running} = state) do
    Process.demonitor(running.monitor, [:flush])
    cancel_timer(running.timer)
    Evaluator.kill(running)
    Process.exit(running.proxy, :kill)
    %{state | running: nil}
  end

  # -- helpers

  defp normalize_options(options) when is_map(options) do
    %{
      on_error: if(Map.get(options, :on_error) in [:halt, "halt"], do: :halt, else: :continue),
      trace: Map.get(options, :trace) == true,
      speculate: Map.get(options, :speculate) != false,
      limits: if(is_map(options[:limits]), do: options.limits, else: %{})
    }
  end

  # Modules the session defined after `kept` (all of them when `kept` is
  # nil: the session ends) are purged; modules of a killed fragment are
  # found by the session's namespace.
  defp purge_modules({_, _, nil}, _kept), do: :ok

  defp purge_modules({_, _, scope}, nil), do: Policy.purge(Policy.loaded_modules(scope))

  defp purge_modules({_, _, scope}, {_, _, kept}),
    do: Policy.purge(Policy.modules(scope) -- Policy.modules(kept))

  defp binary_bytes(pid) do
    case Process.info(pid, :binary) do
      {:binary, binaries} -> Enum.reduce(binaries, 0, fn {_, size, _}, sum -> sum + size end)
      nil -> 0
    end
  end

  defp cancel_timer(nil), do: :ok
  defp cancel_timer(timer), do: Process.cancel_timer(timer)

  defp emit(state, type, fields) do
    send(state.owner, {:bridge_event, Map.merge(fields, %{type: type, session: state.id})})
  end
end
