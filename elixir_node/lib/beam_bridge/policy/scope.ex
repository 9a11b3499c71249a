defmodule BeamBridge.Policy.Scope do
  @moduledoc """
  What the policy remembers about one session between fragments: how its
  unknown variable names map onto the node's pool of variable atoms, the
  modules it defined (and the names it uses for them), and how many new
  atoms it has made.

  A scope is plain data. It travels with the session's context, so a rewind
  or a fork takes the scope of the fragment it returns to.

  ## Atoms

  The node creates a fixed pool of variable atoms once (`setup/0`):
  `bb_v0 … bb_vN` and `_bb_v0 … _bb_vN`, N = #{1024 - 1}. A session maps
  each variable name that is not an atom yet onto the next free pool atom,
  so variables never grow the atom table. Any other name that is not an
  atom yet (an atom literal, a function or module name) becomes a real atom
  only within a budget: #{256} per session and #{20_000} per node, counted
  from the atom table's size when the pool was made.
  """

  @pool_size 1024
  @session_atoms 256
  @node_atoms 20_000
  @max_modules 64

  @enforce_keys [:session, :namespace]
  defstruct [
    :session,
    :namespace,
    vars: %{},
    var_names: %{},
    next_var: 0,
    modules: %{},
    defined: [],
    atoms: 0,
    dry: false
  ]

  @typedoc """
    * `:namespace` - the prefix of the session's modules, `"Elixir.BeamBridge.User.S<n>"`
    * `:vars` - unknown variable name => pool atom; `:var_names` the reverse
    * `:modules` - a name the session's code uses ("Foo", "Foo.Bar") => module
    * `:defined` - modules the session defined, newest first
    * `:atoms` - new atoms this session made
  """
  @type t :: %__MODULE__{
          session: binary,
          namespace: binary,
          vars: %{binary => atom},
          var_names: %{atom => binary},
          next_var: non_neg_integer,
          modules: %{binary => module},
          defined: [module],
          atoms: non_neg_integer,
          dry: boolean
        }

  @baseline {__MODULE__, :baseline}

  @doc "A fresh scope for session `session_id`."
  @spec new(binary) :: t
  def new(session_id) when is_binary(session_id) do
    setup()
    n = System.unique_integer([:positive])
    %__MODULE__{session: session_id, namespace: "Elixir.BeamBridge.User.S#{n}"}
  end

  @doc """
  A scope for a fork of `parent`: the same variable names and module names
  (the parent's modules stay callable while the parent lives), counted
  afresh.
  """
  @spec fork(t, binary) :: t
  def fork(%__MODULE__{} = parent, session_id) do
    %{new(session_id) | vars: parent.vars, var_names: parent.var_names}
    |> Map.merge(%{next_var: parent.next_var, modules: parent.modules})
  end

  @doc """
  Creates the node's variable pool and records the atom table's size, once
  per node. Cheap after the first call; `new/1` calls it.
  """
  @spec setup() :: :ok
  def setup do
    case :persistent_term.get(@baseline, nil) do
      nil ->
        for i <- 0..(@pool_size - 1), prefix <- ["bb_v", "_bb_v"] do
          _ = String.to_atom(prefix <> Integer.to_string(i))
        end

        :persistent_term.put(@baseline, :erlang.system_info(:atom_count))

      _done ->
        :ok
    end

    :ok
  end

  @doc "Limits: pool size, atoms per session and per node, modules per session."
  @spec limits() :: map
  def limits,
    do: %{
      pool_size: @pool_size,
      session_atoms: @session_atoms,
      node_atoms: @node_atoms,
      max_modules: @max_modules
    }

  @doc "Whether `name` (a binary) has the shape of a pool atom."
  @spec pool_name?(binary) :: boolean
  def pool_name?("_bb_v" <> digits), do: digits?(digits)
  def pool_name?("bb_v" <> digits), do: digits?(digits)
  def pool_name?(_name), do: false

  defp digits?(""), do: false
  defp digits?(text), do: text |> String.to_charlist() |> Enum.all?(&(&1 in ?0..?9))

  @doc "The pool atom for variable `name`, allocating one if needed."
  @spec var(t, binary) :: {:ok, atom, t} | {:error, binary}
  def var(scope, name) do
    case scope.vars do
      %{^name => atom} ->
        {:ok, atom, scope}

      _new when scope.next_var >= @pool_size ->
        {:error,
         "too many new variable names in this session (#{@pool_size}); " <>
           "reuse names or open a new session"}

      _new ->
        prefix = if String.starts_with?(name, "_"), do: "_bb_v", else: "bb_v"
        atom = :erlang.binary_to_existing_atom(prefix <> Integer.to_string(scope.next_var))

        scope = %{
          scope
          | vars: Map.put(scope.vars, name, atom),
            var_names: Map.put(scope.var_names, atom, name),
            next_var: scope.next_var + 1
        }

        {:ok, atom, scope}
    end
  end

  @doc """
  The atom for `name`: the existing one, or a new one counted against the
  session's and the node's budgets.
  """
  @spec atom(t, binary) :: {:ok, atom, t} | {:error, binary}
  def atom(scope, name) do
    {:ok, :erlang.binary_to_existing_atom(name), scope}
  catch
    :error, :badarg -> new_atom(scope, name)
  end

  defp new_atom(scope, name) do
    grown = :erlang.system_info(:atom_count) - :persistent_term.get(@baseline)

    cond do
      scope.atoms >= @session_atoms ->
        {:error,
         "atom budget exhausted: this session already made #{@session_atoms} new atoms " <>
           "(#{inspect(name)} would be one more); atoms are never freed"}

      grown >= @node_atoms ->
        {:error,
         "atom budget exhausted: the node already made #{@node_atoms} new atoms " <>
           "(#{inspect(name)} would be one more); atoms are never freed"}

      byte_size(name) > 255 ->
        {:error, "name too long for an atom: #{String.slice(name, 0, 40)}…"}

      # A dry run counts what the fragment needs before anything is made,
      # so a fragment over the budget makes no atom at all.
      scope.dry ->
        {:ok, {:pending, name}, %{scope | atoms: scope.atoms + 1}}

      true ->
        {:ok, String.to_atom(name), %{scope | atoms: scope.atoms + 1}}
    end
  end

  @doc """
  The module for the session-visible name `name` (say "Foo.Bar"), defined
  under the session's namespace and registered, counted against the
  module limit.
  """
  @spec define(t, binary) :: {:ok, module, t} | {:error, binary}
  def define(scope, name) do
    case scope.modules do
      %{^name => module} ->
        {:ok, module, scope}

      _new when length(scope.defined) >= @max_modules ->
        {:error, "too many modules in this session (#{@max_modules})"}

      _new ->
        with {:ok, module, scope} <- atom(scope, scope.namespace <> "." <> name) do
          scope = %{
            scope
            | modules: Map.put(scope.modules, name, module),
              defined: [module | scope.defined]
          }

          {:ok, module, scope}
        end
    end
  end

  @doc "Makes `name` a further name of the session's module `module` (an `alias`)."
  @spec alias_module(t, binary, module) :: t
  def alias_module(scope, name, module),
    do: %{scope | modules: Map.put(scope.modules, name, module)}

  @doc "Whether `module` belongs to this session (or, for a fork, to its parents)."
  @spec own?(t, atom) :: boolean
  def own?(scope, module) do
    text = Atom.to_string(module)
    String.starts_with?(text, scope.namespace <> ".") or module in Map.values(scope.modules)
  end
end
