defmodule BeamBridge.Listener do
  @moduledoc """
  Accepts gateway connections on TCP and hands each socket to its own
  `BeamBridge.Connection` process.

  Frames are a 4-byte big-endian length and an ETF payload; see
  `protocol/bridge.md`.

  Options:

    * `:host` - bind address, a string (default `"127.0.0.1"`)
    * `:port` - TCP port, `0` for a free one (required)
    * `:secret` - shared secret for the handshake (required)
    * `:max_frame_bytes` - largest frame accepted (required)
    * `:handshake_timeout_ms` - how long a new connection may take to send
      its hello before it is closed (default 5000)
    * `:announce` - print `beam_bridge listening on HOST:PORT` once ready,
      for the process that started the node (default `false`)
    * `:name` - registered name (default `BeamBridge.Listener`)
  """

  use GenServer
  require Logger

  @doc false
  def child_spec(opts) do
    %{id: Keyword.get(opts, :name, __MODULE__), start: {__MODULE__, :start_link, [opts]}}
  end

  @spec start_link(keyword) :: GenServer.on_start()
  def start_link(opts) do
    GenServer.start_link(__MODULE__, opts, name: Keyword.get(opts, :name, __MODULE__))
  end

  @doc "The port the listener is bound to (useful with `port: 0`)."
  @spec port(GenServer.server()) :: :inet.port_number()
  def port(server \\ __MODULE__), do: GenServer.call(server, :port)

  @impl true
  def init(opts) do
    secret = Keyword.fetch!(opts, :secret)

    unless is_binary(secret) and secret != "" do
      raise ArgumentError,
            "the bridge listener needs a shared secret: set BEAM_BRIDGE_SECRET or BEAM_BRIDGE_SECRET_FILE"
    end

    host = Keyword.get(opts, :host, "127.0.0.1")
    {:ok, address} = :inet.parse_address(String.to_charlist(host))

    socket_opts = [
      :binary,
      active: false,
      reuseaddr: true,
      nodelay: true,
      ip: address,
      backlog: 128
    ]

    case :gen_tcp.listen(Keyword.fetch!(opts, :port), socket_opts) do
      {:ok, listen} ->
        {:ok, port} = :inet.port(listen)

        conn_opts = [
          secret: secret,
          max_frame_bytes: Keyword.fetch!(opts, :max_frame_bytes),
          handshake_timeout_ms: Keyword.get(opts, :handshake_timeout_ms, 5_000)
        ]

        acceptor = spawn_link(fn -> accept_loop(listen, conn_opts) end)
        :ok = :gen_tcp.controlling_process(listen, acceptor)

        if Keyword.get(opts, :announce, false) do
          IO.puts("beam_bridge listening on #{host}:#{port}")
        end

        Logger.info("bridge listener on #{host}:#{port}")
        {:ok, %{listen: listen, port: port, acceptor: acceptor}}

      {:error, reason} ->
        {:stop, {:listen_failed, host, reason}}
    end
  end

  @impl true
  def handle_call(:port, _from, state), do: {:reply, state.port, state}

  defp accept_loop(listen, conn_opts) do
    case :gen_tcp.accept(listen) do
      {:ok, socket} ->
        {:ok, pid} = BeamBridge.Connection.start(socket, conn_opts)
        :ok = :gen_tcp.controlling_process(socket, pid)
        send(pid, :socket_ready)
        accept_loop(listen, conn_opts)

      {:error, :closed} ->
        :ok

      {:error, reason} ->
        Logger.warning("bridge accept failed: #{inspect(reason)}")
        accept_loop(listen, conn_opts)
    end
  end
end
