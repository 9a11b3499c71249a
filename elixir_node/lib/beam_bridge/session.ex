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

  Module versions (`BeamBridge.Policy.Scope`) stay loaded while a context
  in the history can reach them: the session counts, per version, the
  entries that do, and tells `BeamBridge.Session.Modules` when a count
  leaves or returns to zero.

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

  alias BeamBridge.{Config, Evaluator, IOProxy, Speculation, Splitter}
  alias BeamBridge.Policy.Scope
  alias BeamBridge.Session.Modules

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
  (check fragments with `BeamBridge.Policy`; default: the node's setting),
  `:unlimited` (no wall time, heap, binary or output limit: only for
  measuring what the limits cost; default `false`).
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
      limits:
        if(Keyword.get(opts, :unlimited, false),
          do: Config.no_limits(),
          else: Config.session_limits(Map.get(options, :limits, %{}))
        ),
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
      history_floor: 1,
      module_refs: %{}
    }

    with {_, _, %Scope{namespace: namespace}} <- context, do: Modules.join(self(), namespace)
    state = add_refs(state, [context])

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
  # The caller holds the context's module versions before it has the
  # context, so a rewind or close that follows cannot unload them first.
  def handle_call({:context_at, at}, {caller, _}, state) do
    case unknown_context(state, at) do
      nil ->
        context = Map.fetch!(state.history, at)
        with [_ | _] = modules <- reachable(context), do: Modules.hold(caller, modules)
        {:reply, {:ok, context, state.options}, state}

      message ->
        {:reply, {:error, "cannot fork: " <> message}, state}
    end
  end

  @impl true
  def handle_info({:evaluation_output, ref, text}, %{running: %{ref: ref}} = state) do
    {:noreply, emit_or_hold(state, :output, %{text: text})}
  end

  def handle_info({:evaluation_step, ref, line, text}, %{running: %{ref: ref}} = state) do
    {:noreply, emit_or_hold(state, :step, %{line: line, value: text})}
  end

  # The policy found effects in a speculative run, which then ran nothing
  # (`BeamBridge.Speculation`): the fragment runs for real once committed,
  # or now if the commit came first.
  def handle_info({:evaluation_result, ref, :declined}, %{running: %{ref: ref} = run} = state) do
    state = drop_speculation(state)

    case run.index do
      nil ->
        {:noreply, state}

      index ->
        item = {:fragment, index, run.block, %{code: run.code, line: run.line}}
        {:noreply, run_next(%{state | queue: :queue.in_r(item, state.queue)})}
    end
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
    leave_modules(state)
    {:stop, :normal, state}
  end

  # Messages of evaluations that were already killed.
  def handle_info(_stale, state), do: {:noreply, state}

  # -- requests

  defp handle_request({:chunk, text}, state) do
    case take_chunk(state, text) do
      {:ok, state} -> state
      {:refused, message} -> refuse(state, message)
    end
  end

  defp handle_request(:end, state) do
    {fragments, splitter} = Splitter.finish(state.splitter)
    state = commit(fragments, %{state | splitter: splitter})
    done = {:done, state.block, state.block_fragments}
    %{state | queue: :queue.in(done, state.queue), block: state.block + 1, block_fragments: 0}
  end

  defp handle_request({:eval, code}, state) do
    case take_chunk(state, code) do
      {:ok, state} -> handle_request(:end, state)
      {:refused, message} -> refuse(state, message)
    end
  end

  defp handle_request(:cancel, state), do: cancel(state)

  defp handle_request({:rewind, to}, state) do
    case unknown_context(state, to) do
      nil ->
        state = cancel(state)
        {kept, dropped} = Enum.split_with(state.history, fn {index, _} -> index <= to end)
        history = Map.new(kept)
        state = drop_refs(%{state | history: history}, Enum.map(dropped, &elem(&1, 1)))
        emit(state, :rewound, %{to: to})
        %{state | context: Map.fetch!(history, to), next_index: to + 1}

      message ->
        emit(state, :error, %{code: :bad_request, message: "cannot rewind: " <> message})
        state
    end
  end

  defp handle_request(:close, state) do
    state = kill_quietly(state)
    leave_modules(state)
    emit(state, :closed, %{})
    {:stop, state}
  end

  # A chunk that would pass a cap is refused whole, with an error event; the
  # text accepted before it stays as it was. The queue cap is checked on
  # what the chunk splits into, before any of it is committed.
  defp over_pending(state, text) do
    pending = byte_size(Splitter.pending(state.splitter)) + byte_size(text)
    cap = state.caps.max_pending_bytes

    if pending > cap,
      do: "the pending buffer would hold #{pending} bytes, over #{cap}; chunk refused"
  end

  # When nothing but a speculative run is running, the first fragment
  # starts at once instead of waiting.
  defp over_queue(_state, []), do: nil

  defp over_queue(state, fragments) do
    starting = if match?(%{index: index} when index != nil, state.running), do: 0, else: 1
    waiting = :queue.len(state.queue) + length(fragments) - starting
    cap = state.caps.max_queued_fragments

    if waiting > cap,
      do:
        "#{waiting} fragments would be waiting to run, over the #{cap} a session may queue; " <>
          "chunk refused"
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
    with nil <- over_pending(state, text),
         {fragments, splitter} = Splitter.feed(state.splitter, text),
         nil <- over_queue(state, fragments) do
      state = commit(fragments, %{state | splitter: splitter})

      # A continuation arrived: the speculative run was of the wrong code.
      case state.running do
        %{index: nil, code: code, line: line} ->
          if Splitter.speculative(splitter) == %{code: code, line: line},
            do: {:ok, state},
            else: {:ok, kill_quietly(state)}

        _ ->
          {:ok, state}
      end
    else
      message -> {:refused, message}
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

      # A failed fragment leaves bindings and env as they were; its scope
      # keeps counting the atoms it made, and the module versions it made
      # are unloaded, since no context can reach them.
      {:error, error, scope} ->
        {elapsed, error} = Map.pop(error, :elapsed_us)
        state = %{state | context: put_elem(state.context, 2, failed_scope(state, scope))}
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
      running = start_evaluation(state, code, line, true)
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

  defp start_evaluation(state, code, line, speculative \\ false) do
    opts = Map.merge(state.limits, %{trace: state.options.trace, speculative: speculative})
    running = Evaluator.start(code, line, state.context, opts)

    timer =
      if state.limits.timeout_ms != :infinity,
        do:
          Process.send_after(self(), {:evaluation_timeout, running.ref}, state.limits.timeout_ms)

    if state.limits.max_heap_bytes != :infinity,
      do: Process.send_after(self(), {:watch_binaries, running.ref}, @watch_ms)

    started = System.monotonic_time(:microsecond)
    Map.merge(running, %{timer: timer, started: started, held: [], outcome: nil, code: code})
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

  defp remember(state, index) do
    {replaced, history} = Map.pop(state.history, index)
    state = add_refs(%{state | history: Map.put(history, index, state.context)}, [state.context])
    drop_refs(state, List.wrap(replaced))
  end

  # The history keeps the fresh context and the last `max_history` ones.
  defp forget_oldest(%{history: history, history_floor: floor} = state) do
    if map_size(history) > state.caps.max_history + 1 do
      {oldest, history} = Map.pop(history, floor)
      drop_refs(%{state | history: history, history_floor: floor + 1}, [oldest])
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
    sweep_modules(state, running)
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

  # -- module versions

  defp reachable({_, _, nil}), do: []
  defp reachable({_, _, scope}), do: Scope.reachable(scope)

  defp add_refs(state, contexts) do
    {refs, held} = count_refs(state.module_refs, contexts, 1)
    if held != [], do: Modules.hold(self(), held)
    %{state | module_refs: refs}
  end

  defp drop_refs(state, contexts) do
    {refs, released} = count_refs(state.module_refs, contexts, -1)
    if released != [], do: Modules.release(self(), released)
    %{state | module_refs: refs}
  end

  # `refs` with `step` added for every version each context reaches, and
  # the versions whose count came up from zero or went down to it.
  defp count_refs(refs, contexts, step) do
    contexts
    |> Enum.flat_map(&reachable/1)
    |> Enum.reduce({refs, []}, fn module, {refs, crossed} ->
      case Map.get(refs, module, 0) + step do
        0 -> {Map.delete(refs, module), [module | crossed]}
        1 when step == 1 -> {Map.put(refs, module, 1), [module | crossed]}
        count -> {Map.put(refs, module, count), crossed}
      end
    end)
  end

  defp failed_scope(_state, nil), do: nil

  defp failed_scope(%{context: {_, _, before}}, scope) do
    {scope, made} = Scope.rollback_modules(scope, before)
    if made != [], do: Modules.release(self(), made)
    scope
  end

  # A killed fragment's scope never came back: what it loaded is found in
  # the session's namespace, once the evaluation is gone (the kill is a
  # signal, and until it lands the evaluation may load one more module).
  # Only `defmodule` loads code under the sandbox, so a fragment without
  # it has nothing to sweep (and a cancel need not wait for the kill).
  defp sweep_modules(%{context: {_, _, nil}}, _running), do: :ok

  defp sweep_modules(%{context: {_, _, scope}}, running) do
    if String.contains?(running.code, "defmodule"), do: sweep_after_kill(scope, running)
  end

  defp sweep_after_kill(scope, running) do
    monitor = Process.monitor(running.pid)

    receive do
      {:DOWN, ^monitor, :process, _, _} -> :ok
    after
      1_000 -> Process.demonitor(monitor, [:flush])
    end

    Modules.sweep(scope.namespace)
  end

  defp leave_modules(%{context: {_, _, nil}}), do: :ok
  defp leave_modules(_state), do: Modules.leave(self())

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

