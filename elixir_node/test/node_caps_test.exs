defmodule BeamBridge.NodeCapsTest do
  # Not async: the cap counts every session on the node.
  use ExUnit.Case, async: false

  alias BeamBridge.Listener

  setup do
    before = Application.get_env(:beam_bridge, :caps)
    on_exit(fn -> Application.put_env(:beam_bridge, :caps, before || []) end)
    start_supervised!({Listener, name: :node_caps, port: 0, secret: "s", max_frame_bytes: 65_536})
    %{port: Listener.port(:node_caps)}
  end

  test "an open past the node's session cap is refused with a limit error", %{port: port} do
    {:ok, socket} = :gen_tcp.connect(~c"127.0.0.1", port, [:binary, packet: 4, active: false])
    send_term = fn term -> :ok = :gen_tcp.send(socket, :erlang.term_to_binary(term)) end

    recv = fn ->
      {:ok, frame} = :gen_tcp.recv(socket, 0, 5_000)
      :erlang.binary_to_term(frame)
    end

    send_term.(%{type: :hello, version: 1, secret: "s"})
    assert %{type: :welcome} = recv.()
    active = DynamicSupervisor.count_children(BeamBridge.SessionSupervisor).active
    Application.put_env(:beam_bridge, :caps, max_sessions: active + 1)

    send_term.(%{type: :open, session: "first"})
    assert %{type: :opened, session: "first"} = recv.()

    # Sessions of earlier tests may still be stopping, which frees room:
    # opening goes on until the cap answers, at most `active + 1` more times.
    refused =
      Enum.find_value(1..(active + 1), fn n ->
        send_term.(%{type: :open, session: "more-#{n}"})

        case recv.() do
          %{type: :opened} -> nil
          %{type: :error} = error -> error
        end
      end)

    assert %{code: :limit, message: message} = refused
    assert message =~ "session"
  end
end
