defmodule BeamBridge.Policy.Names do
  @moduledoc """
  Parses a fragment without growing the atom table with its text, and gives
  every name in the tree an atom the policy allows (see
  `BeamBridge.Policy.Scope` for the pool and the budget).

  The parser hands each identifier, alias segment, keyword key and atom
  literal to `:static_atoms_encoder`; names that are atoms already stay
  atoms, the others come back as `{tag, name}` with a reference no source
  text can spell. Two passes then replace the markers:

    1. modules: every `defmodule` name gets its module under the session's
       namespace, and every `alias` of such a module its short name;
    2. names: an alias is rewritten to the session's module it names, a
       variable gets its pool atom, any other marker a budgeted atom.
  """

  alias BeamBridge.Policy.Scope

  @file_name "fragment"
  @max_uses_per_name 32
  # Forms that look like variables but are not bindings.
  @special_vars [:_, :__MODULE__, :__ENV__, :__DIR__, :__CALLER__, :__STACKTRACE__]

  @doc "See `BeamBridge.Policy.parse/3`."
  @spec parse(binary, pos_integer, Scope.t()) :: {:ok, Macro.t(), Scope.t()} | {:error, map}
  def parse(code, line, scope) do
    tag = make_ref()

    with {:ok, quoted} <- quote_text(code, line, tag) do
      dry = names(quoted, tag, %{scope | dry: true})

      if dry.atoms == scope.atoms do
        {:ok, dry.quoted, %{dry.scope | dry: false}}
      else
        real = names(quoted, tag, scope)
        {:ok, real.quoted, real.scope}
      end
    end
  catch
    {:names, message, meta} -> {:error, %{kind: "denied", message: message, line: meta[:line]}}
  end

  defp quote_text(code, line, tag) do
    encoder = fn name, _meta ->
      try do
        {:ok, :erlang.binary_to_existing_atom(name, :utf8)}
      catch
        :error, :badarg -> {:ok, {tag, name}}
      end
    end

    opts = [line: line, file: @file_name, emit_warnings: false, static_atoms_encoder: encoder]

    case Code.string_to_quoted(code, opts) do
      {:ok, quoted} ->
        {:ok, quoted}

      {:error, {meta, message, token}} ->
        {:error,
         %{kind: "SyntaxError", message: syntax_message(message, token), line: meta[:line]}}
    end
  end

  defp names(quoted, tag, scope) do
    scope = modules(quoted, tag, nil, scope)
    {quoted, scope} = Macro.prewalk(quoted, scope, &name(&1, &2, tag))
    count_uses!(quoted)
    %{quoted: quoted, scope: scope, atoms: scope.atoms}
  end

  # Elixir names the Erlang variable of each binding `_<name>@<n>`, an atom,
  # with `n` counting the bindings of that name in one evaluation: a
  # fragment rebinding `x` a million times would make a million atoms.
  # Capping how often one name occurs in a fragment caps `n`, so these
  # atoms are bounded for the node's life by the variable names there can
  # be (the pool, and existing atoms) times @max_uses_per_name.
  defp count_uses!(quoted) do
    {_, uses} =
      Macro.prewalk(quoted, %{}, fn
        {name, meta, nil} = node, uses when is_atom(name) and name not in @special_vars ->
          count = Map.get(uses, name, 0) + 1

          if count > @max_uses_per_name do
            throw(
              {:names,
               "a variable is used more than #{@max_uses_per_name} times in one fragment; " <>
                 "split the fragment", meta}
            )
          end

          {node, Map.put(uses, name, count)}

        node, uses ->
          {node, uses}
      end)

    uses
  end

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

  # -- pass 2: names

  defp name({:__aliases__, meta, segments} = node, scope, tag) do
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

  defp module_name({:pending, name}), do: name
  defp module_name(module), do: Atom.to_string(module)

  defp ok!({:error, message}, meta), do: throw({:names, message, meta})
  defp ok!(ok, _meta), do: ok
end
