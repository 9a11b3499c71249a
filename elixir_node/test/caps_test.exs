defmodule BeamBridge.CapsTest do
  use ExUnit.Case, async: true

  import BeamBridge.SessionHelpers
  alias BeamBridge.Session

  defp open(caps) do
    {_id, pid} = open_session(%{}, caps: caps)
    pid
  end

  test "a chunk that would overfill the pending buffer is refused; what was accepted stays" do
    pid = open(%{max_pending_bytes: 20})
    Session.request(pid, {:chunk, "x = [1,\n 2,"})
    Session.request(pid, {:chunk, String.duplicate(" ", 30)})
    assert_receive {:bridge_event, %{type: :error, code: :limit, message: message}}
    assert message =~ "pending buffer"
    Session.request(pid, {:chunk, " 3]\n"})
    Session.request(pid, :end)

    assert [%{type: :fragment, code: "x = [1,\n 2, 3]"}, %{type: :result, value: "[1, 2, 3]"}, _] =
             collect(&(&1.type == :done))
  end

  test "a chunk is refused while the queue holds its most fragments" do
    pid = open(%{max_queued_fragments: 2})
    Session.request(pid, {:chunk, "Process.sleep(:infinity)\n1\n2\n3\n"})
    assert_receive {:bridge_event, %{type: :fragment, index: 3}}
    Session.request(pid, {:chunk, "4\n"})
    assert_receive {:bridge_event, %{type: :error, code: :limit, message: message}}
    assert message =~ "waiting to run"
  end

  test "the history keeps the last max_history contexts and the fresh one" do
    pid = open(%{max_history: 3})
    eval(pid, "a = 1\nb = 2\nc = 3\nd = 4\ne = 5")
    Session.request(pid, {:rewind, 1})
    assert_receive {:bridge_event, %{type: :error, code: :bad_request, message: message}}
    assert message =~ "older than"
    assert {:error, _} = Session.context_at(pid, 2)
    assert {:ok, _, _} = Session.context_at(pid, 3)
    Session.request(pid, {:rewind, 0})
    assert_receive {:bridge_event, %{type: :rewound, to: 0}}
  end
end
