defmodule BeamBridge.Evaluator do
  @moduledoc """
  Runs one fragment in a fresh process, so that it can be limited and
  killed without touching the session.

  `start/4` spawns the evaluation with its `BeamBridge.IOProxy` as group
  leader and a heap limit, and returns at once. The outcome reaches the
  session through the proxy as `{:evaluation_result, ref, outcome}`, where
  `outcome` is

      {:ok, %{value: binary, data: term, elapsed_us: integer}, context}
      {:error, %{kind: binary, message: binary, line: integer | nil, elapsed_us: integer}, scope}

  A speculative evaluation (option `:speculative`) whose fragment the
  policy finds to have effects stops before running anything; its outcome
  is then `:declined` (see `BeamBridge.Speculation`).

  `value` is the bounded `inspect` text and `data` the JSON-shaped copy of
  the value (`nil` when it does not map cleanly). Both are computed inside
  the evaluation, under its limits, since a small term can expand without
  bound when it is printed.

  Before anything runs, the fragment goes through the sandbox policy
  (`BeamBridge.Policy`): parsed without creating atoms, checked against the
  allowlist, with run-time guards where a check must wait for values. The
  policy's scope (variable names, atom budget, the session's modules) is
  part of the context and comes back even when the fragment fails.
  """

  alias BeamBridge.{IOProxy, Policy, Speculation, Trace}
  alias BeamBridge.Policy.Scope

  @file_name "fragment"
  # The default bound of a value's `inspect` text, for direct calls.
  @max_value_bytes 64 * 1024
  @data_budget 10_000
  # Terms that share structure are small on a heap and huge once copied to
  # another process (as a context is). A context may copy to as many terms
  # as the heap limit has words (so any context built without sharing
  # passes); past that it is refused. This default serves direct calls.
  @max_context_nodes 32 * 1024 * 1024
  @shown_nodes 20_000
  @min_heap_words 8192

  @typedoc """
  Bindings, env and the policy's scope (`nil` when the sandbox is off):
  what a session carries from fragment to fragment.
  """
  @type context :: {Code.binding(), Macro.Env.t(), Scope.t() | nil}

  @type running :: %{pid: pid, proxy: pid, ref: reference, monitor: reference}

  @doc """
  The context of a fresh session. Without `sandbox`, fragments run
  unchecked: only for trusted code (the node's own tests, a node configured
  with `sandbox: false`).
  """
  @spec new_context(binary, boolean) :: context
  def new_context(session_id, sandbox \\ true) do
    {[], Code.env_for_eval(file: @file_name), if(sandbox, do: Scope.new(session_id))}
  end

  @doc """
  Starts evaluating `code` (whose first line is `line` within its block) in
  `context`, reporting to the calling process.

  Options: `:max_heap_bytes` and `:max_output_bytes` (required; `:infinity`
  leaves that limit off), `:max_result_bytes` (default 64 KiB), `:trace`
  (default `false`): report step events, see `BeamBridge.Trace`;
  `:speculative` (default `false`): the fragment is not committed yet, so
  it runs only if the policy finds no effects beyond output.
  """
  @spec start(binary, pos_integer, context, map) :: running
  def start(code, line, context, opts) do
    session = self()
    ref = make_ref()
    proxy = IOProxy.start(session, ref, opts.max_output_bytes)
    heap_words = heap_words(opts.max_heap_bytes)
    trace = Map.get(opts, :trace, false)
    max_result_bytes = Map.get(opts, :max_result_bytes, @max_value_bytes)

    {pid, monitor} =
      :erlang.spawn_opt(
        fn ->
          Process.group_leader(self(), proxy)
          if trace, do: Trace.start(proxy)
          speculative = Map.get(opts, :speculative, false)

          opts = [
            trace: trace,
            speculative: speculative,
            max_context_nodes: heap_words,
            max_result_bytes: max_result_bytes,
            proxy: proxy
          ]

          IOProxy.finish(proxy, run(code, line, context, opts))
        end,
        # A fresh process starts with a tiny heap and would collect garbage
        # several times while parsing and checking even a one-line fragment;
        # starting at 64 KiB halves the evaluation's cost.
        [:monitor, min_heap_size: @min_heap_words] ++ heap_limit(opts.max_heap_bytes)
      )

    %{pid: pid, proxy: proxy, ref: ref, monitor: monitor}
  end

  defp heap_words(:infinity), do: @max_context_nodes
  defp heap_words(bytes), do: div(bytes, :erlang.system_info(:wordsize))

  # Without a heap limit (`max_heap_bytes: :infinity`, for measuring what
  # the limits cost) the context copy keeps its default bound.
  defp heap_limit(:infinity), do: []

  defp heap_limit(bytes),
    do: [max_heap_size: %{size: heap_words(bytes), kill: true, error_logger: false}]

  @doc """
  Kills an evaluation and every process it started, at once: `:kill` cannot
  be trapped. The processes an evaluation starts inherit its group leader,
  the proxy, which is how they are found; rounds repeat while a process
  being killed manages to start another.
  """
  @spec kill(running) :: :ok
  def kill(%{pid: pid, proxy: proxy}) do
    Process.exit(pid, :kill)
    kill_started_by(proxy, 10)
  end

  defp kill_started_by(_proxy, 0), do: :ok

  defp kill_started_by(proxy, rounds) do
    started =
      for process <- Process.list(),
          process != proxy,
          Process.info(process, :group_leader) == {:group_leader, proxy},
          do: process

    if started != [] do
      Enum.each(started, &Process.exit(&1, :kill))
      kill_started_by(proxy, rounds - 1)
    else
      :ok
    end
  end

  @doc """
  Evaluates `code` in `context` in the calling process and describes the
  outcome (see the moduledoc). Used by `start/4`, and directly by benchmarks.
  Takes the options of `start/4` as a keyword list, and `:proxy`: the
  evaluation's `BeamBridge.IOProxy`, given the fragment's scope before it
  is compiled (default: none, and warnings keep the pool names).
  """
  @spec run(binary, pos_integer, context, keyword) ::
          {:ok, map, context} | {:error, map, Scope.t() | nil} | :declined
  def run(code, line, {binding, env, scope}, opts \\ []) do
    started = System.monotonic_time(:microsecond)
    # Line markers of this evaluation; functions kept from earlier ones
    # record under their own token.
    token = System.unique_integer([:positive])

    case prepare(code, line, env, scope, opts[:trace], token) do
      {:ok, quoted, scope, effects} ->
        if opts[:speculative] && not Speculation.runs_early?(effects) do
          :declined
        else
          announce_scope(opts[:proxy], scope)
          max_nodes = Keyword.get(opts, :max_context_nodes, @max_context_nodes)
          outcome = evaluate(quoted, {line, token}, binding, env, scope, max_nodes)
          describe(outcome, started, Keyword.get(opts, :max_result_bytes, @max_value_bytes))
        end

      {:error, error, scope} ->
        describe({:error, error.kind, error.message, error.line, scope}, started, 0)
    end
  end

  # The compiler's warnings name the pool variables of this fragment, which
  # its parse just allocated; they reach the proxy from whichever process
  # compiles (`BeamBridge.StandardError`), so the proxy holds the scope to
  # rewrite them with.
  defp announce_scope(proxy, scope) when is_pid(proxy) and scope != nil,
    do: IOProxy.put_scope(proxy, scope)

  defp announce_scope(_proxy, _scope), do: :ok

  defp describe(outcome, started, max_result_bytes) do
    elapsed = System.monotonic_time(:microsecond) - started

    case outcome do
      {:ok, value, {_, _, scope} = context} ->
        text = value_text(value, max_result_bytes)
        text = if scope, do: Policy.humanize(text, scope), else: text
        result = %{value: text, data: data(value, max_result_bytes), elapsed_us: elapsed}
        {:ok, with_dropped_steps(result), context}

      {:error, kind, message, line, scope} ->
        message = if scope, do: Policy.humanize(message, scope), else: message
        {:error, %{kind: kind, message: message, line: line || nil, elapsed_us: elapsed}, scope}
    end
  end

  # Parse, trace and check. Tracing comes before the check, on the tree as
  # written (pipelines are still pipelines), and the policy allows the step
  # calls it adds. The scope after parsing is kept even when the check
  # fails: it counts the atoms the parse made.
  #
  # Line markers for runtime errors (`Trace.locate/3`) go in after the
  # check, on the expanded tree, where every call is a call; they are this
  # module's own code, not the fragment's. Without the sandbox nothing is
  # expanded before it runs, so runtime errors there name the fragment's
  # first line. Without a policy there is no effects flag either: the
  # session's syntactic rule alone decides speculation.
  defp prepare(code, line, _env, nil, trace, _token) do
    quoted = Code.string_to_quoted!(code, line: line, file: @file_name)
    {:ok, if(trace, do: Trace.instrument(quoted), else: quoted), nil, :pure}
  rescue
    exception ->
      {:error, %{kind: exception_kind(exception), message: message(exception), line: line}, nil}
  end

  defp prepare(code, line, env, scope, trace, token) do
    lines? = String.contains?(code, "\n")

    transform =
      case {trace == true, lines?} do
        {true, true} -> &(&1 |> Trace.instrument() |> Trace.anchor())
        {true, false} -> &Trace.instrument/1
        {false, true} -> &Trace.anchor/1
        {false, false} -> & &1
      end

    case Policy.prepare(code, line, env, scope, transform) do
      {:ok, quoted, scope, effects} when lines? ->
        {:ok, Trace.locate(quoted, line, token), scope, effects}

      {:ok, quoted, scope, effects} ->
        {:ok, quoted, scope, effects}

      {:error, error, scope} ->
        {:error, error, scope}
    end
  end

  defp evaluate(quoted, {line, token}, binding, env, scope, max_nodes) do
    {value, binding, env} = Code.eval_quoted_with_env(quoted, binding, env)

    if Policy.copyable?(binding, max_nodes) do
      {:ok, value, {binding, prune(env), scope}}
    else
      message = "the bindings share structure that copies to over #{max_nodes} terms"
      {:error, "memory", message, line, scope}
    end
  rescue
    exception ->
      kind = Policy.error_kind(exception) || exception_kind(exception)
      line = error_line(exception, token, __STACKTRACE__) || line
      {:error, kind, message(exception), line, scope}
  catch
    :throw, value ->
      text = "uncaught throw: " <> inspect(Policy.shown(value, @shown_nodes))
      {:error, "throw", text, error_line(nil, token, __STACKTRACE__) || line, scope}

    :exit, reason ->
      text = Exception.format_exit(Policy.shown(reason, @shown_nodes))
      {:error, "exit", text, error_line(nil, token, __STACKTRACE__) || line, scope}
  end

  defp with_dropped_steps(result) do
    case Trace.dropped() do
      0 -> result
      dropped -> Map.put(result, :steps_dropped, dropped)
    end
  end

  # The env that comes back from an eval keeps per-evaluation state (the
  # current line, version counters) that should not leak into the next one.
  defp prune(env), do: %{env | line: 1}

  # -- errors

  defp exception_kind(%{__struct__: module}) do
    module |> Module.split() |> Enum.join(".")
  end

  # Compile errors put "fragment:LINE: " in front of their message; the line
  # is already a field of its own.
  defp message(exception) do
    text = Exception.message(exception)

    with @file_name <> ":" <> rest <- text,
         {_line, ": " <> message} <- Integer.parse(rest) do
      message
    else
      _ -> text
    end
  end

  # Where a fragment failed: the line a compile error names, else the last
  # line the evaluation's markers recorded (always a line of this block),
  # else a frame of a module compiled from fragment code (which may be
  # another block's), else nil and the caller uses the fragment's first line.
  defp error_line(%{line: line}, _token, _stack) when is_integer(line) and line > 0, do: line
  defp error_line(_exception, token, stack), do: Trace.failed_line(token) || stack_line(stack)

  # The innermost frame that belongs to the fragment's own source. erl_eval
  # puts no lines in its frames: only compiled session modules have them.
  defp stack_line(stack) do
    Enum.find_value(stack, fn {_m, _f, _a, info} ->
      if info[:file] == String.to_charlist(@file_name), do: info[:line]
    end)
  end

  # -- values

  defp value_text(value, max_bytes) do
    value
    |> Policy.shown(@shown_nodes)
    |> inspect(limit: 100, printable_limit: 8192)
    |> IOProxy.truncate(max_bytes)
  end

  @doc """
  The JSON-shaped copy of `value`, or `nil` when it does not map cleanly:
  integers, floats, UTF-8 strings, booleans, `nil`, lists, and maps whose
  keys are strings or atoms (which become strings). Values larger than
  #{@data_budget} nodes, or whose JSON text would take more than about
  `max_bytes`, are not copied: a result stays within about twice its size
  limit, value text and data together.
  """
  @spec data(term, non_neg_integer) :: term
  def data(value, max_bytes \\ @max_value_bytes) do
    case to_data(value, {@data_budget, max_bytes}) do
      {:ok, data, _budget} -> data
      :error -> nil
    end
  end

  defp to_data(_value, {nodes, bytes}) when nodes <= 0 or bytes < 0, do: :error

  # Sizes are those of the JSON text, with a separator each.
  defp to_data(v, budget) when is_integer(v),
    do: check_budget({:ok, v, spend(budget, 1 + byte_size(Integer.to_string(v)))})

  defp to_data(v, budget) when is_float(v), do: check_budget({:ok, v, spend(budget, 25)})

  defp to_data(v, budget) when is_boolean(v) or is_nil(v),
    do: check_budget({:ok, v, spend(budget, 6)})

  defp to_data(v, budget) when is_binary(v) do
    if String.valid?(v), do: check_budget({:ok, v, spend(budget, 3 + byte_size(v))}), else: :error
  end

  defp to_data(v, budget) when is_list(v), do: list_to_data(v, [], spend(budget, 2))

  defp to_data(v, budget) when is_map(v) and not is_struct(v) do
    Enum.reduce_while(v, {:ok, %{}, spend(budget, 2)}, fn {key, item}, {:ok, acc, budget} ->
      with {:ok, key} <- key_to_data(key),
           {:ok, item, budget} <- to_data(item, spend_bytes(budget, 3 + byte_size(key))) do
        {:cont, {:ok, Map.put(acc, key, item), budget}}
      else
        _ -> {:halt, :error}
      end
    end)
  end

  defp to_data(_value, _budget), do: :error

  defp spend({nodes, bytes}, size), do: {nodes - 1, bytes - size}
  defp spend_bytes({nodes, bytes}, size), do: {nodes, bytes - size}

  defp check_budget({:ok, _v, {_nodes, bytes}}) when bytes < 0, do: :error
  defp check_budget(ok), do: ok

  defp list_to_data([], acc, budget), do: {:ok, Enum.reverse(acc), budget}

  defp list_to_data([item | rest], acc, budget) do
    case to_data(item, budget) do
      {:ok, item, budget} -> list_to_data(rest, [item | acc], budget)
      :error -> :error
    end
  end

  # Improper lists do not map to JSON.
  defp list_to_data(_tail, _acc, _budget), do: :error

  defp key_to_data(key) when is_binary(key),
    do: if(String.valid?(key), do: {:ok, key}, else: :error)

  defp key_to_data(key) when is_atom(key) and key not in [nil, true, false],
    do: {:ok, Atom.to_string(key)}

  defp key_to_data(_key), do: :error
end
