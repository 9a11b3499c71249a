defmodule BeamBridge.Config do
  @moduledoc """
  The node's settings, read once from the application environment, which
  `config/runtime.exs` fills from `BEAM_BRIDGE_*` environment variables.

  Listener settings:

    * `:host` - bind address (default `"127.0.0.1"`)
    * `:port` - TCP port; `0` picks a free one (default `9100`)
    * `:secret` - the shared secret gateways must present (required to listen)
    * `:max_frame_bytes` - largest accepted bridge frame (default 8 MiB)

  Session and node caps (`:caps`), server settings only:

    * `:max_pending_bytes` - uncommitted text per session (default 1 MiB)
    * `:max_queued_fragments` - committed fragments waiting to run (default 1000)
    * `:max_history` - contexts kept for rewind and fork (default 10,000;
      the fresh context, fragment 0, is always kept)
    * `:max_sessions` - sessions on the node (default 10,000)

  Evaluation limits (`:limits`), each a server default that a session may
  lower but never raise:

    * `:timeout_ms` - wall time per fragment (default 5000)
    * `:max_heap_bytes` - process heap per evaluation (default 256 MiB)
    * `:max_output_bytes` - output per fragment (default 1 MiB)
    * `:max_result_bytes` - the `inspect` text of a result's value; longer
      text is cut there and ends with `…` (default 64 KiB)
  """

  @default_limits %{
    timeout_ms: 5_000,
    max_heap_bytes: 256 * 1024 * 1024,
    max_output_bytes: 1024 * 1024,
    max_result_bytes: 64 * 1024
  }

  @doc "Options for `BeamBridge.Listener.start_link/1`, from the application environment."
  @spec listener_options() :: keyword
  def listener_options do
    [
      host: get(:host, "127.0.0.1"),
      port: get(:port, 9100),
      secret: get(:secret, nil),
      max_frame_bytes: max_frame_bytes(),
      announce: get(:announce, false)
    ]
  end

  @default_caps %{
    max_pending_bytes: 1024 * 1024,
    max_queued_fragments: 1_000,
    max_history: 10_000,
    max_sessions: 10_000
  }

  @doc "The session and node caps."
  @spec caps() :: %{atom => pos_integer}
  def caps, do: Map.merge(@default_caps, Map.new(get(:caps, [])))

  @doc """
  Whether fragments go through the sandbox policy (default `true`; only a
  node that runs trusted code should turn it off).
  """
  @spec sandbox?() :: boolean
  def sandbox?, do: get(:sandbox, true)

  @doc "The largest bridge frame the node accepts, in bytes."
  @spec max_frame_bytes() :: pos_integer
  def max_frame_bytes, do: get(:max_frame_bytes, 8 * 1024 * 1024)

  @doc "The server's evaluation limits: defaults that are also the ceilings."
  @spec limits() :: %{atom => pos_integer}
  def limits, do: Map.merge(@default_limits, Map.new(get(:limits, [])))

  @doc "No limits at all but the result's size: for measuring what the limits cost."
  @spec no_limits() :: map
  def no_limits do
    %{limits() | timeout_ms: :infinity, max_heap_bytes: :infinity, max_output_bytes: :infinity}
  end

  @doc """
  The limits for one session: the server's, lowered (never raised) by the
  client's requested `limits` map. Unknown keys and non-positive values are
  ignored.
  """
  @spec session_limits(map) :: %{atom => pos_integer}
  def session_limits(requested) when is_map(requested) do
    Enum.reduce(limits(), %{}, fn {key, ceiling}, acc ->
      case Map.get(requested, key) do
        n when is_integer(n) and n > 0 -> Map.put(acc, key, min(n, ceiling))
        _ -> Map.put(acc, key, ceiling)
      end
    end)
  end

  def session_limits(_), do: limits()

  defp get(key, default), do: Application.get_env(:beam_bridge, key, default)
end