defmodule BeamBridge.Session.Modules do
  @moduledoc """
  The node-wide record of which live sessions can reach which module
  versions, and the one place that unloads them.

  A session holds the versions its history reaches (a fork also those of
  the context it started from, held for it by its parent before the
  context is handed over). A version is unloaded once no holder is left,
  so a parent and its forks share versions however they close, rewind or
  crash: a holder that goes down releases everything it held. Versions
  nobody ever held (those of a killed fragment) are found by the
  namespace of the session that made them (`sweep/1`).

  A process of its own, started before the sessions, so that the record
  outlives any of them.
  """

  use GenServer

  alias BeamBridge.Policy

  @doc false
  def start_link(_opts), do: GenServer.start_link(__MODULE__, :ok, name: __MODULE__)

  @doc """
  Registers `session` and the namespace its versions are made in: when it
  goes down, whatever is left there unheld is unloaded.
  """
  @spec join(pid, binary) :: :ok
  def join(session, namespace), do: GenServer.call(__MODULE__, {:join, session, namespace})

  @doc "`holder` can reach `modules` from now on."
  @spec hold(pid, [module]) :: :ok
  def hold(holder, modules), do: GenServer.call(__MODULE__, {:hold, holder, modules})

  @doc "`holder` no longer reaches `modules`; those nobody holds are unloaded."
  @spec release(pid, [module]) :: :ok
  def release(holder, modules), do: GenServer.call(__MODULE__, {:release, holder, modules})

  @doc "Unloads every module in `namespace` that nobody holds."
  @spec sweep(binary) :: :ok
  def sweep(namespace), do: GenServer.call(__MODULE__, {:sweep, namespace})

  @doc "Releases all `holder` holds, then sweeps the namespace it joined with."
  @spec leave(pid) :: :ok
  def leave(holder), do: GenServer.call(__MODULE__, {:leave, holder})

  @impl true
  def init(:ok), do: {:ok, %{holders: %{}, held: %{}, namespaces: %{}, monitors: %{}}}

  @impl true
  def handle_call({:join, session, namespace}, _from, state) do
    state = watch(state, session)
    {:reply, :ok, put_in(state.namespaces[session], namespace)}
  end

  def handle_call({:hold, holder, modules}, _from, state) do
    state = watch(state, holder)

    state =
      Enum.reduce(modules, state, fn module, state ->
        holders = Map.get(state.holders, module, MapSet.new())
        held = Map.get(state.held, holder, MapSet.new())

        %{
          state
          | holders: Map.put(state.holders, module, MapSet.put(holders, holder)),
            held: Map.put(state.held, holder, MapSet.put(held, module))
        }
      end)

    {:reply, :ok, state}
  end

  def handle_call({:release, holder, modules}, _from, state),
    do: {:reply, :ok, release_modules(state, holder, modules)}

  def handle_call({:sweep, namespace}, _from, state) do
    sweep_namespace(state, namespace)
    {:reply, :ok, state}
  end

  # A session that leaves cleanly and never held a version has loaded
  # nothing that is still there (failed fragments unload theirs, killed ones
  # were swept): its namespace is not scanned. One that went down is.
  def handle_call({:leave, holder}, _from, state),
    do: {:reply, :ok, forget(state, holder, Map.has_key?(state.held, holder))}

  @impl true
  def handle_info({:DOWN, _, :process, holder, _}, state),
    do: {:noreply, forget(state, holder, true)}

  defp watch(state, pid) do
    if Map.has_key?(state.monitors, pid),
      do: state,
      else: put_in(state.monitors[pid], Process.monitor(pid))
  end

  defp forget(state, holder, sweep?) do
    state = release_modules(state, holder, Map.get(state.held, holder, []))
    {namespace, namespaces} = Map.pop(state.namespaces, holder)
    if namespace && sweep?, do: sweep_namespace(state, namespace)
    {monitor, monitors} = Map.pop(state.monitors, holder)
    if monitor, do: Process.demonitor(monitor, [:flush])
    %{state | namespaces: namespaces, monitors: monitors, held: Map.delete(state.held, holder)}
  end

  defp release_modules(state, holder, modules) do
    {holders, unheld} =
      Enum.reduce(modules, {state.holders, []}, fn module, {holders, unheld} ->
        left = holders |> Map.get(module, MapSet.new()) |> MapSet.delete(holder)

        if MapSet.size(left) == 0,
          do: {Map.delete(holders, module), [module | unheld]},
          else: {Map.put(holders, module, left), unheld}
      end)

    Policy.purge(unheld)
    held = Map.get(state.held, holder, MapSet.new())

    %{
      state
      | holders: holders,
        held: Map.put(state.held, holder, MapSet.difference(held, MapSet.new(modules)))
    }
  end

  defp sweep_namespace(state, namespace) do
    prefix = namespace <> "."

    for {module, _} <- :code.all_loaded(),
        String.starts_with?(Atom.to_string(module), prefix),
        not Map.has_key?(state.holders, module) do
      module
    end
    |> Policy.purge()
  end
end
