defmodule BeamBridge.Application do
  @moduledoc """
  The node's supervision tree: the router of standard error
  (`BeamBridge.StandardError`, first, so that no evaluation writes there
  before it holds the name), a registry and a dynamic supervisor for
  sessions, the record of which sessions reach which module versions
  (`BeamBridge.Session.Modules`), and (unless disabled) the bridge listener
  that gateways connect to.
  """

  use Application

  # Fragments of the shapes models write, evaluated once at start.
  @warm_up [
    "x = 1 + 2 * 3",
    "list = Enum.map(1..10, &(&1 * x)) |> Enum.filter(&(rem(&1, 2) == 0))",
    "for n <- list, n > 2, into: %{}, do: {Integer.to_string(n), n / 2}",
    ~S'"total: #{Enum.sum(list)}" |> String.upcase() |> String.split(" ")',
    "case {list, x} do\n  {[h | _], 7} when h > 0 -> {:ok, h}\n  _ -> :error\nend",
    "with {:ok, n} <- {:ok, 3}, true <- n > 1, do: n, else: (_ -> 0)",
    "try do\n  raise ArgumentError, \"no\"\nrescue\n  e in ArgumentError -> e.message\nend",
    "defmodule BeamBridge.WarmUp.Probe do\n  def twice(n), do: n * 2\nend",
    "BeamBridge.WarmUp.Probe.twice(21)",
    "Map.fetch!(%{}, :missing)"
  ]

  @impl true
  def start(_type, _args) do
    # The logger is up before this application's settings are read, so its
    # device is switched here: stdout for a node run as a service, stderr
    # (the default) when a gateway reads stdout for the ready line alone.
    if device = Application.get_env(:beam_bridge, :log_device) do
      Logger.configure_backend(:console, device: device)
    end

    # The node's own modules name every atom of the bridge protocol: loaded
    # up front, a request that uses one decodes under `[:safe]` even before
    # the code that handles it has run once.
    Enum.each(Application.spec(:beam_bridge, :modules), &Code.ensure_loaded/1)

    # Code is parsed without creating atoms, so a call is only recognised
    # when its names already exist: loading the standard modules user code
    # may call, and naming their alias segments (`:Stream` in `Stream.map`),
    # creates that fixed set of atoms once, up front.
    for module <- BeamBridge.Speculation.modules() do
      Code.ensure_loaded(module)
      if elixir_module?(module), do: Enum.each(Module.split(module), &String.to_atom/1)
    end

    warm_up()
    BeamBridge.Policy.Scope.setup()

    children =
      [
        BeamBridge.StandardError,
        {Registry, keys: :unique, name: BeamBridge.SessionRegistry},
        BeamBridge.Session.Modules,
        {DynamicSupervisor, strategy: :one_for_one, name: BeamBridge.SessionSupervisor},
        {DynamicSupervisor, strategy: :one_for_one, name: BeamBridge.ConnectionSupervisor}
      ] ++ listener_children() ++ stdin_link_children()

    Supervisor.start_link(children, strategy: :one_for_one, name: BeamBridge.Supervisor)
  end

  # With `stdin_link`, the node stops when its standard input closes: the
  # process that started it (an embedded gateway) holds the pipe, so even if
  # that process is killed outright no BEAM is left behind.
  defp stdin_link_children do
    if Application.get_env(:beam_bridge, :stdin_link, false) do
      [Supervisor.child_spec({Task, &watch_stdin/0}, restart: :temporary)]
    else
      []
    end
  end

  defp watch_stdin do
    case IO.read(:stdio, :line) do
      :eof -> System.stop(0)
      {:error, _} -> System.stop(0)
      _line -> watch_stdin()
    end
  end

  # The first evaluations on a node load parts of the compiler and create
  # the atoms those parts name (about a thousand). Doing it here, before the
  # policy takes the atom table's size as its baseline and before the node
  # reports ready, keeps that cost out of the first session's latency and
  # out of any session's atom budget.
  defp warm_up do
    context = BeamBridge.Evaluator.new_context("warm-up", false)

    Enum.reduce(@warm_up, context, fn code, context ->
      case BeamBridge.Evaluator.run(code, 1, context, trace: true) do
        {:ok, _result, context} -> context
        {:error, _error, _scope} -> context
      end
    end)

    :code.purge(BeamBridge.WarmUp.Probe)
    :code.delete(BeamBridge.WarmUp.Probe)
    Process.delete(BeamBridge.Trace)
  end

  defp elixir_module?(module), do: String.starts_with?(Atom.to_string(module), "Elixir.")

  defp listener_children do
    if Application.get_env(:beam_bridge, :listen, false) do
      [{BeamBridge.Listener, BeamBridge.Config.listener_options()}]
    else
      []
    end
  end
end
