import Config

# The listener starts with the application except under `mix test`, where
# each test starts its own on a free port.
config :beam_bridge, listen: config_env() != :test

# Standard output carries only the ready line, for the process that started
# the node; logs go to standard error.
config :logger, :console, device: :standard_error

if config_env() == :test do
  config :logger, level: :warning
end
