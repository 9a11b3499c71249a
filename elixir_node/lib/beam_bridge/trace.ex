defmodule BeamBridge.Trace do
  @moduledoc """
  Step events: the value of each expression of a fragment's top-level block
  and of each stage of a pipeline, for sessions opened with `trace: true`.

  `instrument/1` rewrites the fragment's syntax tree so that each of those
  expressions passes its value through `step/2`, which returns it unchanged
  and reports `{:evaluation_step, line, text}` to the evaluation's IO proxy.
  Going through the proxy keeps steps and output in the order they happened.

  Special forms that shape the lexical scope (`alias`, `import`, `require`,
  `defmodule`, …) are left as they are: moved into a call's argument they
  would no longer affect the code after them. Fragments without `trace` are
  not rewritten at all, so tracing costs nothing when it is off.

  At most `@max_steps` steps per evaluation are sent; later ones are only
  counted (`dropped/0`).

  The module also keeps track of the line an evaluation is on, so that a
  runtime error in a fragment of several lines names the line it failed on:
  `erl_eval` puts no lines of the evaluated code in stack traces (OTP 25,
  Elixir 1.14). It takes two passes around the sandbox check, since
  expanding a macro drops the lines of the code it generates:

    * `anchor/1`, before the check, wraps each statement in a one-element
      block carrying the statement's line, which survives the expansion;
    * `locate/3`, after the check, passes the value before each call and
      each match through `at/3` wherever the line changes, so the last line
      reached is known when an error happens (`failed_line/1`). Bodies of
      `fn`s get no markers (they run in loops): an error inside one names
      the line of the call that ran it.

  Both change neither values nor the order of evaluation, and both leave a
  fragment on one line as it is: the fragment's first line is then right.
  """

  alias BeamBridge.IOProxy

  @max_steps 1_000
  @max_value_bytes 2_048
  @untraced [
    :alias,
    :import,
    :require,
    :use,
    :defmodule,
    :def,
    :defp,
    :defmacro,
    :defmacrop,
    :@,
    :__block__
  ]

  @doc "Rewrites `quoted` so that its top-level expressions and pipeline stages report steps."
  @spec instrument(Macro.t()) :: Macro.t()
  def instrument({:__block__, meta, exprs}),
    do: {:__block__, meta, Enum.map(exprs, &expression/1)}

  def instrument(expr), do: expression(expr)

  @doc "Prepares the calling process (an evaluation) to send steps to `proxy`."
  @spec start(pid) :: :ok
  def start(proxy) do
    Process.put(__MODULE__, {proxy, 0})
    :ok
  end

  @doc "How many steps were counted but not sent."
  @spec dropped() :: non_neg_integer
  def dropped do
    case Process.get(__MODULE__) do
      {_proxy, count} -> max(count - @max_steps, 0)
      nil -> 0
    end
  end

  @doc false
  # Called by instrumented code; returns `value` unchanged.
  def step(value, line) do
    case Process.get(__MODULE__) do
      {proxy, count} when count < @max_steps ->
        send(proxy, {:evaluation_step, line, value_text(value)})
        Process.put(__MODULE__, {proxy, count + 1})

      {proxy, count} ->
        Process.put(__MODULE__, {proxy, count + 1})

      nil ->
        :ok
    end

    value
  end

  defp expression({:|>, meta, [left, right]}) do
    traced({:|>, meta, [expression(left), right]}, meta)
  end

  # `total = a |> f() |> g()`: the stages report, and the last stage's step
  # is the value of the whole match. The match itself stays outside any
  # call, so it binds and fails exactly as written.
  defp expression({:=, meta, [pattern, value]} = expr) do
    if pipeline?(value),
      do: {:=, meta, [pattern, expression(value)]},
      else: traced(expr, meta)
  end

  defp expression({form, _meta, _args} = expr) when form in @untraced, do: expr

  defp expression({_, meta, _} = expr), do: traced(expr, meta)
  defp expression(literal), do: traced(literal, [])

  defp traced(expr, meta) do
    quote do: unquote(__MODULE__).step(unquote(expr), unquote(meta[:line]))
  end

  defp pipeline?({:|>, _, _}), do: true
  defp pipeline?({:=, _, [_pattern, value]}), do: pipeline?(value)
  defp pipeline?(_expr), do: false

  defp value_text(value) do
    value |> inspect(limit: 20, printable_limit: 256) |> IOProxy.truncate(@max_value_bytes)
  end

  # -- error lines

  # Forms whose insides are not code of this evaluation (quoted code, module
  # bodies, which are compiled and keep their lines) or that change the
  # lexical scope, which a wrapper must not touch.
  @sealed [:quote, :defmodule, :def, :defp, :defmacro, :defmacrop, :@, :alias, :import]
  @sealed_too [:require, :use, :&, :__aliases__, :super, :unquote, :unquote_splicing]
  @body_keys [:do, :else, :after, :rescue, :catch]
  # Forms that are not calls, so never get a marker of their own.
  @not_calls @sealed ++
               @sealed_too ++
               ~w(__block__ = fn case cond receive try for with)a ++
               ~w({} %{} % | <<>> :: ^ -> <- when \\ .)a

  @doc """
  Wraps each statement of a parsed fragment (of a block, a clause body, a
  `do` body) in a one-element block with the statement's line. Runs before
  the sandbox check; see the moduledoc.
  """
  @spec anchor(Macro.t()) :: Macro.t()
  def anchor(quoted), do: anchored(quoted)

  defp anchored([{:->, _, _} | _] = clauses), do: Enum.map(clauses, &anchor_node/1)

  defp anchored({form, _, _} = node) when form in @untraced or form in @sealed,
    do: anchor_node(node)

  defp anchored(expr) do
    expr = anchor_node(expr)

    case statement_line(expr) do
      nil -> expr
      line -> {:__block__, [line: line], [expr]}
    end
  end

  defp anchor_node({form, _, _} = node) when form in @sealed, do: node

  defp anchor_node({:__block__, meta, exprs}),
    do: {:__block__, meta, Enum.map(exprs, &anchored/1)}

  defp anchor_node({:->, meta, [head, body]}), do: {:->, meta, [head, anchored(body)]}
  defp anchor_node({:=, meta, [pattern, value]}), do: {:=, meta, [pattern, anchor_node(value)]}
  defp anchor_node({:<-, meta, [pattern, value]}), do: {:<-, meta, [pattern, anchor_node(value)]}

  defp anchor_node({call, meta, args}) when is_list(args) do
    {args, last} = Enum.split(args, -1)

    last =
      case last do
        [[{:do, _} | _] = blocks] -> [Enum.map(blocks, &anchor_body/1)]
        last -> Enum.map(last, &anchor_node/1)
      end

    {anchor_node(call), meta, Enum.map(args, &anchor_node/1) ++ last}
  end

  defp anchor_node({left, right}), do: {anchor_node(left), anchor_node(right)}
  defp anchor_node(list) when is_list(list), do: Enum.map(list, &anchor_node/1)
  defp anchor_node(other), do: other

  defp anchor_body({key, body}) when key in @body_keys, do: {key, anchored(body)}
  defp anchor_body(pair), do: anchor_node(pair)

  defp statement_line({{:., _, [module, :step]}, _, [expr, line]} = call) do
    if step_module?(module), do: line || statement_line(expr), else: line_of(call)
  end

  defp statement_line(expr), do: line_of(expr)

  defp line_of({_, meta, _}) when is_list(meta), do: meta[:line]
  defp line_of(_expr), do: nil

  defp step_module?(__MODULE__), do: true
  defp step_module?({:__aliases__, _, [:BeamBridge, :Trace]}), do: true
  defp step_module?(_module), do: false

  @doc """
  Adds line markers to a checked fragment that starts at `line`; markers
  record under `token`, which `failed_line/1` reads. See the moduledoc.
  """
  @spec locate(Macro.t(), pos_integer, integer) :: Macro.t()
  def locate(quoted, line, token) do
    {located, _line, _st} = walk(quoted, line, line, %{token: token, marks: 0})
    located
  end

  @doc false
  # Called by located code: records `line` and returns `value` unchanged.
  def at(value, line, token) do
    Process.put({__MODULE__, token}, line)
    value
  end

  @doc "The last line the evaluation that uses `token` reached, or nil."
  @spec failed_line(integer) :: pos_integer | nil
  def failed_line(token), do: Process.get({__MODULE__, token})

  # walk(node, line, known, st): `line` is the line of the nearest node
  # that has one; `known` is the line recorded when the node starts (nil
  # when unknown). Returns the node, the line recorded after it, and st.
  defp walk({:__block__, meta, exprs}, line, known, st) do
    {exprs, known, st} = walk_all(exprs, line(meta, line), known, st)
    {{:__block__, meta, exprs}, known, st}
  end

  defp walk({:=, meta, [pattern, value]}, line, known, st) do
    line = line(meta, line)
    {value, known, st} = walk(value, line, known, st)
    {value, known, st} = marked(value, line, known, st)
    {{:=, meta, [pattern, value]}, known, st}
  end

  # A function's body is left without markers: it runs once per call, often
  # in a loop, and a marker costs about half a microsecond under erl_eval
  # (a three-line body in a 300,000-step reduce ran 4.6 times slower with
  # them). An error inside a body thus names the line of the call that ran
  # it, which recorded its line before the call.
  defp walk({:fn, _meta, _clauses} = fun, _line, known, st), do: {fun, known, st}

  defp walk({:case, meta, [subject, [do: clauses]]}, line, known, st) do
    line = line(meta, line)
    {subject, known, st} = walk(subject, line, known, st)
    {subject, known, st} = marked(subject, line, known, st)
    {clauses, known, st} = clauses(clauses, line, known, st)
    {{:case, meta, [subject, [do: clauses]]}, known, st}
  end

  defp walk({:cond, meta, [[do: clauses]]}, line, known, st) do
    line = line(meta, line)

    {clauses, {_known, st}} =
      Enum.map_reduce(clauses, {known, st}, fn {:->, cm, [[condition], body]}, {known, st} ->
        {condition, known, st} = walk(condition, line(cm, line), known, st)
        {body, _known, st} = walk(body, line(cm, line), known, st)
        {{:->, cm, [[condition], body]}, {known, st}}
      end)

    {{:cond, meta, [[do: clauses]]}, nil, st}
  end

  defp walk({form, meta, [blocks]}, line, known, st) when form in [:receive, :try] do
    line = line(meta, line)

    {blocks, st} =
      Enum.map_reduce(blocks, st, fn
        {key, [{:->, _, _} | _] = clauses}, st ->
          {clauses, _known, st} = clauses(clauses, line, if(key == :do, do: known), st)
          {{key, clauses}, st}

        {key, body}, st ->
          {body, _known, st} = walk(body, line, if(key == :do, do: known), st)
          {{key, body}, st}
      end)

    {{form, meta, [blocks]}, nil, st}
  end

  # A comprehension's filters and body run once per element: like a `fn`
  # body they get no markers, and an error inside names the line of the
  # `for`, recorded before it starts.
  defp walk({:for, meta, _args} = node, line, known, st) do
    line = line(meta, line)

    if known == line,
      do: {node, line, st},
      else: {{:__block__, [], [marker(nil, line, st), node]}, line, %{st | marks: st.marks + 1}}
  end

  defp walk({:with, meta, args}, line, known, st) do
    line = line(meta, line)

    {args, {_known, st}} =
      Enum.map_reduce(args, {known, st}, fn
        {:<-, m, [pattern, value]}, {known, st} ->
          {value, known, st} = walk(value, line(m, line), known, st)
          {{:<-, m, [pattern, value]}, {known, st}}

        [{_, _} | _] = opts, {known, st} ->
          {opts, st} = Enum.map_reduce(opts, st, &with_opt(&1, line, known, &2))
          {opts, {known, st}}

        expr, {known, st} ->
          {expr, known, st} = walk(expr, line, known, st)
          {expr, {known, st}}
      end)

    {{:with, meta, args}, nil, st}
  end

  defp walk({:<<>>, meta, segments}, line, known, st) do
    {segments, {known, st}} =
      Enum.map_reduce(segments, {known, st}, fn
        {:"::", m, [value, type]}, {known, st} ->
          {value, known, st} = walk(value, line(meta, line), known, st)
          {{:"::", m, [value, type]}, {known, st}}

        value, {known, st} ->
          {value, known, st} = walk(value, line(meta, line), known, st)
          {value, {known, st}}
      end)

    {{:<<>>, meta, segments}, known, st}
  end

  defp walk({form, meta, args}, line, known, st) when form in [:{}, :%{}, :|] do
    {args, known, st} = walk_all(args, line(meta, line), known, st)
    {{form, meta, args}, known, st}
  end

  defp walk({:%, meta, [struct, map]}, line, known, st) do
    {map, known, st} = walk(map, line(meta, line), known, st)
    {{:%, meta, [struct, map]}, known, st}
  end

  defp walk({form, _, _} = node, _line, known, st) when form in [:&, :__aliases__, :alias],
    do: {node, known, st}

  defp walk({form, _, _} = node, _line, _known, st) when form in @sealed or form in @sealed_too,
    do: {node, nil, st}

  # A step reports a value and cannot fail: it is left out of the lines.
  defp walk({{:., _, [__MODULE__, :step]} = callee, meta, [value | rest]}, line, known, st) do
    {value, known, st} = walk(value, line, known, st)
    {{callee, meta, [value | rest]}, known, st}
  end

  defp walk({{:., dot_meta, [left, fun]}, meta, args}, line, known, st)
       when is_atom(fun) and is_list(args) do
    line = line(meta, line)
    {left, known, st} = if is_atom(left), do: {left, known, st}, else: walk(left, line, known, st)
    {args, known, st} = walk_all(args, line, known, st)
    call({{:., dot_meta, [left, fun]}, meta, args}, line, known, st)
  end

  defp walk({{:., dot_meta, [fun]}, meta, args}, line, known, st) when is_list(args) do
    line = line(meta, line)
    {fun, known, st} = walk(fun, line, known, st)
    {args, known, st} = walk_all(args, line, known, st)
    call({{:., dot_meta, [fun]}, meta, args}, line, known, st)
  end

  defp walk({name, meta, args}, line, known, st)
       when is_atom(name) and is_list(args) and name not in @not_calls do
    line = line(meta, line)
    {args, known, st} = walk_all(args, line, known, st)
    call({name, meta, args}, line, known, st)
  end

  defp walk({left, right}, line, known, st) do
    {left, known, st} = walk(left, line, known, st)
    {right, known, st} = walk(right, line, known, st)
    {{left, right}, known, st}
  end

  defp walk(list, line, known, st) when is_list(list), do: walk_all(list, line, known, st)

  # Variables, literals, and forms that only appear in patterns.
  defp walk(node, _line, known, st), do: {node, known, st}

  defp walk_all(nodes, line, known, st) do
    {nodes, {known, st}} =
      Enum.map_reduce(nodes, {known, st}, fn node, {known, st} ->
        {node, known, st} = walk(node, line, known, st)
        {node, {known, st}}
      end)

    {nodes, known, st}
  end

  # Clause heads (patterns, guards) are left alone; the known line after
  # the clauses is the one they all end on, if they agree.
  defp clauses(clauses, line, known, st) do
    {clauses, {ends, st}} =
      Enum.map_reduce(clauses, {[], st}, fn {:->, meta, [head, body]}, {ends, st} ->
        {body, ended, st} = walk(body, line(meta, line), known, st)
        {{:->, meta, [head, body]}, {[ended | ends], st}}
      end)

    case Enum.uniq(ends) do
      [known] -> {clauses, known, st}
      _ -> {clauses, nil, st}
    end
  end

  defp with_opt({key, [{:->, _, _} | _] = clauses}, line, _known, st) do
    {clauses, _known, st} = clauses(clauses, line, nil, st)
    {{key, clauses}, st}
  end

  defp with_opt({key, value}, line, known, st) do
    {value, _known, st} = walk(value, line, if(key == :do, do: nil, else: known), st)
    {{key, value}, st}
  end

  # The last argument is evaluated right before the call, so a marker on
  # it records the call's line after the arguments had theirs.
  defp call({callee, meta, args} = node, line, known, st) do
    cond do
      known == line ->
        {node, line, st}

      args == [] ->
        {{:__block__, [], [marker(nil, line, st), node]}, line, %{st | marks: st.marks + 1}}

      true ->
        {args, [last]} = Enum.split(args, -1)
        node = {callee, meta, args ++ [marker(last, line, st)]}
        {node, line, %{st | marks: st.marks + 1}}
    end
  end

  defp marked(value, line, line, st), do: {value, line, st}

  defp marked(value, line, _known, st),
    do: {marker(value, line, st), line, %{st | marks: st.marks + 1}}

  defp marker(value, line, st), do: {{:., [], [__MODULE__, :at]}, [], [value, line, st.token]}

  defp line(meta, line) when is_list(meta), do: meta[:line] || line
  defp line(_meta, line), do: line
end
