defmodule BeamBridge.ListenerTest do
  use ExUnit.Case, async: true

  alias BeamBridge.Listener

  @secret "test-secret"
  @vectors Path.expand("../../protocol/vectors/bridge.txt", __DIR__)

  setup do
    name = :"listener_#{System.unique_integer([:positive])}"
    opts = [name: name, port: 0, secret: @secret, max_frame_bytes: 64 * 1024]
    start_supervised!({Listener, opts})
    %{port: Listener.port(name)}
  end

  defp connect(port) do
    {:ok, socket} =
      :gen_tcp.connect(~c"127.0.0.1", port, [:binary, packet: 4, active: false], 1_000)

    socket
  end

  defp send_term(socket, term), do: :ok = :gen_tcp.send(socket, :erlang.term_to_binary(term))

  defp receive_term(socket) do
    {:ok, frame} = :gen_tcp.recv(socket, 0, 5_000)
    :erlang.binary_to_term(frame)
  end

  defp handshake(port) do
    socket = connect(port)
    send_term(socket, %{type: :hello, version: 1, secret: @secret})
    assert %{type: :welcome, version: 1} = receive_term(socket)
    socket
  end

  # Reads events until `fun` returns true for one; returns all of them.
  defp receive_until(socket, fun, acc \\ []) do
    event = receive_term(socket)

    if fun.(event),
      do: Enum.reverse([event | acc]),
      else: receive_until(socket, fun, [event | acc])
  end

  defp vectors do
    @vectors
    |> File.read!()
    |> String.split("\n\n", trim: true)
    |> Enum.reject(&String.starts_with?(&1, "#"))
    |> Map.new(fn record ->
      fields =
        for line <- String.split(record, "\n", trim: true), into: %{} do
          [key, value] = String.split(line, ": ", parts: 2)
          {key, value}
        end

      {fields["name"], fields}
    end)
  end

  describe "handshake" do
    test "a hello with the right secret is welcomed", %{port: port} do
      socket = handshake(port)
      send_term(socket, %{type: :ping, ref: 1})
      assert %{type: :pong, ref: 1, stats: stats} = receive_term(socket)
      assert stats.atoms > 0 and stats.atoms < stats.atom_limit
      assert stats.processes > 0 and stats.memory_bytes > 0 and stats.sessions >= 0
    end

    test "a peer that sends no hello is refused once the handshake timeout passes" do
      name = :"listener_#{System.unique_integer([:positive])}"
      opts = [name: name, port: 0, secret: @secret, max_frame_bytes: 64 * 1024]
      start_supervised!({Listener, [handshake_timeout_ms: 50] ++ opts}, id: name)
      socket = connect(Listener.port(name))

      assert %{type: :error, code: :bad_handshake, message: message} = receive_term(socket)
      assert message =~ "handshake timeout"
      assert {:error, :closed} = :gen_tcp.recv(socket, 0, 5_000)
    end

    test "a large frame before the handshake is refused without being read", %{port: port} do
      socket = connect(port)
      :ok = :gen_tcp.send(socket, :binary.copy("x", 100_000))

      assert %{type: :error, code: :frame_too_large, message: message} = receive_term(socket)
      assert message =~ "before the handshake"
      assert {:error, :closed} = :gen_tcp.recv(socket, 0, 5_000)
    end

    test "a wrong secret is refused and the connection closed", %{port: port} do
      socket = connect(port)
      send_term(socket, %{type: :hello, version: 1, secret: "nope"})
      assert %{type: :error, code: :unauthorized} = receive_term(socket)
      assert {:error, :closed} = :gen_tcp.recv(socket, 0, 5_000)
    end

    test "a wrong version is refused", %{port: port} do
      socket = connect(port)
      send_term(socket, %{type: :hello, version: 99, secret: @secret})
      assert %{type: :error, code: :bad_version} = receive_term(socket)
      assert {:error, :closed} = :gen_tcp.recv(socket, 0, 5_000)
    end

    test "any other first frame is refused", %{port: port} do
      socket = connect(port)
      send_term(socket, %{type: :open, session: "s"})
      assert %{type: :error, code: :bad_handshake} = receive_term(socket)
      assert {:error, :closed} = :gen_tcp.recv(socket, 0, 5_000)

      garbage = connect(port)
      :ok = :gen_tcp.send(garbage, <<1, 2, 3>>)
      assert %{type: :error, code: :bad_handshake} = receive_term(garbage)
    end
  end

  describe "frames" do
    test "garbage, unknown atoms and bad requests are answered while sessions keep working",
         %{port: port} do
      socket = handshake(port)
      send_term(socket, %{type: :open, session: "a"})
      assert %{type: :opened, session: "a"} = receive_term(socket)

      :ok = :gen_tcp.send(socket, <<131, 255, 0>>)
      assert %{type: :error, code: :bad_frame} = receive_term(socket)

      # An atom the node has never seen: `[:safe]` refuses to create it.
      unknown = <<131, 100, 0, 24, "never_seen_atom_xq7_zz9k">>
      :ok = :gen_tcp.send(socket, unknown)
      assert %{type: :error, code: :bad_frame} = receive_term(socket)

      send_term(socket, [:not, :a, :map])
      assert %{type: :error, code: :bad_request} = receive_term(socket)
      send_term(socket, %{type: :chunk, session: "a", text: 42})
      assert %{type: :error, code: :bad_request, session: "a"} = receive_term(socket)
      send_term(socket, %{type: :end, session: "nobody"})
      assert %{type: :error, code: :unknown_session} = receive_term(socket)
      send_term(socket, %{type: :open, session: "a"})
      assert %{type: :error, code: :session_exists} = receive_term(socket)

      send_term(socket, %{type: :eval, session: "a", code: "6 * 7"})
      events = receive_until(socket, &(&1.type == :done))
      assert [%{type: :fragment}, %{type: :result, value: "42"}, %{type: :done}] = events
    end

    test "an oversized frame is answered, then the connection is closed; the node serves on",
         %{port: port} do
      other = handshake(port)
      socket = handshake(port)
      :ok = :gen_tcp.send(socket, :binary.copy("x", 100 * 1024))
      assert %{type: :error, code: :frame_too_large} = receive_term(socket)
      assert {:error, :closed} = :gen_tcp.recv(socket, 0, 5_000)

      send_term(other, %{type: :ping, ref: :still_here})
      assert %{type: :pong, ref: :still_here} = receive_term(other)
    end

    test "one connection carries many sessions, each with its own context", %{port: port} do
      socket = handshake(port)
      # Session ids are node-wide; other tests run beside this one.
      ids = for n <- 1..3, do: "many-#{n}-#{System.unique_integer([:positive])}"

      for id <- ids do
        send_term(socket, %{type: :open, session: id})
        assert %{type: :opened, session: ^id} = receive_term(socket)
      end

      for id <- ids,
          do: send_term(socket, %{type: :eval, session: id, code: "x = #{inspect(id)}"})

      events = for _ <- 1..9, do: receive_term(socket)
      values = for %{type: :result, session: s, value: v} <- events, into: %{}, do: {s, v}
      assert values == Map.new(ids, &{&1, inspect(&1)})
      assert 3 == Enum.count(events, &(&1.type == :done))
    end

    test "sessions close when their connection goes away", %{port: port} do
      socket = handshake(port)
      send_term(socket, %{type: :open, session: "gone-with-connection"})
      assert %{type: :opened} = receive_term(socket)
      pid = BeamBridge.Session.whereis("gone-with-connection")
      ref = Process.monitor(pid)
      :gen_tcp.close(socket)
      assert_receive {:DOWN, ^ref, :process, ^pid, _}
    end
  end

  describe "protocol vectors" do
    test "every vector decodes to the term its Elixir source describes" do
      vectors = vectors()
      assert map_size(vectors) >= 20

      for {name, %{"hex" => hex, "elixir" => source}} <- vectors do
        {expected, []} = Code.eval_string(source)

        assert :erlang.binary_to_term(Base.decode16!(hex, case: :lower), [:safe]) == expected,
               name
      end
    end

    test "the request vectors are accepted by a live node", %{port: port} do
      vectors = vectors()
      socket = handshake(port)

      for name <- ~w(open chunk end) do
        :ok = :gen_tcp.send(socket, Base.decode16!(vectors[name]["hex"], case: :lower))
      end

      events = receive_until(socket, &(&1.type == :done))
      assert [%{type: :opened} | _] = events
      assert %{type: :done, fragments: 2} = List.last(events)
    end
  end
end
