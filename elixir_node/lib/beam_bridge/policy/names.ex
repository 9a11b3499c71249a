defmodule BeamBridge.Policy.Names do
  @moduledoc """
  Parses a fragment without growing the atom table with its text, and gives
  every name in the tree an atom the policy allows (see
  `BeamBridge.Policy.Scope` for the pool and the budget).

  The parser hands each identifier, alias segment, keyword key and atom
  literal to `:static_atoms_encoder`; names that are atoms already stay
  atoms, the others come back as `{tag, name}` with a reference no source
  text can spell. Three passes then replace the markers:

    1. modules: every `defmodule` name gets its module under the session's
       namespace, and every `alias` of such a module its short name;
    2. functions: a name without parentheses that is not a variable (the
       name in a `def` head, a call of a function the fragment defines, a
       capture `&name/1`, a module attribute, a name in a typespec) gets a
       budgeted atom, as a name with parentheses would;
    3. names: an alias is rewritten to the session's module it names, a
       variable gets its pool atom, any other marker a budgeted atom; the
       uses of each variable are counted on the way.

  Pass 1 runs only when the text names `defmodule` or `alias`, pass 2
  only when there are markers or session variables: without them they
  would give the tree back unchanged.
  """

  alias BeamBridge.Policy.Scope

  @file_name "fragment"
  @max_uses_per_name 32
  # Forms that look like variables but are not bindings.
  @special_vars [:_, :__MODULE__, :__ENV__, :__DIR__, :__CALLER__, :__STACKTRACE__]
  @definitions ~w(def defp defmacro defmacrop defguard defguardp)a
  @typespecs ~w(spec type typep opaque callback macrocallback)a

  @doc "See `BeamBridge.Policy.parse/3`."
  @spec parse(binary, pos_integer, Scope.t()) :: {:ok, Macro.t(), Scope.t()} | {:error, map}
  def parse(code, line, scope) do
    tag = make_ref()

    with {:ok, quoted, seen} <- quote_text(code, line, tag) do
      dry = names(quoted, tag, seen, %{scope | dry: true})

      if dry.atoms == scope.atoms do
        {:ok, dry.quoted, %{dry.scope | dry: false}}
      else
        real = names(quoted, tag, seen, scope)
        {:ok, real.quoted, real.scope}
      end
    end
  catch
    {:names, message, meta} -> {:error, %{kind: "denied", message: message, line: meta[:line]}}
  end

  @markers {__MODULE__, :markers}
  @modules {__MODULE__, :modules}

  # Besides the tree, tells what the encoder saw, so that the passes with
  # nothing to do are skipped: `markers` when some name is no atom yet
  # (only the encoder makes markers: no source text can spell the tag),
  # `modules` when the text names `defmodule` or `alias`. The encoder is
  # handed every identifier, already normalized, so a fragment cannot
  # define or alias a module without it seeing the word.
  defp quote_text(code, line, tag) do
    encoder = fn
      name, _meta when name in ["defmodule", "alias"] ->
        Process.put(@modules, true)
        {:ok, :erlang.binary_to_existing_atom(name, :utf8)}

      name, _meta ->
        try do
          {:ok, :erlang.binary_to_existing_atom(name, :utf8)}
        catch
          :error, :badarg ->
            Process.put(@markers, true)
            {:ok, {tag, name}}
        end
    end

    opts = [line: line, file: @file_name, emit_warnings: false, static_atoms_encoder: encoder]
    Process.delete(@markers)
    Process.delete(@modules)
    parsed = Code.string_to_quoted(code, opts)
    seen = %{markers: Process.delete(@markers) == true, modules: Process.delete(@modules) == true}

    case parsed do
      {:ok, quoted} ->
        {:ok, quoted, seen}

      {:error, {meta, message, token}} ->
        {:error,
         %{kind: "SyntaxError", message: syntax_message(message, token), line: meta[:line]}}
    end
  end

  defp names(quoted, tag, seen, scope) do
    scope = if seen.modules, do: modules(quoted, tag, nil, scope), else: scope

    # Without markers and session variables, pass 2 has nothing to rewrite.
    {quoted, scope} =
      if seen.markers or scope.vars != %{},
        do: functions(quoted, tag, scope),
        else: {quoted, scope}

    {quoted, {scope, _uses, over}} = rename(quoted, {scope, %{}, nil}, tag)

    # Counted along pass 3 but denied after it, so that the pass's own
    # denials come first, as when the uses were counted in a walk of their
    # own.
    with {meta} <- over do
      throw(
        {:names,
         "a variable is used more than #{@max_uses_per_name} times in one fragment; " <>
           "split the fragment", meta}
      )
    end

    %{quoted: quoted, scope: scope, atoms: scope.atoms}
  end

  # Elixir names the Erlang variable of each binding `_<name>@<n>`, an atom,
  # with `n` counting the bindings of that name in one evaluation: a
  # fragment rebinding `x` a million times would make a million atoms.
  # Capping how often one name occurs in a fragment caps `n`, so these
  # atoms are bounded for the node's life by the variable names there can
  # be (the pool, and existing atoms) times @max_uses_per_name. `over` is
  # the first use past the cap.
  defp count_use({name, meta, nil}, uses, over)
       when is_atom(name) and name not in @special_vars do
    count = Map.get(uses, name, 0) + 1
    over = if count > @max_uses_per_name and over == nil, do: {meta}, else: over
    {Map.put(uses, name, count), over}
  end

  defp count_use(_node, uses, over), do: {uses, over}

  defp syntax_message({prefix, suffix}, token), do: prefix <> token <> suffix
  defp syntax_message(message, token), do: message <> token

  # -- pass 1: the session's modules

  defp modules({:defmodule, meta, [{:__aliases__, _, segments}, body]}, tag, outer, scope) do
    case segment_names(segments, tag) do
      {:ok, name} ->
        full = if outer, do: outer <> "." <> name, else: name
        {:ok, module, scope} = ok!(Scope.define(scope, full), meta)
        scope = if outer, do: Scope.alias_module(scope, name, module), else: scope
        modules(body, tag, full, scope)

      :error ->
        modules(body, tag, outer, scope)
    end
  end

  defp modules({:alias, _meta, [{:__aliases__, _, segments} | opts]}, tag, _outer, scope) do
    with {:ok, name} <- segment_names(segments, tag),
         {:ok, module, []} <- session_module(scope, name) do
      as_name =
        case opts do
          [[as: {:__aliases__, _, as}]] -> segment_names(as, tag)
          _ -> {:ok, name |> String.split(".") |> List.last()}
        end

      case as_name do
        {:ok, short} -> Scope.alias_module(scope, short, module)
        :error -> scope
      end
    else
      _ -> scope
    end
  end

  defp modules({left, _meta, right}, tag, outer, scope) do
    scope = modules(left, tag, outer, scope)
    modules(right, tag, outer, scope)
  end

  defp modules({left, right}, tag, outer, scope),
    do: modules(right, tag, outer, modules(left, tag, outer, scope))

  defp modules(list, tag, outer, scope) when is_list(list),
    do: Enum.reduce(list, scope, &modules(&1, tag, outer, &2))

  defp modules(_leaf, _tag, _outer, scope), do: scope

  defp segment_names(segments, tag) do
    names =
      Enum.map(segments, fn
        atom when is_atom(atom) -> Atom.to_string(atom)
        {^tag, name} -> name
        _other -> nil
      end)

    if Enum.all?(names, &is_binary/1), do: {:ok, Enum.join(names, ".")}, else: :error
  end

  # The session's module a dotted name refers to: the longest registered
  # prefix, with the rest appended.
  defp session_module(%{modules: modules}, _name) when modules == %{}, do: :error

  defp session_module(scope, name) do
    parts = String.split(name, ".")

    Enum.find_value(length(parts)..1//-1, :error, fn n ->
      {head, rest} = Enum.split(parts, n)

      case Map.fetch(scope.modules, Enum.join(head, ".")) do
        {:ok, module} -> {:ok, module, rest}
        :error -> nil
      end
    end)
  end

  # -- pass 2: function names

  # `foo` without parentheses is a variable or a call of `foo/0`, and only
  # the compiler knows which: it is a call where no variable `foo` is
  # bound. Were every such name a variable, `def total, do: 1` would
  # define a pool name. A name counts as a call where the fragment defines
  # a function of that name and no pattern of the enclosing unit (the
  # function clause; the module body; the top level, with the session's
  # variables) binds it. A name that is a variable somewhere in its unit
  # stays one everywhere in it, so an earlier call of it in that unit
  # fails as undefined, under its own name, instead of the reverse.
  #
  # What a unit binds is asked only of a name the fragment defines as a
  # function, so without such a name it is not computed.
  defp functions(quoted, tag, scope) do
    funs = defined_functions(quoted, tag, MapSet.new())
    unit = %{tag: tag, funs: funs, bound: nil, vars: scope.vars}
    unit = bound(unit, fn -> bound_in(quoted, tag, MapSet.new(Map.keys(scope.vars))) end)
    calls(quoted, unit, scope)
  end

  defp bound(unit, bound_fun) do
    if MapSet.size(unit.funs) == 0, do: unit, else: %{unit | bound: bound_fun.()}
  end

  # Only the top level sees the session's variables.
  defp calls({:defmodule, meta, [name, [{:do, body}]]}, unit, scope) do
    unit = bound(%{unit | vars: %{}}, fn -> bound_in(body, unit.tag, MapSet.new()) end)
    {body, scope} = calls(body, unit, scope)
    {{:defmodule, meta, [name, [do: body]]}, scope}
  end

  defp calls({kind, meta, [head | rest]}, unit, scope) when kind in @definitions do
    unit =
      bound(unit, fn ->
        params = head |> def_params() |> vars_in(unit.tag, MapSet.new())
        bound_in(rest, unit.tag, params)
      end)

    {head, scope} = def_head(head, unit, scope)
    {rest, scope} = calls(rest, unit, scope)
    {{kind, meta, [head | rest]}, scope}
  end

  defp calls({:@, meta, [{{tag, name}, ameta, context}]}, %{tag: tag}, scope)
       when is_atom(context) do
    {:ok, atom, scope} = ok!(Scope.atom(scope, name), meta)
    {{:@, meta, [{atom, ameta, context}]}, scope}
  end

  defp calls({:@, meta, [{kind, ameta, [spec]}]}, unit, scope) when kind in @typespecs do
    {spec, scope} = type_names(spec, unit.tag, scope)
    {{:@, meta, [{kind, ameta, [spec]}]}, scope}
  end

  defp calls(
         {:&, meta, [{:/, smeta, [{{tag, name}, nmeta, context}, arity]}]},
         %{tag: tag},
         scope
       )
       when is_atom(context) and is_integer(arity) do
    {:ok, atom, scope} = ok!(Scope.atom(scope, name), meta)
    {{:&, meta, [{:/, smeta, [{atom, nmeta, context}, arity]}]}, scope}
  end

  defp calls({:&, _, [{:/, _, [{name, _, context}, arity]}]} = node, _unit, scope)
       when is_atom(name) and is_atom(context) and is_integer(arity),
       do: {node, scope}

  # A session variable whose name became an atom later (a function or an
  # atom literal of that name) still lives under its pool name.
  defp calls({name, meta, context} = node, %{vars: vars} = unit, scope)
       when is_atom(name) and is_atom(context) and vars != %{} do
    text = Atom.to_string(name)
    if is_map_key(vars, text), do: {{{unit.tag, text}, meta, context}, scope}, else: {node, scope}
  end

  defp calls({{tag, name}, meta, context} = node, %{tag: tag} = unit, scope)
       when is_atom(context) do
    if MapSet.member?(unit.funs, name) and not MapSet.member?(unit.bound, name) do
      {:ok, atom, scope} = ok!(Scope.atom(scope, name), meta)
      {{atom, meta, context}, scope}
    else
      {node, scope}
    end
  end

  defp calls(node, unit, scope), do: descend(node, scope, &calls(&1, unit, &2))

  defp def_head({:when, meta, [call, guard]}, unit, scope) do
    {call, scope} = def_head(call, unit, scope)
    {guard, scope} = calls(guard, unit, scope)
    {{:when, meta, [call, guard]}, scope}
  end

  defp def_head({{tag, name}, meta, params}, %{tag: tag} = unit, scope) do
    {:ok, atom, scope} = ok!(Scope.atom(scope, name), meta)
    def_head({atom, meta, params}, unit, scope)
  end

  defp def_head({name, meta, params}, unit, scope) when is_atom(name) and is_list(params) do
    {params, scope} = calls(params, unit, scope)
    {{name, meta, params}, scope}
  end

  defp def_head(head, unit, scope), do: calls(head, unit, scope)

  defp def_params({:when, _, [call, _guard]}), do: def_params(call)
  defp def_params({_name, _, params}) when is_list(params), do: params
  defp def_params(_head), do: []

  # The names of the functions and macros the fragment defines, in any of
  # its modules: a call of one without parentheses may name an import.
  defp defined_functions({kind, _, [head | _]}, tag, acc) when kind in @definitions do
    case def_name(head) do
      {^tag, name} -> MapSet.put(acc, name)
      _other -> acc
    end
  end

  defp defined_functions({left, _, right}, tag, acc),
    do: defined_functions(right, tag, defined_functions(left, tag, acc))

  defp defined_functions({left, right}, tag, acc),
    do: defined_functions(right, tag, defined_functions(left, tag, acc))

  defp defined_functions(list, tag, acc) when is_list(list),
    do: Enum.reduce(list, acc, &defined_functions(&1, tag, &2))

  defp defined_functions(_leaf, _tag, acc), do: acc

  defp def_name({:when, _, [call, _guard]}), do: def_name(call)
  defp def_name({name, _, _}), do: name
  defp def_name(_head), do: nil

  # The names a unit binds: the variables in its patterns (the left of
  # `=`, `<-` and `->`), not looking into the modules and functions it
  # contains, which are units of their own.
  defp bound_in({kind, _, _}, _tag, acc) when kind in [:defmodule | @definitions], do: acc

  defp bound_in({op, _, [left, right]}, tag, acc) when op in [:=, :<-, :->] do
    acc = vars_in(left, tag, acc)
    bound_in(right, tag, bound_in(left, tag, acc))
  end

  defp bound_in({left, _, right}, tag, acc), do: bound_in(right, tag, bound_in(left, tag, acc))
  defp bound_in({left, right}, tag, acc), do: bound_in(right, tag, bound_in(left, tag, acc))

  defp bound_in(list, tag, acc) when is_list(list),
    do: Enum.reduce(list, acc, &bound_in(&1, tag, &2))

  defp bound_in(_leaf, _tag, acc), do: acc

  # A default argument is code, not a pattern.
  defp vars_in({:\\, _, [pattern, _default]}, tag, acc), do: vars_in(pattern, tag, acc)

  defp vars_in({{tag, name}, _, context}, tag, acc) when is_atom(context),
    do: MapSet.put(acc, name)

  defp vars_in({left, _, right}, tag, acc), do: vars_in(right, tag, vars_in(left, tag, acc))
  defp vars_in({left, right}, tag, acc), do: vars_in(right, tag, vars_in(left, tag, acc))

  defp vars_in(list, tag, acc) when is_list(list),
    do: Enum.reduce(list, acc, &vars_in(&1, tag, &2))

  defp vars_in(_leaf, _tag, acc), do: acc

  # In a typespec every name is a type, a type variable or the function it
  # specifies, all of them atoms the compiler compares by name.
  defp type_names({{tag, name}, meta, context}, tag, scope) when is_atom(context) do
    {:ok, atom, scope} = ok!(Scope.atom(scope, name), meta)
    {{atom, meta, context}, scope}
  end

  defp type_names(node, tag, scope), do: descend(node, scope, &type_names(&1, tag, &2))

  # The children of a node no clause above is about, each through `visit`
  # with the accumulator: the shared step of the passes that look for
  # particular nodes anywhere in a tree.
  defp descend({left, meta, right}, acc, visit) do
    {left, acc} = visit.(left, acc)
    {right, acc} = visit.(right, acc)
    {{left, meta, right}, acc}
  end

  defp descend({left, right}, acc, visit) do
    {left, acc} = visit.(left, acc)
    {right, acc} = visit.(right, acc)
    {{left, right}, acc}
  end

  defp descend(list, acc, visit) when is_list(list), do: Enum.map_reduce(list, acc, visit)
  defp descend(leaf, acc, _visit), do: {leaf, acc}

  # -- pass 3: names

  # A prewalk in the order of `Macro.prewalk/3`, whose order numbers the
  # pool atoms: each node is renamed, its uses counted, then its children
  # walked (an atom call's name and any meta are not).
  defp rename(node, {scope, uses, over}, tag) do
    {node, scope} = name(node, scope, tag)
    {uses, over} = count_use(node, uses, over)
    rename_children(node, {scope, uses, over}, tag)
  end

  defp rename_children({form, meta, args}, acc, tag) when is_atom(form) do
    {args, acc} = rename_args(args, acc, tag)
    {{form, meta, args}, acc}
  end

  defp rename_children({form, meta, args}, acc, tag) do
    {form, acc} = rename(form, acc, tag)
    {args, acc} = rename_args(args, acc, tag)
    {{form, meta, args}, acc}
  end

  defp rename_children({left, right}, acc, tag) do
    {left, acc} = rename(left, acc, tag)
    {right, acc} = rename(right, acc, tag)
    {{left, right}, acc}
  end

  defp rename_children(list, acc, tag) when is_list(list), do: rename_args(list, acc, tag)
  defp rename_children(leaf, acc, _tag), do: {leaf, acc}

  defp rename_args(context, acc, _tag) when is_atom(context), do: {context, acc}

  defp rename_args(args, acc, tag) when is_list(args),
    do: :lists.mapfoldl(&rename(&1, &2, tag), acc, args)

  defp name({:__aliases__, meta, segments} = node, scope, tag) do
    # Without session modules an alias of atoms stays as written, which is
    # what the lookup below finds, after building the name.
    if scope.modules == %{} and is_list(segments) and Enum.all?(segments, &is_atom/1),
      do: {node, scope},
      else: alias_name(node, meta, segments, scope, tag)
  end

  defp name({{tag, name}, meta, context}, scope, tag) when is_atom(context) do
    {:ok, atom, scope} = ok!(Scope.var(scope, name), meta)
    {{atom, meta, context}, scope}
  end

  defp name({var, meta, context} = node, scope, _tag) when is_atom(var) and is_atom(context) do
    if Scope.pool_name?(Atom.to_string(var)),
      do: throw({:names, "the variable name #{var} is reserved for the sandbox", meta}),
      else: {node, scope}
  end

  defp name({tag, name}, scope, tag) do
    {:ok, atom, scope} = ok!(Scope.atom(scope, name), [])
    {atom, scope}
  end

  defp name(node, scope, _tag), do: {node, scope}

  defp alias_name(node, meta, segments, scope, tag) do
    case segment_names(segments, tag) do
      {:ok, name} ->
        case session_module(scope, name) do
          {:ok, module, []} ->
            {module, scope}

          {:ok, module, rest} ->
            {:ok, atom, scope} =
              ok!(Scope.atom(scope, Enum.join([module_name(module) | rest], ".")), meta)

            {atom, scope}

          :error when is_list(segments) ->
            if Enum.all?(segments, &is_atom/1) do
              {node, scope}
            else
              # A module the node may know though its short name is no
              # atom yet (`Node`), or a new name, out of the budget.
              {:ok, atom, scope} = ok!(Scope.atom(scope, "Elixir." <> name), meta)
              {atom, scope}
            end
        end

      :error ->
        {node, scope}
    end
  end

  defp module_name({:pending, name}), do: name
  defp module_name(module), do: Atom.to_string(module)

  defp ok!({:error, message}, meta), do: throw({:names, message, meta})
  defp ok!(ok, _meta), do: ok
end
