defmodule BeamBridge.SessionTest do
  use ExUnit.Case, async: true

  import BeamBridge.SessionHelpers
  alias BeamBridge.Session

  defp open(options \\ %{}, opts \\ []), do: open_session(options, opts)

  describe "evaluation" do
    test "carries bindings across fragments and blocks" do
      {_id, pid} = open()
      events = eval(pid, "x = 20\ny = x + 1\n")
      assert [%{ok: true, value: "20"}, %{ok: true, value: "21", data: 21}] = results(events)
      assert [%{ok: true, value: "42"}] = results(eval(pid, "x + y + 1"))
    end

    test "numbers fragments across the session's life and reports their lines" do
      {_id, pid} = open()
      events = eval(pid, "a = 1\n\n# note\nb = 2")

      assert [%{index: 1, line: 1, code: "a = 1"}, %{index: 2, line: 4, code: "b = 2"}] =
               for(%{type: :fragment} = f <- events, do: f)

      assert [%{type: :fragment, index: 3, line: 1}, %{type: :result, index: 3}, %{type: :done}] =
               eval(pid, "a + b")
    end

    test "the fragment event comes before the output and the result, output before result" do
      {_id, pid} = open()
      events = eval(pid, "IO.puts(\"hello\")\n:done")
      types = for e <- events, do: {e.type, e[:index]}

      assert types == [
               {:fragment, 1},
               {:fragment, 2},
               {:output, 1},
               {:result, 1},
               {:result, 2},
               {:done, nil}
             ]

      assert [%{text: "hello\n"}] = for(%{type: :output} = o <- events, do: o)
    end

    test "converts values to data when they map cleanly, nil otherwise" do
      {_id, pid} = open()
      code = ~s(%{a: [1, 2.5, "s", nil, true]}\n{1, 2}\n:atom\n%{1 => 2}\n"é")
      data = for r <- results(eval(pid, code)), do: r.data
      assert data == [%{"a" => [1, 2.5, "s", nil, true]}, nil, nil, nil, "é"]
    end

    test "reports each kind of error with its kind and line, and keeps the context" do
      {_id, pid} = open()
      eval(pid, "x = 1")

      code = """
      1 / 0
      raise ArgumentError, "bad"
      throw :ball
      exit(:gone)
      {:ok, _} = {:error, x}
      undefined_thing + 1
      x = 1 +
      """

      errors = for r <- results(eval(pid, code)), do: {r.error.kind, r.error.line}

      assert errors == [
               {"ArithmeticError", 1},
               {"ArgumentError", 2},
               {"throw", 3},
               {"exit", 4},
               {"MatchError", 5},
               {"CompileError", 6},
               {"SyntaxError", 7}
             ]

      assert [%{ok: true, value: "1"}] = results(eval(pid, "x"))
    end

    test "a fragment that binds and then fails leaves no binding behind" do
      {_id, pid} = open()
      eval(pid, "x = 1")

      assert [%{ok: false, error: %{kind: "RuntimeError"}}] =
               results(eval(pid, "(x = 2; y = 5; raise \"late\")"))

      assert [%{ok: true, value: "1"}, %{ok: false, error: %{kind: "CompileError"}}] =
               results(eval(pid, "x\ny"))
    end

    test "a syntax error in the middle does not stop the fragments after it" do
      {_id, pid} = open()
      events = eval(pid, "a = 1\nb = )\nc = a + 1")

      assert [%{ok: true}, %{ok: false, error: %{kind: "SyntaxError"}}, %{ok: true, value: "2"}] =
               results(events)
    end

    test "done counts the block's fragments and errors" do
      {_id, pid} = open()
      assert %{fragments: 3, errors: 1} = List.last(eval(pid, "1\n1/0\n3"))
    end

    test "on_error: halt skips the rest of the block, and the next block runs" do
      {_id, pid} = open(%{on_error: :halt})
      events = eval(pid, "1\nraise \"x\"\n3\n4")

      assert ["ok", "RuntimeError", "skipped", "skipped"] =
               for(r <- results(events), do: if(r.ok, do: "ok", else: r.error.kind))

      assert %{fragments: 4, errors: 3} = List.last(events)
      assert [%{ok: true, value: "5"}] = results(eval(pid, "5"))
    end
  end

  describe "streaming" do
    test "a fragment runs while the block is still arriving" do
      {_id, pid} = open()
      Session.request(pid, {:chunk, "x = 6 * 7\n"})
      Session.request(pid, {:chunk, "y ="})
      assert_receive {:bridge_event, %{type: :result, index: 1, value: "42"}}
      Session.request(pid, {:chunk, " x\n"})
      Session.request(pid, :end)
      assert_receive {:bridge_event, %{type: :result, index: 2, value: "42"}}
      assert_receive {:bridge_event, %{type: :done, fragments: 2}}
    end

    test "output is streamed while the fragment still runs" do
      # Unsandboxed: the fragment waits for a message from the test.
      {_id, pid} = open(%{}, sandbox: false)
      # The fragment prints, then waits for the test's go-ahead, so the
      # output can only have been seen while it was running.
      test = self()
      Process.register(test, :"session_test_#{System.unique_integer([:positive])}")
      {:registered_name, name} = Process.info(test, :registered_name)

      Session.request(
        pid,
        {:eval,
         """
         (
           IO.puts("first")
           send(#{inspect(name)}, {:waiting, self()})
           receive do: (:go -> :went)
         )
         """}
      )

      assert_receive {:bridge_event, %{type: :output, text: "first\n"}}
      refute_received {:bridge_event, %{type: :result}}
      assert_receive {:waiting, evaluation}
      send(evaluation, :go)
      assert_receive {:bridge_event, %{type: :result, ok: true, value: ":went"}}
    end

    test "a fragment over the time limit ends as timeout and the session goes on" do
      {_id, pid} = open(%{limits: %{timeout_ms: 100}})
      events = eval(pid, "IO.puts(\"before\")\nProcess.sleep(:infinity)")
      assert [%{ok: true}, %{ok: false, error: %{kind: "timeout"}}] = results(events)
      assert [%{text: "before\n"}] = for(%{type: :output} = o <- events, do: o)
      assert [%{ok: true, value: "2"}] = results(eval(pid, "1 + 1"))
    end

    test "output over the limit stops the fragment" do
      {_id, pid} = open(%{limits: %{max_output_bytes: 1000}})
      events = eval(pid, "Enum.each(1..10_000, fn i -> IO.puts(i) end)")
      assert [%{ok: false, error: %{kind: "output_limit"}}] = results(events)
      printed = for(%{type: :output, text: t} <- events, do: t) |> Enum.join()
      assert byte_size(printed) == 1000
    end

    test "a heap bomb ends as memory and the session goes on" do
      {_id, pid} = open(%{limits: %{max_heap_bytes: 20_000_000}})
      events = eval(pid, "Enum.to_list(1..10_000_000)")
      assert [%{ok: false, error: %{kind: "memory"}}] = results(events)
      assert [%{ok: true, value: "3"}] = results(eval(pid, "1 + 2"))
    end
  end

  describe "sessions" do
    test "a long fragment in one session does not hold up another" do
      {slow, slow_pid} = open()
      {quick, quick_pid} = open()
      Session.request(slow_pid, {:eval, "Process.sleep(3_000)\n:slow"})
      assert_receive {:bridge_event, %{type: :fragment, session: ^slow, index: 1}}

      # Run one after the other, the quick result would wait 3 s.
      Session.request(quick_pid, {:eval, "1 + 1"})
      assert_receive {:bridge_event, %{type: :result, session: ^quick, value: "2"}}, 2_000
      refute_received {:bridge_event, %{type: :result, session: ^slow}}
      assert_receive {:bridge_event, %{type: :done, session: ^slow}}, 5_000
    end

    test "do not see each other's bindings" do
      {_a, a} = open()
      {_b, b} = open()
      eval(a, "secret = 1")
      assert [%{ok: false, error: %{kind: "CompileError"}}] = results(eval(b, "secret"))
    end

    test "stop when their owner goes away" do
      test = self()

      owner =
        spawn(fn ->
          {:ok, pid} = Session.start("orphan-#{System.unique_integer()}", owner: self())
          send(test, {:session, pid})
          receive do: (:stop -> :ok)
        end)

      assert_receive {:session, pid}
      ref = Process.monitor(pid)
      send(owner, :stop)
      assert_receive {:DOWN, ^ref, :process, ^pid, _}
    end

    test "close purges the modules the session defined" do
      {id, pid} = open()
      assert [%{ok: true}] = results(eval(pid, "defmodule Gone do\n  def v, do: 1\nend"))
      {_, _, scope} = :sys.get_state(pid).context
      [module] = BeamBridge.Policy.modules(scope)
      assert :code.is_loaded(module)
      Session.request(pid, :close)
      assert_receive {:bridge_event, %{type: :closed, session: ^id}}
      refute :code.is_loaded(module)
    end

    test "close answers closed and ends the process" do
      {id, pid} = open()
      ref = Process.monitor(pid)
      Session.request(pid, :close)
      assert_receive {:bridge_event, %{type: :closed, session: ^id}}
      assert_receive {:DOWN, ^ref, :process, ^pid, :normal}
    end
  end
end
