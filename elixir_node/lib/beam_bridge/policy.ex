defmodule BeamBridge.Policy do
  @moduledoc """
  The sandbox policy for fragments: atom-safe parsing, the allowlist check,
  and the session-scoped modules it lets a fragment define.

  The evaluation process of each fragment runs, in order:

      {:ok, quoted, scope} = Policy.parse(code, line, scope)
      {:ok, quoted, scope, effects} = Policy.check(quoted, env, scope)
      Code.eval_quoted_with_env(quoted, binding, env)

  Both steps run inside the evaluation, under its limits: expanding a user
  macro runs its code. Either step may answer `{:error, %{kind:, message:,
  line:}}` instead, with kind `"denied"` for the policy (or `"SyntaxError"`
  from the parser); nothing of the fragment has run then.

  Some checks can only happen at run time (a call whose module is a value,
  the size of an allocation); the check rewrites those calls into
  `BeamBridge.Policy.Guard`, which raises `BeamBridge.Policy.DeniedError`
  or `BeamBridge.Policy.LimitError`. `error_kind/1` names their kinds.

  `SECURITY.md` at the repository root describes the layers and limits.
  """

  alias BeamBridge.Policy.{Bound, Check, DeniedError, LimitError, Names, Scope}

  @type error :: %{kind: binary, message: binary, line: integer | nil}

  @doc """
  Parses a fragment's `code` (starting at `line` of its block) without
  growing the atom table with its text: unknown variable names take pool
  atoms, other new names come out of the session's atom budget, and the
  names of modules the fragment defines are moved into the session's
  namespace.
  """
  @spec parse(binary, pos_integer, Scope.t()) :: {:ok, Macro.t(), Scope.t()} | {:error, error}
  defdelegate parse(code, line, scope), to: Names

  @doc """
  Checks a parsed fragment against the allowlist, expanding macros in
  `env`. Returns the tree to evaluate (with guarded calls where needed) and
  whether the fragment has effects beyond its output: `:effects` when it
  defines a module, `:pure` otherwise.
  """
  @spec check(Macro.t(), Macro.Env.t(), Scope.t()) ::
          {:ok, Macro.t(), Scope.t(), :pure | :effects} | {:error, error}
  defdelegate check(quoted, env, scope), to: Check, as: :run

  @doc """
  Parses and checks one fragment: `parse/3` then `check/3`, with
  `transform` applied to the parsed tree in between (the evaluator adds
  step tracing there). The scope comes
  back in both cases and must be kept even when the fragment is denied or
  fails later: it counts the atoms the fragment made and the modules it
  may have defined.
  """
  @spec prepare(binary, pos_integer, Macro.Env.t(), Scope.t(), (Macro.t() -> Macro.t())) ::
          {:ok, Macro.t(), Scope.t(), :pure | :effects} | {:error, error, Scope.t()}
  def prepare(code, line, env, scope, transform \\ & &1) do
    case parse(code, line, scope) do
      {:ok, quoted, scope} ->
        case check(transform.(quoted), env, scope) do
          {:ok, quoted, scope, effects} -> {:ok, quoted, scope, effects}
          {:error, error} -> {:error, error, scope}
        end

      {:error, error} ->
        {:error, error, scope}
    end
  end

  @doc "Modules the session defined, newest first."
  @spec modules(Scope.t()) :: [module]
  def modules(%Scope{defined: defined}), do: defined

  @doc """
  Every loaded module in the session's namespace, including any defined by
  a fragment that was killed before its scope came back.
  """
  @spec loaded_modules(Scope.t()) :: [module]
  def loaded_modules(%Scope{namespace: namespace}) do
    prefix = String.to_charlist(namespace <> ".")

    for {name, _} <- :code.all_loaded(),
        List.starts_with?(Atom.to_charlist(name), prefix),
        do: name
  end

  @doc """
  Unloads `modules`. Processes still running their code are killed, which
  can only be evaluations of the session that defined them.
  """
  @spec purge([module]) :: :ok
  def purge(modules) do
    Enum.each(modules, fn module ->
      :code.purge(module)
      :code.delete(module)
      :code.purge(module)
    end)
  end

  @doc """
  The result kind for an exception raised by a guard: `"denied"`,
  `"memory"`, or nil for any other exception.
  """
  @spec error_kind(Exception.t()) :: binary | nil
  def error_kind(%DeniedError{}), do: "denied"
  def error_kind(%LimitError{}), do: "memory"
  def error_kind(_exception), do: nil

  @doc """
  Rewrites text shown to the client (a message, an inspected value) in the
  session's own names: pool variables back to the names the code used,
  module names without the session's namespace, and module versions (a
  redefinition, one a fork inherited) as the name their `defmodule` gave.
  """
  @spec humanize(binary, Scope.t()) :: binary
  def humanize(text, %Scope{} = scope) do
    text = String.replace(text, String.replace_prefix(scope.namespace, "Elixir.", "") <> ".", "")

    text =
      if scope.var_names == %{} or not String.contains?(text, "bb_v") do
        text
      else
        Regex.replace(~r/\b_?bb_v\d+\b/, text, fn pool ->
          Map.get(scope.var_names, String.to_existing_atom(pool), pool)
        end)
      end

    Scope.humanize_versions(text, scope)
  end

  @doc """
  Whether `term` can be copied to another process (sent, returned as a
  context) without flattening into more than `max_nodes` nodes. A term
  that shares structure is small on the heap and huge when copied.
  """
  @spec copyable?(term, non_neg_integer) :: boolean
  defdelegate copyable?(term, max_nodes), to: Bound, as: :within?

  @doc "`term` cut after `budget` nodes, for inspecting a value of any shape."
  @spec shown(term, non_neg_integer) :: term
  defdelegate shown(term, budget), to: Bound, as: :prune
end
