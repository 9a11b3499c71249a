# Readiness probe of a running beambridge node, run by
# `bin/beam_bridge_node health` (through the release's `eval` in the
# container, through `elixir` in a source tree). It does what a gateway
# does first: connect, say hello with the shared secret, wait for the
# welcome, then a ping and its pong. It prints one line and halts with 0
# when all of it worked, 1 otherwise, so it fits a compose healthcheck.
#
# Settings come from the node's own environment: BEAM_BRIDGE_SECRET or
# BEAM_BRIDGE_SECRET_FILE, and BEAM_BRIDGE_HEALTH_ADDRESS (HOST:PORT) or else
# BEAM_BRIDGE_HOST and BEAM_BRIDGE_PORT, with a wildcard bind address
# probed on loopback.

timeout_ms = 2_000

fail = fn why ->
  IO.puts(:stderr, "beam_bridge health: #{why}")
  System.halt(1)
end

secret =
  case {System.get_env("BEAM_BRIDGE_SECRET"), System.get_env("BEAM_BRIDGE_SECRET_FILE")} do
    {nil, nil} -> fail.("set BEAM_BRIDGE_SECRET or BEAM_BRIDGE_SECRET_FILE")
    {nil, path} -> path |> File.read!() |> String.trim()
    {value, _} -> value
  end

{host, port} =
  case System.get_env("BEAM_BRIDGE_HEALTH_ADDRESS") do
    nil ->
      bind = System.get_env("BEAM_BRIDGE_HOST", "127.0.0.1")
      {bind, String.to_integer(System.get_env("BEAM_BRIDGE_PORT", "9100"))}

    text ->
      case Regex.run(~r/^\[?(.+?)\]?:(\d+)$/, text) do
        [_, host, port] -> {host, String.to_integer(port)}
        nil -> fail.("not HOST:PORT: #{inspect(text)}")
      end
  end

host =
  case host do
    "0.0.0.0" -> "127.0.0.1"
    "::" -> "::1"
    other -> other
  end

address =
  case :inet.parse_address(String.to_charlist(host)) do
    {:ok, ip} -> ip
    {:error, :einval} -> String.to_charlist(host)
  end

family = if is_tuple(address) and tuple_size(address) == 8, do: [:inet6], else: []
# `packet: 4` is the bridge framing: a 4-byte big-endian length, then ETF.
options = [:binary, packet: 4, active: false] ++ family

call = fn socket, message ->
  with :ok <- :gen_tcp.send(socket, :erlang.term_to_binary(message)),
       {:ok, frame} <- :gen_tcp.recv(socket, 0, timeout_ms) do
    # Not `[:safe]`, unlike the node: this process lives for one probe, so
    # atoms a newer node adds to its replies cannot pile up, and must not
    # make the probe fail.
    try do
      {:ok, :erlang.binary_to_term(frame)}
    rescue
      ArgumentError -> {:error, :undecodable_reply}
    end
  end
end

ref = System.unique_integer([:positive])

with {:ok, socket} <- :gen_tcp.connect(address, port, options, timeout_ms),
     {:ok, %{type: :welcome, node: node}} <-
       call.(socket, %{type: :hello, version: 1, secret: secret}),
     {:ok, %{type: :pong, ref: ^ref}} <- call.(socket, %{type: :ping, ref: ref}) do
  :gen_tcp.close(socket)
  IO.puts("ready #{node} at #{host}:#{port}")
  System.halt(0)
else
  {:ok, %{type: :error, code: code, message: message}} ->
    fail.("#{host}:#{port} refused: #{code}: #{message}")

  {:ok, other} ->
    fail.("#{host}:#{port} answered #{inspect(other)}")

  {:error, reason} ->
    fail.("#{host}:#{port}: #{inspect(reason)}")
end
