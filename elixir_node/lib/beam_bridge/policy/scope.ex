defmodule BeamBridge.Policy.Scope do
  @moduledoc """
  What the policy remembers about one session between fragments: how its
  unknown variable names map onto the node's pool of variable atoms, the
  modules it defined (and the names it uses for them), and how many new
  atoms it has made.

  A scope is plain data. It travels with the session's context, so a rewind
  or a fork takes the scope of the fragment it returns to.

  ## Modules

  Every fragment that defines `Foo` makes a module of its own, a version,
  and the scope maps the name `Foo` to the newest one. A version is never
  changed after it is loaded, so the contexts saved in the history keep
  the versions they knew: a rewind finds `Foo` as it was, and a fork shares
  its parent's versions while its own `defmodule Foo` makes one in the
  fork's namespace. Which versions stay loaded is the session's business
  (`BeamBridge.Session.Modules`); `reachable/1` says what a scope needs.

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
    names: %{},
    defined: [],
    atoms: 0,
    dry: false
  ]

  @typedoc """
    * `:namespace` - the prefix of the session's modules, `"Elixir.BeamBridge.User.S<n>"`
    * `:vars` - unknown variable name => pool atom; `:var_names` the reverse
    * `:modules` - a name the session's code uses ("Foo", "Foo.Bar") => module
    * `:names` - every module version the scope can reach => the name its
      `defmodule` gave it
    * `:defined` - the versions this session made along the scope's past
      (not those a fork inherited), newest first
    * `:atoms` - new atoms this session made
  """
  @type t :: %__MODULE__{
          session: binary,
          namespace: binary,
          vars: %{binary => atom},
          var_names: %{atom => binary},
          next_var: non_neg_integer,
          modules: %{binary => module},
          names: %{module => binary},
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
  A scope for a fork of `parent`: the same variable names and module names,
  reaching the parent's module versions, with atoms and definitions counted
  afresh.
  """
  @spec fork(t, binary) :: t
  def fork(%__MODULE__{} = parent, session_id) do
    %{
      new(session_id)
      | vars: parent.vars,
        var_names: parent.var_names,
        next_var: parent.next_var,
        modules: parent.modules,
        names: parent.names
    }
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
  A new module version for a `defmodule` of the session-visible name
  `name` (say "Foo.Bar"), registered under that name and counted against
  the module limit.

  The first version is `<namespace>.Foo.Bar`, later ones
  `<namespace>.V<k>.Foo.Bar`: the first of these names that no loaded
  module has, so a version that was unloaded lends its atom to the next.
  A second `defmodule` of `name` in the same fragment gets the version
  the first one made, which is not loaded yet, as in a plain compile.
  """
  @spec define(t, binary) :: {:ok, module, t} | {:error, binary}
  def define(scope, name) do
    module = scope.modules[name]

    if module != nil and made_now?(scope, module, name),
      do: {:ok, module, scope},
      else: new_version(scope, name)
  end

  defp new_version(scope, _name) when length(scope.defined) >= @max_modules do
    {:error,
     "too many module definitions in this session (#{@max_modules}, each redefinition " <>
       "counting as one more); rewind past some or open a new session"}
  end

  defp new_version(scope, name) do
    with {:ok, module, scope} <- free_version(scope, name, 1) do
      scope = %{
        scope
        | modules: Map.put(scope.modules, name, module),
          names: Map.put(scope.names, module, name),
          defined: [module | scope.defined]
      }

      {:ok, module, scope}
    end
  end

  # Parsing comes before any of the fragment runs, so a version of this
  # session that is not loaded yet was made by the fragment being parsed
  # (a dry run's versions are still pending atoms).
  defp made_now?(scope, module, name) do
    scope.names[module] == name and
      case module do
        {:pending, _text} -> true
        module -> in_namespace?(scope, module) and not :erlang.module_loaded(module)
      end
  end

  defp free_version(scope, name, k) do
    text =
      if k == 1,
        do: scope.namespace <> "." <> name,
        else: scope.namespace <> ".V" <> Integer.to_string(k) <> "." <> name

    case existing_atom(text) do
      nil ->
        atom(scope, text)

      module ->
        if :erlang.module_loaded(module),
          do: free_version(scope, name, k + 1),
          else: {:ok, module, scope}
    end
  end

  defp existing_atom(text) do
    :erlang.binary_to_existing_atom(text)
  catch
    :error, :badarg -> nil
  end

  defp in_namespace?(scope, module),
    do: String.starts_with?(Atom.to_string(module), scope.namespace <> ".")

  @doc """
  Every module version `scope` can reach, by a name or by a value made
  while a name led to it: what must stay loaded while a context holding
  the scope lives.
  """
  @spec reachable(t) :: [module]
  def reachable(%__MODULE__{names: names}),
    do: for({module, _} <- names, is_atom(module), do: module)

  @doc """
  The scope a failed fragment leaves: `failed` (the fragment's atoms and
  variable names stay counted) with the module names of `before`, and the
  versions the fragment made, which nothing can reach now.
  """
  @spec rollback_modules(t, t) :: {t, [module]}
  def rollback_modules(failed, before) do
    made = for module <- failed.defined -- before.defined, is_atom(module), do: module
    {%{failed | modules: before.modules, names: before.names, defined: before.defined}, made}
  end

  @doc """
  Rewrites, in `text` that `BeamBridge.Policy.humanize/2` has already
  handled, the versions `scope` reaches to the names their `defmodule`
  gave them: `V2.Foo` (a redefinition) and the full name of a version a
  fork inherited become `Foo`. Only whole names are rewritten, so a text
  the session's code made that merely looks like one is left alone unless
  it spells a real version.
  """
  @spec humanize_versions(binary, t) :: binary
  def humanize_versions(text, %__MODULE__{} = scope) do
    shown = shown_versions(scope)

    if shown != %{} and String.contains?(text, Map.keys(shown)) do
      alternatives =
        shown
        |> Map.keys()
        |> Enum.sort_by(&(-byte_size(&1)))
        |> Enum.map_join("|", &Regex.escape/1)

      regex = Regex.compile!("(?:(?<![\\w.])|(?<=\\bElixir\\.))(?:#{alternatives})(?!\\w)")
      Regex.replace(regex, text, &Map.fetch!(shown, &1))
    else
      text
    end
  end

  # How each version reads before the rewrite => the name to show. The
  # first version of a name in the session's own namespace already reads
  # right once the namespace is taken off.
  defp shown_versions(scope) do
    own = String.replace_prefix(scope.namespace, "Elixir.", "") <> "."

    scope.names
    |> Enum.flat_map(fn
      {module, name} when is_atom(module) ->
        full = String.replace_prefix(Atom.to_string(module), "Elixir.", "")

        cond do
          full == own <> name ->
            []

          String.starts_with?(full, own) ->
            [{full, name}, {String.replace_prefix(full, own, ""), name}]

          true ->
            [{full, name}]
        end

      _pending ->
        []
    end)
    |> Map.new()
  end

  @doc "Makes `name` a further name of the session's module `module` (an `alias`)."
  @spec alias_module(t, binary, module) :: t
  def alias_module(scope, name, module),
    do: %{scope | modules: Map.put(scope.modules, name, module)}

  @doc """
  Whether `module` is one of the session's: in its namespace, or a version
  the scope reaches (for a fork, those it inherited).
  """
  @spec own?(t, atom) :: boolean
  def own?(scope, module) do
    is_map_key(scope.names, module) or
      String.starts_with?(Atom.to_string(module), scope.namespace <> ".")
  end

  @doc """
  The versions `scope` reaches outside its own namespace: those a fork
  inherited, in a fixed order. A fork adds versions only to its own
  namespace, so the list stays the same for the fork's life.
  """
  @spec inherited(t) :: [module]
  def inherited(%__MODULE__{names: names}) when names == %{}, do: []

  def inherited(%__MODULE__{names: names, namespace: namespace}) do
    own = namespace <> "."

    for {module, _} <- names,
        is_atom(module),
        not String.starts_with?(Atom.to_string(module), own) do
      module
    end
    |> Enum.sort()
  end
end
