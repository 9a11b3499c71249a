defmodule BeamBridge.Application do
  @moduledoc """
  The node's supervision tree: a registry and a dynamic supervisor for
  sessions, and (unless disabled) the bridge listener that gateways connect to.
  """

  use Application

  @impl true
  def start(_type, _args) do
    # Code is parsed without creating atoms, so a call is only recognised
    # when its names already exist: loading the standard modules user code
    # may call, and naming their alias segments (`:Stream` in `Stream.map`),
    # creates that fixed set of atoms once, up front.
    # The node's own modules name every atom of the bridge protocol: loaded
    # up front, a request that uses one decodes under `[:safe]` even before
    # the code that handles it has run once.
    Enum.each(Application.spec(:beam_bridge, :modules), &Code.ensure_loaded/1)
    BeamBridge.Policy.Scope.setup()

    for module <- BeamBridge.Speculation.modules() do
      Code.ensure_loaded(module)
      if elixir_module?(module), do: Enum.each(Module.split(module), &String.to_atom/1)
    end

    children =
      [
        {Registry, keys: :unique, name: BeamBridge.SessionRegistry},
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

  defp elixir_module?(module), do: String.starts_with?(Atom.to_string(module), "Elixir.")

  defp listener_children do
    if Application.get_env(:beam_bridge, :listen, false) do
      [{BeamBridge.Listener, BeamBridge.Config.listener_options()}]
    else
      []
    end
  end
end
