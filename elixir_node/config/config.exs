import Config

# The listener starts with the application except under `mix test`, where
# each test starts its own on a free port.
config :beam_bridge, listen: config_env() != :test
