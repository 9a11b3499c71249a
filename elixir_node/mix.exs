defmodule BeamBridge.MixProject do
  use Mix.Project

  def project do
    [
      app: :beam_bridge,
      version: "0.1.0",
      elixir: "~> 1.14",
      start_permanent: Mix.env() == :prod,
      deps: [],
      elixirc_paths: if(Mix.env() == :test, do: ["lib", "test/support"], else: ["lib"]),
      releases: [beam_bridge: [include_executables_for: [:unix]]]
    ]
  end

  def application do
    [
      extra_applications: [:logger, :crypto],
      mod: {BeamBridge.Application, []}
    ]
  end
end
