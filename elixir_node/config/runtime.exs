import Config

# Every setting of a running node comes from the environment, so the same
# build serves the embedded node, the compose service and the tests.
env_int = fn name ->
  case System.get_env(name) do
    nil -> nil
    text -> String.to_integer(String.trim(text))
  end
end

secret =
  case {System.get_env("BEAM_BRIDGE_SECRET"), System.get_env("BEAM_BRIDGE_SECRET_FILE")} do
    {nil, nil} -> nil
    {nil, path} -> path |> File.read!() |> String.trim()
    {value, _} -> value
  end

settings =
  [
    host: System.get_env("BEAM_BRIDGE_HOST"),
    port: env_int.("BEAM_BRIDGE_PORT"),
    secret: secret,
    max_frame_bytes: env_int.("BEAM_BRIDGE_MAX_FRAME_BYTES"),
    announce: System.get_env("BEAM_BRIDGE_ANNOUNCE") not in [nil, "", "0"],
    stdin_link: System.get_env("BEAM_BRIDGE_STDIN_LINK") not in [nil, "", "0"],
    sandbox: System.get_env("BEAM_BRIDGE_SANDBOX") not in ["off", "0", "false"],
    log_device:
      case System.get_env("BEAM_BRIDGE_LOG_DEVICE") do
        nil -> nil
        "stdout" -> :user
        "stderr" -> :standard_error
        other -> raise "BEAM_BRIDGE_LOG_DEVICE must be stdout or stderr, not #{inspect(other)}"
      end,
    caps:
      Enum.reject(
        [
          max_pending_bytes: env_int.("BEAM_BRIDGE_MAX_PENDING_BYTES"),
          max_queued_fragments: env_int.("BEAM_BRIDGE_MAX_QUEUED_FRAGMENTS"),
          max_history: env_int.("BEAM_BRIDGE_MAX_HISTORY"),
          max_sessions: env_int.("BEAM_BRIDGE_MAX_SESSIONS")
        ],
        fn {_, v} -> is_nil(v) end
      ),
    limits:
      Enum.reject(
        [
          timeout_ms: env_int.("BEAM_BRIDGE_TIMEOUT_MS"),
          max_heap_bytes: env_int.("BEAM_BRIDGE_MAX_HEAP_BYTES"),
          max_output_bytes: env_int.("BEAM_BRIDGE_MAX_OUTPUT_BYTES"),
          max_result_bytes: env_int.("BEAM_BRIDGE_MAX_RESULT_BYTES")
        ],
        fn {_, v} -> is_nil(v) end
      )
  ]
  |> Enum.reject(fn {_, v} -> is_nil(v) end)

config :beam_bridge, settings
