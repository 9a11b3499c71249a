defmodule BeamBridge.CapsTest do
  use ExUnit.Case, async: true

  import BeamBridge.SessionHelpers
  alias BeamBridge.Session

  defp open(caps) do
    {_id, pid} = open_session(%{}, caps: caps)
    pid
  end

  test "a session started unlimited, for benchmarks, has no output cap" do
    {_id, pid} = open_session(%{}, unlimited: true)
    events = eval(pid, ~s|IO.write(String.duplicate("a", 1_500_000))|)
    assert [%{ok: true}] = results(events)

    assert 1_500_000 ==
             events
             |> Enum.filter(&(&1.type == :output))
             |> Enum.map(&byte_size(&1.text))
             |> Enum.sum()
  end

  describe "result size" do
    test "a client may lower it: text cut between code points, data nil when it does not fit" do
      {_id, pid} = open_session(%{limits: %{max_result_bytes: 21}})
      [long, short] = results(eval(pid, "String.duplicate(\"é\", 40)\n[1, 2, 3]"))

      # `"` and twenty bytes of `é` are 21 bytes, ten whole code points.
      assert long.value == "\"" <> String.duplicate("é", 10) <> "…"
      assert long.data == nil
      assert %{value: "[1, 2, 3]", data: [1, 2, 3]} = short
    end

    test "a request above the server's ceiling gets the ceiling" do
      {_id, pid} = open_session(%{limits: %{max_result_bytes: 10_000_000}})
      [result] = results(eval(pid, "List.duplicate(String.duplicate(\"a\", 10_000), 100)"))
      assert byte_size(result.value) == 64 * 1024 + byte_size("…")
      assert result.data == nil
    end
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
