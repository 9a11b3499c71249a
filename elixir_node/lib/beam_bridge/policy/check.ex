defmodule BeamBridge.Policy.Check do
  @moduledoc """
  The static half of the policy: walks a parsed fragment, expanding macros
  as the compiler would, and checks every call, capture, module reference
  and definition against `BeamBridge.Policy.Rules`.

  The walk knows three contexts: `:body` (code that runs), `:pattern` and
  `:guard`. Only body code is rewritten: calls with a value as module or
  function become `BeamBridge.Policy.Guard` calls, allocating calls get
  their guard, and built bitstrings are measured. Patterns and guards can
  only call guard-safe BIFs, which the compiler enforces.

  Macros are expanded one step at a time with the fragment's env and the
  result is walked again, so what a macro generates (a user `defmacro`
  included) is checked like code written by hand. Only macros of allowed
  modules and of the session's own modules are expanded: expanding runs the
  macro's code.

  Denials are thrown as `{:denied, message, meta}` and caught by `run/3`.
  """

  alias BeamBridge.Policy.{Rules, Scope}

  @guard BeamBridge.Policy.Guard

  @denied_forms %{
    super: "super calls overridable definitions, which the sandbox does not allow",
    defdelegate: "defdelegate forwards calls the policy cannot follow",
    defoverridable: "defoverridable is not supported in the sandbox",
    defprotocol: "protocols are global to the node",
    defimpl: "protocol implementations are global to the node",
    use: "use runs another module's __using__ macro",
    dbg: "dbg reaches the node's debugging hooks",
    __ENV__: "__ENV__ exposes the compiler's environment",
    __CALLER__: "__CALLER__ exposes the compiler's environment",
    __DIR__: "__DIR__ reveals the node's file system"
  }

  @hooks ~w(on_load before_compile after_compile on_definition compile derive)a
  @typespecs ~w(spec type typep opaque callback macrocallback)a
  @definitions ~w(def defp defmacro defmacrop)a

  @doc "See `BeamBridge.Policy.check/3`."
  @spec run(Macro.t(), Macro.Env.t(), Scope.t()) ::
          {:ok, Macro.t(), Scope.t(), :pure | :effects} | {:error, map}
  def run(quoted, env, scope) do
    st = %{
      env: env,
      scope: scope,
      ns: guard_ns(scope),
      effects: :pure,
      ctx: :body,
      where: if(env.module, do: :module, else: :top),
      imports: [],
      kernel: kernel_imports(env),
      own_prefix: scope.namespace <> "."
    }

    {checked, st} = walk(quoted, st)
    {:ok, checked, st.scope, st.effects}
  catch
    # Code a macro generated has no line of its own: the fragment's is used.
    {:denied, message, meta} ->
      {:error, %{kind: "denied", message: message, line: line(meta) || first_line(quoted)}}
  end

  # What the guards are told about the session's modules: its namespace,
  # and for a fork the versions it inherited, which live in its parents'.
  defp guard_ns(scope) do
    case Scope.inherited(scope) do
      [] -> scope.namespace <> "."
      inherited -> {scope.namespace <> ".", inherited}
    end
  end

  defp first_line(quoted) do
    {_, line} =
      Macro.prewalk(quoted, nil, fn
        {_, meta, _} = node, nil when is_list(meta) -> {node, meta[:line]}
        node, line -> {node, line}
      end)

    line
  end

  defp line(meta) when is_list(meta), do: meta[:line]
  defp line(_meta), do: nil

  defp deny!(message, meta), do: throw({:denied, message, meta})

  # -- literals and containers

  defp walk(atom, st) when is_atom(atom), do: {module_ref!(atom, [], st), st}
  defp walk(term, st) when is_number(term) or is_binary(term), do: {term, st}
  # A list of numbers and strings is data, which the walk would give back
  # as it is; an improper list is not one of these and is walked.
  defp walk(list, st) when is_list(list) do
    if plain_data?(list), do: {list, st}, else: walk_list(list, st)
  end

  defp walk({left, right}, st) do
    {left, st} = walk(left, st)
    {right, st} = walk(right, st)
    {{left, right}, st}
  end

  defp walk({:__aliases__, meta, _} = node, st) do
    case expand_alias(node, st) do
      atom when is_atom(atom) -> {module_ref!(atom, meta, st), st}
      {:no_atom, name} -> deny!("#{name} is not a module that exists", meta)
      _ -> deny!("a module name built at run time", meta)
    end
  end

  # -- variables and the special variables

  defp walk({name, meta, context} = node, st) when is_atom(name) and is_atom(context) do
    case @denied_forms do
      %{^name => reason} -> deny!(reason, meta)
      _ -> {node, st}
    end
  end

  # -- remote and anonymous calls

  defp walk({{:., dot_meta, [left, fun]}, meta, args}, st) when is_atom(fun) and is_list(args) do
    case static_module(left, st) do
      {:ok, module} -> remote(module, fun, args, dot_meta, meta, st)
      :dynamic -> dynamic(left, fun, args, dot_meta, meta, st)
    end
  end

  defp walk({{:., dot_meta, [fun]}, meta, args}, st) when is_list(args) do
    {fun, st} = walk(fun, st)
    {args, st} = walk_list(args, st)
    {{{:., dot_meta, [fun]}, meta, args}, st}
  end

  defp walk({{:., _, _}, meta, _args}, _st),
    do: deny!("a call whose function is not a name", meta)

  # -- special forms

  defp walk({:__block__, meta, exprs}, st) do
    {exprs, st} = walk_list(exprs, st)
    {{:__block__, meta, exprs}, st}
  end

  defp walk({:=, meta, [left, right]}, st) do
    {left, st} = in_ctx(st, pattern_ctx(st), &walk(left, &1))
    {right, st} = walk(right, st)
    {{:=, meta, [left, right]}, st}
  end

  defp walk({:^, _meta, [_var]} = node, st), do: {node, st}

  defp walk({:fn, meta, clauses}, st) do
    {clauses, st} = in_where(st, :function, &clauses(clauses, :pattern, &1))
    {{:fn, meta, clauses}, st}
  end

  defp walk({:case, meta, [expr, [do: clauses]]}, st) do
    {expr, st} = walk(expr, st)
    {clauses, st} = clauses(clauses, :pattern, st)
    {{:case, meta, [expr, [do: clauses]]}, st}
  end

  defp walk({:cond, meta, [[do: clauses]]}, st) do
    {clauses, st} = clauses(clauses, :body, st)
    {{:cond, meta, [[do: clauses]]}, st}
  end

  defp walk({:receive, meta, [opts]}, st) do
    {opts, st} = block_opts(opts, st)
    {{:receive, meta, [opts]}, st}
  end

  defp walk({:try, meta, [opts]}, st) do
    {opts, st} = block_opts(opts, st)
    {{:try, meta, [opts]}, st}
  end

  defp walk({:for, meta, args}, st), do: comprehension(:for, meta, args, st)
  defp walk({:with, meta, args}, st), do: comprehension(:with, meta, args, st)

  defp walk({:quote, meta, args}, st) do
    {args, st} = quoted(args, st)
    {{:quote, meta, args}, st}
  end

  defp walk({:%{}, meta, pairs}, st) do
    {pairs, st} = walk_list(pairs, st)
    {{:%{}, meta, struct_pairs(pairs, meta, st)}, st}
  end

  defp walk({:{}, meta, items}, st) do
    {items, st} = walk_list(items, st)
    {{:{}, meta, items}, st}
  end

  defp walk({:%, meta, [struct, map]}, st) do
    {struct, st} =
      case static_module(struct, st) do
        {:ok, module} -> {module_ref!(module, meta, st), st}
        :dynamic when st.ctx != :body -> walk(struct, st)
        :dynamic -> deny!("a struct whose module is a value", meta)
      end

    {map, st} = walk(map, st)
    {{:%, meta, [struct, map]}, st}
  end

  defp walk({:<<>>, meta, segments}, st), do: bitstring(meta, segments, st)

  defp walk({:&, _meta, [n]} = node, st) when is_integer(n), do: {node, st}

  defp walk({:&, meta, [{:/, _, [ref, arity]}]} = node, st) when is_integer(arity),
    do: capture(node, ref, arity, meta, st)

  defp walk({:&, meta, [body]}, st) do
    {body, st} = walk(body, st)
    {{:&, meta, [body]}, st}
  end

  defp walk({form, meta, args}, st) when form in [:|, :"::", :when, :<-, :->] do
    {args, st} = walk_list(args, st)
    {{form, meta, args}, st}
  end

  defp walk({:unquote, meta, _}, _st), do: deny!("unquote outside of quote", meta)

  # -- definitions and the env

  defp walk({:defmodule, meta, [name, [do: body]]}, st), do: defmodule(name, body, meta, st)

  defp walk({kind, meta, args}, st) when kind in @definitions,
    do: definition(kind, meta, args, st)

  defp walk({:@, meta, [{name, ameta, value}]} = node, st) when is_atom(name),
    do: attribute(node, name, ameta, value, meta, st)

  defp walk({kind, meta, args} = node, st) when kind in [:defstruct, :defexception] do
    if st.where != :module, do: deny!("#{kind} outside of a module", meta)
    {_args, st} = walk_list(args, st)
    {node, st}
  end

  defp walk({kind, meta, [{:when, _, [_call, guard]}]} = node, st)
       when kind in [:defguard, :defguardp] do
    if st.where != :module, do: deny!("#{kind} outside of a module", meta)
    {_guard, st} = in_ctx(st, :guard, &walk(guard, &1))
    {node, st}
  end

  defp walk({directive, meta, [target | opts]} = node, st)
       when directive in [:import, :alias, :require],
       do: directive(directive, node, target, opts, meta, st)

  defp walk({name, meta, args}, _st) when is_map_key(@denied_forms, name) and is_list(args),
    do: deny!(@denied_forms[name], meta)

  # -- local calls

  # `binding/0,1` expands to the variables the env knows when it is
  # expanded, which misses those bound earlier in the same fragment; it
  # reads only the fragment's own bindings, so it is left to the compiler.
  defp walk({:binding, _meta, args} = node, st) when args in [[], nil], do: {node, st}

  defp walk({name, meta, args} = node, st) when is_atom(name) and is_list(args) do
    if name == :sigil_w or name == :sigil_W, do: word_sigil!(args, meta)

    imported = env_imports({name, length(args)}, st)

    case expand_local(node, imported, st) do
      ^node -> local(name, meta, args, imported, st)
      expanded -> walk(expanded, st)
    end
  end

  defp walk({_form, meta, _args}, _st), do: deny!("a construct the sandbox does not know", meta)

  defp walk(other, _st), do: deny!("a term that is not code: #{inspect(other, limit: 5)}", [])

  defp plain_data?([item | rest]) when is_number(item) or is_binary(item), do: plain_data?(rest)
  defp plain_data?(rest), do: rest == []

  defp walk_list(list, st) do
    {items, st} =
      Enum.reduce(list, {[], st}, fn item, {acc, st} ->
        {item, st} = walk(item, st)
        {[item | acc], st}
      end)

    {Enum.reverse(items), st}
  catch
    # An improper list: `[h | t]` reaches here only as the `|` form.
    :error, %FunctionClauseError{} -> deny!("an improper list literal", [])
  end

  defp in_ctx(st, ctx, fun) do
    {result, new} = fun.(%{st | ctx: ctx})
    {result, %{new | ctx: st.ctx}}
  end

  defp in_where(st, where, fun) do
    {result, new} = fun.(%{st | where: where})
    {result, %{new | where: st.where}}
  end

  defp pattern_ctx(%{ctx: :body}), do: :pattern
  defp pattern_ctx(%{ctx: ctx}), do: ctx

  defp expand_once(node, st) do
    env =
      case st.ctx do
        :body -> %{st.env | context: nil}
        :pattern -> %{st.env | context: :match}
        :guard -> %{st.env | context: :guard}
      end

    Macro.expand_once(node, env)
  end

  # `expand_once/2` of a local call, whose imports `imported` the env
  # names, shortened where the answer is known. `Macro.expand_once/2`
  # dispatches a local call by scanning every import list again, and for
  # a plain call that is the whole cost: where the env imports the name
  # as a function only, it finds no macro and leaves the call alone;
  # where it imports it as a macro of Kernel only, it expands it as it
  # would expand the remote call `Kernel.name(...)`, through the same
  # macro, meta and env, which is found in one list. The dispatch differs
  # only where the call's meta names imports (code a quote made), where
  # the module in the env has macros of its own (compiled, or open), and
  # for unary `+` and `-` of an integer, which it folds; those calls, and
  # any env with tracers (which see each dispatch), take the full path.
  defp expand_local({name, meta, args} = node, imported, st) do
    case imported do
      [{:function, _}] when name not in [:+, :-] or length(args) != 1 ->
        if direct_dispatch?(meta, st), do: node, else: expand_once(node, st)

      [{:macro, Kernel}] ->
        if direct_dispatch?(meta, st) and Kernel in st.env.requires do
          remote = {{:., [], [Kernel, name]}, meta, args}

          case expand_once(remote, st) do
            ^remote -> node
            expanded -> expanded
          end
        else
          expand_once(node, st)
        end

      _other ->
        expand_once(node, st)
    end
  end

  defp direct_dispatch?(meta, %{env: env}) do
    module = env.module

    env.tracers == [] and not Keyword.has_key?(meta, :imports) and
      (module == nil or not (Module.open?(module) or function_exported?(module, :__info__, 1)))
  end

  @kernel_imports {__MODULE__, :kernel_imports}

  # What the env imports as `{name, arity}`, as `Macro.Env.lookup_import/2`
  # answers. That scans every imported list, about a microsecond for
  # Kernel's alone; most fragments see only Kernel's imports, and for those
  # a map made once per node answers the same. The env's imports do not
  # change during a check (an `import` in the fragment goes to
  # `st.imports`), so the map is chosen once, in `run/3`. The test is
  # cheap: Kernel's lists are literals, shared by every env that has them.
  defp kernel_imports(env) do
    functions = Kernel.__info__(:functions)
    macros = Kernel.__info__(:macros)

    if env.functions == [{Kernel, functions}] and env.macros == [{Kernel, macros}] do
      case :persistent_term.get(@kernel_imports, nil) do
        nil ->
          # Kernel is not reloaded in a running node, so this is made once.
          table = import_table(functions, macros)
          :persistent_term.put(@kernel_imports, table)
          table

        table ->
          table
      end
    end
  end

  defp import_table(functions, macros) do
    table = Map.new(functions, &{&1, [{:function, Kernel}]})

    Enum.reduce(macros, table, fn pair, table ->
      Map.update(table, pair, [{:macro, Kernel}], &(&1 ++ [{:macro, Kernel}]))
    end)
  end

  defp env_imports(pair, %{kernel: nil} = st), do: Macro.Env.lookup_import(st.env, pair)
  defp env_imports(pair, %{kernel: table}), do: Map.get(table, pair, [])

  # -- modules

  # Every module a fragment names must be one the policy knows or one the
  # session defined: a struct of a denied module is as dangerous as a call
  # (`%File.Stream{}` collected into writes a file).
  defp module_ref!(atom, meta, st) do
    case Atom.to_string(atom) do
      "Elixir." <> _ = _name ->
        if Rules.known?(atom) or own?(atom, st),
          do: atom,
          else: deny!("#{inspect(atom)} #{Rules.reason(atom)}", meta)

      _plain ->
        atom
    end
  end

  # A struct's name that is a value: `%{__struct__: m}`, `%{map | __struct__:
  # m}`, `Map.put(map, :__struct__, m)`. Protocols and Access dispatch on
  # it, so it is checked when it runs like a module the fragment names.
  # A key that is itself a value (`%{k => m}`) is not seen here; what keeps
  # denied modules out of it is that a fragment cannot hold their atoms.
  defp struct_pairs(pairs, meta, %{ctx: :body} = st) do
    Enum.map(pairs, fn
      {:|, umeta, [map, updates]} when is_list(updates) ->
        {:|, umeta, [map, struct_pairs(updates, meta, st)]}

      {:__struct__, value} when not is_atom(value) ->
        {:__struct__, struct_name(value, meta, st)}

      pair ->
        pair
    end)
  end

  defp struct_pairs(pairs, _meta, _st), do: pairs

  defp struct_name(value, meta, st), do: {{:., [], [@guard, :struct_name]}, meta, [value, st.ns]}

  # Calls that put a key into a map: the indexes of the key and the value.
  @map_puts %{
    {Map, :put, 3} => {1, 2},
    {Map, :put_new, 3} => {1, 2},
    {Map, :replace, 3} => {1, 2},
    {Map, :replace!, 3} => {1, 2},
    {:maps, :put, 3} => {0, 1}
  }

  defp struct_put(module, fun, args, meta, %{ctx: :body} = st) do
    with {key, value} <- @map_puts[{module, fun, length(args)}],
         :__struct__ <- Enum.at(args, key),
         false <- is_atom(Enum.at(args, value)) do
      List.update_at(args, value, &struct_name(&1, meta, st))
    else
      _ -> args
    end
  end

  defp struct_put(_module, _fun, args, _meta, _st), do: args

  defp static_module(atom, _st) when is_atom(atom), do: {:ok, atom}

  defp static_module({:__MODULE__, _, context}, st) when is_atom(context),
    do: {:ok, st.env.module}

  defp static_module({:__aliases__, meta, _} = node, st) do
    case expand_alias(node, st) do
      atom when is_atom(atom) -> {:ok, atom}
      {:no_atom, name} -> deny!("#{name} is not a module that exists", meta)
      _ -> :dynamic
    end
  end

  defp static_module(_other, _st), do: :dynamic

  # `Macro.expand/2` of an alias, without its side effect: Elixir joins the
  # segments with `Module.concat/1`, which makes the atom of the name, so a
  # fragment naming `Enum.Map.List` (parts that are atoms already) would add
  # one atom to the table for every new combination, outside the session's
  # budget. The name is joined as text instead, the first segment looked up
  # among the env's aliases, and the atom taken only if it exists: a module
  # whose name is not an atom does not exist (the session's own modules are
  # renamed to existing atoms when parsed), so `{:no_atom, name}` is
  # refused. Aliases that a macro marked (`alias:` in the meta) or that a
  # tracer must see take Elixir's own way.
  defp expand_alias({:__aliases__, meta, [{:__MODULE__, _, context} | rest]}, %{env: env} = st)
       when is_atom(context) and env.module != nil,
       do: expand_alias({:__aliases__, meta, [env.module | rest]}, st)

  defp expand_alias({:__aliases__, meta, segments} = node, %{env: env}) do
    if env.tracers == [] and is_list(segments) and Enum.all?(segments, &is_atom/1) and
         not Keyword.has_key?(meta, :alias),
       do: existing_alias(segments, env.aliases),
       else: Macro.expand(node, env)
  end

  defp existing_alias([:"Elixir" | rest], _aliases) when rest != [], do: existing_module(rest)

  defp existing_alias([first | rest] = segments, aliases) do
    # `__MODULE__.Part` starts with a whole module name: no alias applies.
    with false <- String.starts_with?(Atom.to_string(first), "Elixir."),
         head when is_atom(head) <- existing_module([first]),
         {^head, target} <- List.keyfind(aliases, head, 0) do
      if rest == [], do: target, else: existing_module([target | rest])
    else
      _no_alias -> existing_module(segments)
    end
  end

  defp existing_module(segments) do
    name = "Elixir." <> Enum.map_join(segments, ".", &segment_text/1)

    try do
      String.to_existing_atom(name)
    rescue
      ArgumentError -> {:no_atom, String.replace_prefix(name, "Elixir.", "")}
    end
  end

  defp segment_text(segment) do
    case Atom.to_string(segment) do
      "Elixir." <> text -> text
      text -> text
    end
  end

  # `Scope.own?/2`, with the namespace's prefix made once per check.
  defp own?(module, st) do
    is_atom(module) and module != nil and
      (is_map_key(st.scope.names, module) or
         String.starts_with?(Atom.to_string(module), st.own_prefix))
  end

  # -- calls

  defp remote(module, fun, args, dot_meta, meta, st) do
    arity = length(args)

    cond do
      own?(module, st) ->
        macro_or_call(module, fun, args, dot_meta, meta, st)

      true ->
        case Rules.rule(module, fun, arity) do
          :allow ->
            macro_or_call(module, fun, args, dot_meta, meta, st)

          {:deny, reason} ->
            deny!("#{inspect(module)}.#{fun}/#{arity} #{reason}", meta)

          guarded ->
            {args, st} = walk_list(args, st)
            {guarded_call(guarded, module, fun, args, dot_meta, meta, st), st}
        end
    end
  end

  defp macro_or_call(module, fun, args, dot_meta, meta, st) do
    node = {{:., dot_meta, [module, fun]}, meta, args}

    if is_atom(module) and macro?(module, fun, length(args)) do
      case expand_once(node, st) do
        ^node ->
          deny!("#{inspect(module)}.#{fun}/#{length(args)} is a macro that is not required", meta)

        expanded ->
          walk(expanded, st)
      end
    else
      {args, st} = walk_list(args, st)
      args = struct_put(module, fun, args, meta, st)
      {{{:., dot_meta, [module, fun]}, meta, args}, st}
    end
  end

  defp macro?(module, fun, arity) do
    Code.ensure_loaded?(module) and function_exported?(module, :__info__, 1) and
      {fun, arity} in module.__info__(:macros)
  end

  # Outside the body (patterns, guards) the compiler allows only guard
  # BIFs, so nothing is rewritten there.
  defp guarded_call(_guarded, module, fun, args, dot_meta, meta, %{ctx: ctx})
       when ctx != :body,
       do: {{:., dot_meta, [module, fun]}, meta, args}

  defp guarded_call({:replace, guard}, _module, _fun, args, dot_meta, meta, _st),
    do: {{:., dot_meta, [@guard, guard]}, meta, args}

  defp guarded_call({:replace_ns, guard}, _module, _fun, args, dot_meta, meta, st),
    do: {{:., dot_meta, [@guard, guard]}, meta, args ++ [st.ns]}

  defp guarded_call({:args, guards}, module, fun, args, dot_meta, meta, _st) do
    args =
      Enum.reduce(guards, args, fn {index, guard}, args ->
        List.update_at(args, index, &{{:., [], [@guard, guard]}, meta, [&1]})
      end)

    {{:., dot_meta, [module, fun]}, meta, args}
  end

  # `value.fun(args)` and `value.key`: the module (or map) is known only
  # when the fragment runs.
  defp dynamic(left, fun, args, dot_meta, meta, st) do
    {left, st} = walk(left, st)
    {args, st} = walk_list(args, st)

    cond do
      st.ctx != :body ->
        {{{:., dot_meta, [left, fun]}, meta, args}, st}

      args == [] and meta[:no_parens] ->
        {{{:., [], [@guard, :dot]}, meta, [left, fun, st.ns]}, st}

      true ->
        {{{:., [], [@guard, :call]}, meta, [left, fun, args, st.ns]}, st}
    end
  end

  defp local(name, meta, args, imported, st) do
    arity = length(args)

    case import_of(name, arity, imported, st) do
      {:function, module} ->
        case Rules.rule(module, name, arity) do
          :allow ->
            {args, st} = walk_list(args, st)
            {{name, meta, args}, st}

          {:deny, reason} ->
            deny!("#{name}/#{arity} (#{inspect(module)}) #{reason}", meta)

          guarded ->
            {args, st} = walk_list(args, st)
            {guarded_call(guarded, module, name, args, [], meta, st), st}
        end

      {:macro, module} ->
        remote(module, name, args, [], meta, st)

      :local ->
        {args, st} = walk_list(args, st)
        {{name, meta, args}, st}
    end
  end

  # Imports made earlier in this fragment are not in the env yet: they are
  # looked at first. `imported` is what the env imports as `{name, arity}`.
  defp import_of(name, arity, imported, st) do
    fragment =
      Enum.find_value(st.imports, fn module ->
        cond do
          {name, arity} in exports(module, :functions) -> {:function, module}
          {name, arity} in exports(module, :macros) -> {:macro, module}
          true -> nil
        end
      end)

    case fragment || imported do
      {_kind, _module} = found -> found
      [found | _] -> found
      [] -> :local
    end
  end

  defp exports(module, kind) do
    cond do
      function_exported?(module, :__info__, 1) -> module.__info__(kind)
      kind == :functions -> module.module_info(:exports)
      true -> []
    end
  end

  defp capture(node, {name, _, context}, arity, meta, st)
       when is_atom(name) and is_atom(context) do
    case import_of(name, arity, env_imports({name, arity}, st), st) do
      :local -> {node, st}
      {_kind, module} -> capture_remote(node, module, name, arity, meta, st)
    end
  end

  defp capture(node, {{:., _, [left, fun]}, _, []}, arity, meta, st) when is_atom(fun) do
    case static_module(left, st) do
      {:ok, module} ->
        capture_remote(node, module, fun, arity, meta, st)

      :dynamic when st.ctx != :body ->
        deny!("a capture of #{fun}/#{arity} on a module that is a value", meta)

      :dynamic ->
        {left, st} = walk(left, st)
        {{{:., [], [@guard, :capture]}, meta, [left, fun, arity, st.ns]}, st}
    end
  end

  # `&(&1 / 2)` and the like: an ordinary capture body.
  defp capture({:&, meta, [body]}, _ref, _arity, _meta, st) do
    {body, st} = walk(body, st)
    {{:&, meta, [body]}, st}
  end

  defp capture_remote(node, module, fun, arity, meta, st) do
    rule = if own?(module, st), do: :allow, else: Rules.rule(module, fun, arity)

    case rule do
      :allow ->
        if macro?(module, fun, arity),
          do: deny!("a capture of the macro #{inspect(module)}.#{fun}/#{arity}", meta)

        {node, st}

      {:deny, reason} ->
        deny!("&#{inspect(module)}.#{fun}/#{arity} #{reason}", meta)

      guarded ->
        # A guarded function is captured as a closure over its guard.
        vars = Macro.generate_arguments(arity, __MODULE__)
        call = guarded_call(guarded, module, fun, vars, [], meta, st)
        {{:fn, meta, [{:->, meta, [vars, call]}]}, st}
    end
  end

  # `~w(...)a` makes atoms while it is expanded.
  defp word_sigil!([_text, modifiers], meta) do
    if is_list(modifiers) and ?a in modifiers,
      do: deny!("~w with the a modifier makes atoms from text", meta)
  end

  defp word_sigil!(_args, _meta), do: :ok

  # -- clauses

  defp clauses(clauses, head_ctx, st) when is_list(clauses) do
    Enum.map_reduce(clauses, st, fn
      {:->, meta, [head, body]}, st ->
        {head, st} = head(head, head_ctx, st)
        {body, st} = walk(body, st)
        {{:->, meta, [head, body]}, st}

      other, _st ->
        deny!("a clause the sandbox does not know", elem_meta(other))
    end)
  end

  # An empty `receive do end` has a block, not clauses.
  defp clauses(other, _head_ctx, st), do: walk(other, st)

  defp head([{:when, meta, parts}], :pattern, st) do
    {patterns, [guard]} = Enum.split(parts, -1)
    {patterns, st} = in_ctx(st, :pattern, &walk_list(patterns, &1))
    {guard, st} = in_ctx(st, :guard, &walk(guard, &1))
    {[{:when, meta, patterns ++ [guard]}], st}
  end

  defp head(head, :pattern, st), do: in_ctx(st, :pattern, &walk_list(head, &1))
  defp head(head, :body, st), do: walk_list(head, st)

  defp elem_meta({_, meta, _}) when is_list(meta), do: meta
  defp elem_meta(_), do: []

  # `do`/`else`/`after` bodies of try, receive, and function bodies.
  defp block_opts(opts, st) do
    Enum.map_reduce(opts, st, fn
      {:do, [{:->, _, _} | _] = clauses}, st ->
        {clauses, st} = clauses(clauses, :pattern, st)
        {{:do, clauses}, st}

      {:do, body}, st ->
        {body, st} = walk(body, st)
        {{:do, body}, st}

      {:rescue, clauses}, st ->
        {clauses, st} = rescue_clauses(clauses, st)
        {{:rescue, clauses}, st}

      {:after, [{:->, _, _} | _] = clauses}, st ->
        {clauses, st} = clauses(clauses, :body, st)
        {{:after, clauses}, st}

      {:after, body}, st ->
        {body, st} = walk(body, st)
        {{:after, body}, st}

      {key, clauses}, st when key in [:catch, :else] ->
        {clauses, st} = clauses(clauses, :pattern, st)
        {{key, clauses}, st}

      {key, _}, _st ->
        deny!("an option #{inspect(key)} the sandbox does not know", [])
    end)
  end

  # Rescue heads name exception modules and bind a variable; they run no
  # code, so only the bodies are walked.
  defp rescue_clauses(clauses, st) do
    Enum.map_reduce(clauses, st, fn {:->, meta, [head, body]}, st ->
      {body, st} = walk(body, st)
      {{:->, meta, [head, body]}, st}
    end)
  end

  defp comprehension(form, meta, args, st) do
    {opts, parts} =
      case List.last(args) do
        opts when is_list(opts) -> {opts, Enum.drop(args, -1)}
        _ -> {[], args}
      end

    {parts, st} = Enum.map_reduce(parts, st, &generator/2)

    {opts, st} =
      Enum.map_reduce(opts, st, fn
        {:do, [{:->, _, _} | _] = body}, st when form == :for ->
          {body, st} = clauses(body, :pattern, st)
          {{:do, body}, st}

        {:else, clauses}, st ->
          {clauses, st} = clauses(clauses, :pattern, st)
          {{:else, clauses}, st}

        {key, value}, st ->
          {value, st} = walk(value, st)
          {{key, value}, st}
      end)

    args = if opts == [], do: parts, else: parts ++ [opts]
    {{form, meta, args}, st}
  end

  defp generator({:<-, meta, [pattern, enum]}, st) do
    {enum, st} = walk(enum, st)
    {[pattern], st} = head([pattern], :pattern, st)
    {{:<-, meta, [pattern, enum]}, st}
  end

  defp generator({:<<>>, meta, [{:<-, gmeta, [pattern, enum]}]}, st) do
    {enum, st} = walk(enum, st)
    {pattern, st} = in_ctx(st, :pattern, &walk(pattern, &1))
    {{:<<>>, meta, [{:<-, gmeta, [pattern, enum]}]}, st}
  end

  defp generator(filter, st), do: walk(filter, st)

  # -- quote: only what is unquoted runs now

  defp quoted(args, st) do
    {opts, st} =
      case args do
        [opts, _block] when is_list(opts) ->
          Enum.map_reduce(opts, st, fn {key, value}, st ->
            {value, st} = walk(value, st)
            {{key, value}, st}
          end)

        _ ->
          {[], st}
      end

    # An atom in a quote is a value when the fragment runs, like any
    # literal: `quote(do: :"Elixir.File.Stream")` is the module.
    if opts[:unquote] == false do
      _ = quoted_atoms!(List.last(args), st)
      {args, st}
    else
      {block, st} = unquoted(List.last(args), st)
      {Enum.drop(args, -1) ++ [block], st}
    end
  end

  defp unquoted({form, meta, [expr]}, st) when form in [:unquote, :unquote_splicing] do
    {expr, st} = walk(expr, st)
    {{form, meta, [expr]}, st}
  end

  defp unquoted({:quote, _, _} = nested, _st), do: deny!("nested quote", elem_meta(nested))

  defp unquoted({left, meta, right}, st) do
    {left, st} = unquoted(left, st)
    {right, st} = unquoted(right, st)
    {{left, meta, right}, st}
  end

  defp unquoted({left, right}, st) do
    {left, st} = unquoted(left, st)
    {right, st} = unquoted(right, st)
    {{left, right}, st}
  end

  defp unquoted(list, st) when is_list(list), do: Enum.map_reduce(list, st, &unquoted/2)
  defp unquoted(atom, st) when is_atom(atom), do: {module_ref!(atom, [], st), st}
  defp unquoted(leaf, st), do: {leaf, st}

  defp quoted_atoms!(atom, st) when is_atom(atom), do: module_ref!(atom, [], st)
  defp quoted_atoms!(list, st) when is_list(list), do: Enum.each(list, &quoted_atoms!(&1, st))

  defp quoted_atoms!({left, meta, right}, st) do
    quoted_atoms!(left, st)
    quoted_atoms!(meta, st)
    quoted_atoms!(right, st)
  end

  defp quoted_atoms!({left, right}, st) do
    quoted_atoms!(left, st)
    quoted_atoms!(right, st)
  end

  defp quoted_atoms!(_leaf, _st), do: :ok

  # -- bitstrings

  defp bitstring(meta, segments, st) do
    {segments, st} = Enum.map_reduce(segments, st, &segment/2)
    node = {:<<>>, meta, segments}

    if st.ctx == :body and not Enum.all?(segments, &literal_segment?/1),
      do: {{{:., [], [@guard, :binary]}, meta, [node]}, st},
      else: {node, st}
  end

  defp segment({:"::", meta, [value, spec]}, st) do
    {value, st} = walk(value, st)
    {spec, st} = if st.ctx == :body, do: {size_guard(spec, spec), st}, else: {spec, st}
    {{:"::", meta, [value, spec]}, st}
  end

  defp segment(value, st), do: walk(value, st)

  defp literal_segment?(value) when is_binary(value) or is_integer(value), do: true
  defp literal_segment?({:"::", _, [value, _spec]}), do: literal_segment?(value)
  defp literal_segment?(_value), do: false

  # `size(expr)` in a segment that is built: the size is checked first.
  defp size_guard({:size, meta, [n]}, _spec) when is_integer(n), do: {:size, meta, [n]}

  defp size_guard({:size, meta, [expr]}, spec) do
    {:size, meta, [{{:., [], [@guard, :bits]}, meta, [expr, unit(spec)]}]}
  end

  defp size_guard({:-, meta, [a, b]}, spec),
    do: {:-, meta, [size_guard(a, spec), size_guard(b, spec)]}

  defp size_guard(other, _spec), do: other

  defp unit({:unit, _, [n]}) when is_integer(n), do: n
  defp unit({:-, _, [a, b]}), do: max(unit(a), unit(b))
  defp unit({type, _, _}) when type in [:binary, :bytes], do: 8
  defp unit(_other), do: 1

  # -- definitions

  defp defmodule(name, body, meta, st) do
    cond do
      st.where not in [:top, :module] ->
        deny!("defmodule inside a function: modules are defined at the top level", meta)

      not (is_atom(name) and own?(name, st)) ->
        deny!("defmodule needs a literal module name (an alias such as Foo)", meta)

      true ->
        env = %{st.env | module: name, function: nil}
        inner = %{st | env: env, where: :module, effects: :effects}
        {body, inner} = walk(body, inner)
        st = %{st | scope: inner.scope, effects: :effects}
        {{:defmodule, meta, [name, [do: body]]}, st}
    end
  end

  defp definition(kind, meta, args, st) do
    if st.where != :module, do: deny!("#{kind} outside of a module", meta)

    case args do
      [head] ->
        {head, st} = def_head(head, meta, st)
        {{kind, meta, [head]}, st}

      [head, body] when is_list(body) ->
        {head, function_st} = def_head(head, meta, st)
        function_st = %{function_st | where: :function}
        {body, function_st} = block_opts(body, function_st)
        {{kind, meta, [head, body]}, %{st | scope: function_st.scope}}

      _ ->
        deny!("a #{kind} the sandbox does not know", meta)
    end
  end

  defp def_head({:when, wmeta, [call, guard]}, meta, st) do
    {call, st} = def_head(call, meta, st)
    {guard, st} = in_ctx(st, :guard, &walk(guard, &1))
    {{:when, wmeta, [call, guard]}, st}
  end

  defp def_head({name, cmeta, params}, _meta, st) when is_atom(name) do
    params = if is_list(params), do: params, else: []
    {params, st} = Enum.map_reduce(params, st, &param/2)
    env = %{st.env | function: {name, length(params)}}
    {{name, cmeta, params}, %{st | env: env}}
  end

  defp def_head(_head, meta, _st), do: deny!("a function name that is not a literal", meta)

  defp param({:\\, meta, [pattern, default]}, st) do
    {pattern, st} = in_ctx(st, :pattern, &walk(pattern, &1))
    {default, st} = walk(default, st)
    {{:\\, meta, [pattern, default]}, st}
  end

  defp param(pattern, st), do: in_ctx(st, :pattern, &walk(pattern, &1))

  defp attribute(node, name, ameta, value, meta, st) do
    cond do
      not is_list(value) or value == [] ->
        {node, st}

      name in @hooks ->
        deny!("@#{name} runs code when the module is compiled or loaded", meta)

      name in @typespecs ->
        {node, st}

      true ->
        {value, st} = walk_list(value, st)
        {{:@, meta, [{name, ameta, value}]}, st}
    end
  end

  defp directive(directive, node, target, opts, meta, st) do
    module =
      case static_module(target, st) do
        {:ok, module} when is_atom(module) -> module
        _ -> deny!("#{directive} of a module that is not a literal name", meta)
      end

    unless Rules.known?(module) or own?(module, st) do
      deny!("#{directive} #{inspect(module)}: #{inspect(module)} #{Rules.reason(module)}", meta)
    end

    # `as:` names the alias being made, not a module to reach.
    {_opts, st} = walk_list(Enum.map(opts, &without_as/1), st)
    env = st.env

    {env, st} =
      case directive do
        :require ->
          {%{env | requires: [module | env.requires]}, st}

        :import ->
          {%{env | requires: [module | env.requires]}, st}

        :alias ->
          case alias_name(module, List.first(opts) || [], meta, st) do
            {nil, st} ->
              {env, st}

            {as, st} ->
              {%{env | aliases: [{as, module} | List.keydelete(env.aliases, as, 0)]}, st}
          end
      end

    imports = if directive == :import, do: [module | st.imports], else: st.imports
    {node, %{st | env: env, imports: imports}}
  end

  defp without_as(opts) when is_list(opts), do: Enum.reject(opts, &match?({:as, _}, &1))
  defp without_as(other), do: other

  # The name an alias directive makes. Without `as:` it is the last part
  # of a module that exists (so there are only so many). An `as:` name is
  # the fragment's own choice, and the evaluation will make its atom: it is
  # taken from the session's atom budget here, like any new name. Elixir
  # accepts only a one-part alias there; anything else fails when it runs.
  defp alias_name(module, opts, meta, st) do
    case Keyword.get(opts, :as) do
      nil ->
        case Atom.to_string(module) do
          "Elixir." <> _ -> {Module.concat([List.last(Module.split(module))]), st}
          _erlang -> {nil, st}
        end

      {:__aliases__, _, [segment]} when is_atom(segment) ->
        case Scope.atom(st.scope, "Elixir." <> segment_text(segment)) do
          {:ok, as, scope} -> {as, %{st | scope: scope}}
          {:error, message} -> deny!(message, meta)
        end

      _other ->
        {nil, st}
    end
  end
end
