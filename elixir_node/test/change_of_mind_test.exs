defmodule BeamBridge.ChangeOfMindTest do
  use ExUnit.Case, async: true

  import BeamBridge.SessionHelpers
  alias BeamBridge.Session

  defp open(options \\ %{}, opts \\ []), do: open_session(options, opts)

  describe "cancel" do
    test "kills a busy loop at once; the session goes on with its context" do
      {_id, pid} = open()
      eval(pid, "x = 5")
      Session.request(pid, {:eval, "Stream.repeatedly(fn -> :spin end) |> Stream.run()"})
      assert_receive {:bridge_event, %{type: :fragment, index: 2}}
      Session.request(pid, :cancel)
      events = collect(&(&1.type == :done))
      assert [%{index: 2, ok: false, error: %{kind: "cancelled"}}] = results(events)
      assert value(pid, "x + 1") == "6"
    end

    test "kills a loop that traps exits and every process it started" do
      # The sandbox denies trapping exits and spawning; a trusted node may
      # allow both, and cancel must still take everything.
      {_id, pid} = open(%{}, sandbox: false)
      test = self()
      name = :"com_#{System.unique_integer([:positive])}"
      Process.register(test, name)

      code = """
      (
        Process.flag(:trap_exit, true)
        child = spawn_link(fn -> Process.flag(:trap_exit, true); Process.sleep(:infinity) end)
        grandchild = spawn(fn -> Process.sleep(:infinity) end)
        send(#{inspect(name)}, {:started, self(), child, grandchild})
        Stream.repeatedly(fn -> :spin end) |> Stream.run()
      )
      """

      Session.request(pid, {:eval, code})
      assert_receive {:started, evaluation, child, grandchild}
      refs = for p <- [evaluation, child, grandchild], do: Process.monitor(p)
      Session.request(pid, :cancel)
      for ref <- refs, do: assert_receive({:DOWN, ^ref, :process, _, :killed})
      assert [%{error: %{kind: "cancelled"}}] = results(collect(&(&1.type == :done)))
    end

    test "drops queued fragments and the pending buffer" do
      {_id, pid} = open()
      Session.request(pid, {:chunk, "Process.sleep(:infinity)\n1\n2\n3 +"})
      assert_receive {:bridge_event, %{type: :fragment, index: 3}}
      Session.request(pid, :cancel)
      Session.request(pid, :end)
      events = collect(&(&1.type == :done))
      kinds = for r <- results(events), do: {r.index, r.error.kind}
      assert kinds == [{1, "cancelled"}, {2, "cancelled"}, {3, "cancelled"}]
      assert %{fragments: 3, errors: 3} = List.last(events)
      # Nothing of "3 +" is left to join the next block.
      assert value(pid, "4") == "4"
    end

    test "with nothing running is harmless" do
      {_id, pid} = open()
      Session.request(pid, :cancel)
      assert value(pid, "1") == "1"
    end
  end

  describe "rewind" do
    setup do
      {id, pid} = open()
      eval(pid, "a = 1\nb = 2\nimport Enum, only: [sum: 1]\nc = sum([a, b])")
      %{id: id, pid: pid}
    end

    test "to the middle restores that context and renumbers from there", %{pid: pid} do
      Session.request(pid, {:rewind, 1})
      assert_receive {:bridge_event, %{type: :rewound, to: 1}}
      events = eval(pid, "binding() |> Keyword.keys() |> Enum.sort()")
      assert [%{index: 2, value: "[:a]"}] = results(events)
    end

    test "rewinds imports too", %{pid: pid} do
      Session.request(pid, {:rewind, 2})
      assert_receive {:bridge_event, %{type: :rewound}}
      assert [%{ok: false, error: %{kind: "CompileError"}}] = results(eval(pid, "sum([1])"))
    end

    test "to 0 gives a fresh session", %{pid: pid} do
      Session.request(pid, {:rewind, 0})
      assert_receive {:bridge_event, %{type: :rewound, to: 0}}
      assert [%{index: 1, value: "[]"}] = results(eval(pid, "binding()"))
    end

    test "to the last fragment changes nothing", %{pid: pid} do
      Session.request(pid, {:rewind, 4})
      assert_receive {:bridge_event, %{type: :rewound, to: 4}}
      assert [%{index: 5, value: "3"}] = results(eval(pid, "c"))
    end

    test "purges modules defined after the fragment it returns to" do
      {_id, pid} = open()
      eval(pid, "defmodule Kept do\n  def v, do: 1\nend")
      eval(pid, "defmodule Dropped do\n  def v, do: 2\nend")
      assert value(pid, "Kept.v() + Dropped.v()") == "3"
      {_, _, scope} = :sys.get_state(pid).context
      [dropped, kept] = BeamBridge.Policy.modules(scope)

      Session.request(pid, {:rewind, 1})
      assert_receive {:bridge_event, %{type: :rewound, to: 1}}
      refute :code.is_loaded(dropped)
      assert :code.is_loaded(kept)
      assert value(pid, "Kept.v()") == "1"
      assert [%{ok: false}] = results(eval(pid, "Dropped.v()"))
    end

    test "beyond the last fragment is an error and changes nothing", %{pid: pid} do
      Session.request(pid, {:rewind, 9})
      assert_receive {:bridge_event, %{type: :error, code: :bad_request, message: message}}
      assert message =~ "9"
      assert [%{index: 5, value: "3"}] = results(eval(pid, "c"))
    end

    test "while a fragment runs cancels it first", %{pid: pid} do
      Session.request(pid, {:eval, "Process.sleep(:infinity)"})
      assert_receive {:bridge_event, %{type: :fragment, index: 5}}
      Session.request(pid, {:rewind, 2})
      assert_receive {:bridge_event, %{type: :result, index: 5, error: %{kind: "cancelled"}}}
      assert_receive {:bridge_event, %{type: :rewound, to: 2}}
    end
  end

  describe "fork" do
    test "starts from the original's context after the fragment; both then diverge" do
      {id, pid} = open()
      eval(pid, "x = 1\nx = x + 10\nx = x + 100")
      {:ok, context, options} = Session.context_at(pid, 2)
      {fork_id, fork} = open(options, context: context, forked_from: {id, 2})
      refute fork_id == id

      assert value(fork, "x") == "11"
      assert value(fork, "x = x * 2") == "22"
      assert value(pid, "x") == "111"
      assert value(fork, "x") == "22"
    end

    test "of a fragment that has not finished is refused" do
      {_id, pid} = open()
      assert {:error, message} = Session.context_at(pid, 3)
      assert message =~ "3"
    end
  end

  describe "trace" do
    test "reports each top-level expression and each pipeline stage, in order with output" do
      {_id, pid} = open(%{trace: true})

      events = eval(pid, "(IO.puts(\"hi\"); y = 2)\n1..3 |> Enum.map(&(&1 * 2)) |> Enum.sum()")

      steps =
        for %{type: type} = e <- events,
            type in [:step, :output],
            do: {type, e[:value] || e[:text]}

      assert steps == [
               {:output, "hi\n"},
               {:step, ":ok"},
               {:step, "2"},
               {:step, "1..3"},
               {:step, "[2, 4, 6]"},
               {:step, "12"}
             ]

      assert [%{value: "2"}, %{value: "12"}] = results(events)
    end

    test "does not change results or bindings" do
      {_traced, t} = open(%{trace: true})
      {_plain, p} = open()
      code = "a = [3, 1, 2]\n{:ok, b} = {:ok, Enum.sort(a)}\nalias Enum, as: E\nE.max(b)"

      assert Enum.map(results(eval(t, code)), & &1.value) ==
               Enum.map(results(eval(p, code)), & &1.value)

      assert value(t, "binding() |> Enum.sort()") == value(p, "binding() |> Enum.sort()")
    end

    test "sends no steps without trace" do
      {_id, pid} = open()
      events = eval(pid, "1..3 |> Enum.sum()")
      assert [] == for(%{type: :step} = s <- events, do: s)
    end

    test "caps the steps of one fragment and counts the rest" do
      {_id, pid} = open(%{trace: true})
      events = eval(pid, "(" <> Enum.map_join(1..1_100, "; ", &"#{&1} * 2") <> ")")
      assert length(for(%{type: :step} = s <- events, do: s)) == 1_000
      assert [%{value: "2200", steps_dropped: 100}] = results(events)
    end
  end

  describe "speculative evaluation" do
    test "a pure fragment starts running before it is committed; the commit releases it" do
      {_id, pid} = open()
      Session.request(pid, {:chunk, "x = IO.write(\"held\")\n"})
      assert speculating(pid) == "x = IO.write(\"held\")"

      for type <- [:fragment, :output, :result],
          do: refute_received({:bridge_event, %{type: ^type}})

      Session.request(pid, {:chunk, "y = 2"})
      events = collect(&(&1.type == :result and &1.index == 1))

      assert [
               %{type: :fragment, index: 1},
               %{type: :output, index: 1, text: "held"},
               %{type: :result, index: 1, value: ":ok"}
             ] = events
    end

    test "a continuation kills the speculative run: no trace in output, results or context" do
      {_id, pid} = open()
      Session.request(pid, {:chunk, "x = IO.write(\"spec\")\n"})
      assert speculating(pid) =~ "spec"
      Session.request(pid, {:chunk, "|> then(fn _ -> IO.write(\"final\"); 2 end)\n"})
      Session.request(pid, :end)
      events = collect(&(&1.type == :done))
      assert Enum.join(for %{type: :output, text: t} <- events, do: t) == "specfinal"
      assert [%{index: 1, value: "2"}] = results(events)
      assert value(pid, "x") == "2"
    end

    test "fragments with effects, or that call function values, are not run early" do
      {_id, pid} = open()
      eval(pid, "f = fn -> :called end")

      for code <- ["send(self(), :early)", "f.()", "y = f", "File.cwd()"] do
        Session.request(pid, {:chunk, code <> "\n"})
        assert speculating(pid) == nil, code
        Session.request(pid, :cancel)
      end
    end

    test "interpolation, map access and new variable names qualify; calls of values do not" do
      alias BeamBridge.Speculation

      for code <- [
            ~S'IO.puts("#{length([1])} item")',
            ~S'total_zq1 = %{"a" => 1}["a"] + 1',
            "{known_zq2, rest_zq3} = Enum.split_with([1, 2], &(&1 > 1))"
          ] do
        assert Speculation.pure?(code, []), code
      end

      holding_a_function = [bb_v0: fn -> :effect end]
      refute Speculation.pure?("new_name_zq4 + 1", holding_a_function)
      refute Speculation.pure?("%{unknown_key_zq5: 1}", [])
      refute Speculation.pure?("Process.sleep(1)", [])
    end

    test "is off with speculate: false" do
      {_id, pid} = open(%{speculate: false})
      Session.request(pid, {:chunk, "x = 1 + 1\n"})
      assert speculating(pid) == nil
    end

    test "a speculative run that never ends is dropped, and the fragment runs on commit" do
      {_id, pid} = open(%{limits: %{timeout_ms: 500}})
      Session.request(pid, {:chunk, "Stream.cycle([1]) |> Enum.count()\n"})
      assert speculating(pid) =~ "Stream.cycle"
      Session.request(pid, :end)
      events = collect(&(&1.type == :done))
      assert [%{ok: false, error: %{kind: "timeout"}}] = results(events)
    end
  end
end
