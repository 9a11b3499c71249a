defmodule BeamBridge.Speculation do
  @moduledoc """
  Decides which fragments may run before they are committed.

  A complete expression waits in the splitter until the next line shows
  whether it goes on (`|>` …) or not. Running it during that wait hides the
  wait from the result's latency, but only if a run that turns out to be
  wrong cannot be observed: it is killed and forgotten, its output never
  sent. So only fragments whose sole effect is output qualify.

  What has effects is the sandbox policy's call: `BeamBridge.Policy.check/3`
  flags a fragment `:effects` or `:pure`, and a speculative evaluation whose
  fragment it flags `:effects` stops before running anything
  (`runs_early?/1`, asked by the evaluator). That flag answers a different
  question, though — may this code run at all — and passes code whose early
  run could be seen: sending a message, sleeping (a run that is dropped
  still held the session up), calling a function value that may do
  anything, and expanding a session's own macros, whose code runs during
  the check. So the session first applies the stricter rule below
  (`pure?/2`), and only then starts the run; it is the only place that rule
  lives:

    * a small allowlist of pure modules and Kernel functions, literals,
      variables, pattern matches, anonymous functions and comprehensions;
    * no call of a function value, and no name of a binding holding a
      function, which the fragment could call;
    * no name that is not an atom yet, except a new variable, so that a
      run that is dropped made no atom the session did not count.

  The rule is syntactic and conservative, and runs in the session before
  any evaluation starts: anything it does not know makes the fragment wait
  for its commit as usual.
  """

  alias BeamBridge.Policy.Scope

  @pure_modules [
    Enum,
    List,
    Map,
    MapSet,
    Keyword,
    Tuple,
    String,
    Integer,
    Float,
    Range,
    Stream,
    Bitwise,
    Access
  ]
  # Pure modules' functions that make atoms, which are never collected.
  @atom_makers [:to_atom, :to_existing_atom]
  # How much of a binding is searched for functions before giving up.
  @search_budget 10_000
  @pure_erlang [:math, :lists, :maps]
  @output_calls [puts: 1, puts: 2, inspect: 1, inspect: 2, write: 1, write: 2]

  # Kernel functions and special forms with no effect beyond their value.
  @pure_local ~w(+ - * / == != === !== < > <= >= and or not && || ! <> ++ -- .. ..// in
                 = |> -> <- {} %{} % __block__ <<>> :: ^ __aliases__ . & fn if unless case cond
                 with for when div rem abs max min length hd tl elem put_elem map_size
                 tuple_size byte_size bit_size round trunc ceil floor to_string to_charlist
                 inspect is_atom is_binary is_boolean is_float is_function is_integer
                 is_list is_map is_nil is_number is_tuple is_struct match? then tap
                 sigil_w sigil_s sigil_S sigil_c sigil_r sigil_D sigil_T)a

  @doc "The modules whose functions count as pure."
  @spec modules() :: [module]
  def modules, do: [IO | @pure_modules] ++ @pure_erlang

  @doc """
  Whether a speculative evaluation goes on running once the policy has
  checked its fragment: only when the policy found no effects.
  """
  @spec runs_early?(:pure | :effects) :: boolean
  def runs_early?(effects), do: effects == :pure

  @doc """
  Whether `code` (a complete expression) may start before it is committed,
  in a context with `binding`. Parsing here creates no atoms: a name the VM
  does not know yet disqualifies the fragment.
  """
  @spec pure?(binary, Code.binding()) :: boolean
  def pure?(code, binding) do
    opts = [static_atoms_encoder: &existing_atom/2, emit_warnings: false]

    case Code.string_to_quoted(code, opts) do
      {:ok, quoted} ->
        {_, pure} = Macro.prewalk(quoted, true, &{renamed(&1), &2 and node_pure?(&1, binding)})
        pure

      {:error, _} ->
        false
    end
  end

  # A variable with a new name is judged whole; its marker must not be met
  # again below it, where it would read as an atom literal.
  defp renamed({{:unknown_name, _}, meta, context}) when is_atom(context),
    do: {:new_variable, meta, context}

  defp renamed(node), do: node

  defp existing_atom(name, _meta) do
    {:ok, :erlang.binary_to_existing_atom(name, :utf8)}
  catch
    :error, :badarg -> {:ok, {:unknown_name, name}}
  end

  # Remote calls: `Mod.fun(...)` with a literal alias or Erlang module.
  defp node_pure?({{:., _, [{:__aliases__, _, parts}, fun]}, _, _args}, _binding) do
    module = if Enum.all?(parts, &is_atom/1), do: Module.concat(parts)
    remote_pure?(module, fun)
  end

  # `Kernel.to_string/1` and friends, as string interpolation expands to.
  defp node_pure?({{:., _, [Kernel, fun]}, _, _args}, _binding), do: fun in @pure_local

  # A module as an atom: Erlang's, or an Elixir one a macro expanded to
  # (`map[key]` is `Access.get/2`).
  defp node_pure?({{:., _, [module, fun]}, _, _args}, _binding) when is_atom(module),
    do: module in @pure_erlang or remote_pure?(module, fun)

  # `f.(x)`: a call of a function value.
  defp node_pure?({{:., _, [_fun]}, _, _args}, _binding), do: false
  defp node_pure?({:., _, _}, _binding), do: true
  defp node_pure?({:__aliases__, _, parts}, _binding), do: Enum.all?(parts, &is_atom/1)

  # A variable: pure unless it holds a function, which the fragment could call.
  defp node_pure?({name, _, context}, binding) when is_atom(name) and is_atom(context) do
    search_functions(Keyword.get(binding, name), @search_budget) > 0
  end

  defp node_pure?({name, _, args}, _binding) when is_atom(name) and is_list(args),
    do: name in @pure_local

  # A variable whose name is no atom yet: the session holds it under a pool
  # name (`BeamBridge.Policy.Scope`), which this check cannot see, so it is
  # pure only when no pooled binding holds a function.
  defp node_pure?({{:unknown_name, _}, _, context}, binding) when is_atom(context) do
    not Enum.any?(binding, fn {name, value} ->
      Scope.pool_name?(Atom.to_string(name)) and search_functions(value, @search_budget) == 0
    end)
  end

  defp node_pure?({_, _, _}, _binding), do: false
  defp node_pure?({:unknown_name, _}, _binding), do: false
  defp node_pure?(_literal_or_list, _binding), do: true

  defp remote_pure?(IO, fun), do: Keyword.has_key?(@output_calls, fun)

  defp remote_pure?(module, fun) when is_atom(fun),
    do: module in @pure_modules and fun not in @atom_makers

  defp remote_pure?(_module, _fun), do: false

  # Searches `value` for functions; returns the budget left, or 0 when it
  # found one or ran out (both mean "may hold a function").
  defp search_functions(_value, budget) when budget <= 0, do: 0
  defp search_functions(value, _budget) when is_function(value), do: 0

  defp search_functions([head | tail], budget),
    do: search_functions(tail, search_functions(head, budget - 1))

  defp search_functions(value, budget) when is_tuple(value),
    do: search_functions(Tuple.to_list(value), budget - 1)

  defp search_functions(value, budget) when is_map(value),
    do: value |> Map.to_list() |> search_functions(budget - 1)

  defp search_functions(_value, budget), do: budget - 1
end
