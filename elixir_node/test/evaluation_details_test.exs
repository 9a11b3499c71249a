defmodule BeamBridge.EvaluationDetailsTest do
  use ExUnit.Case, async: true

  import BeamBridge.SessionHelpers

  alias BeamBridge.{Evaluator, Policy, Session, Trace}

  # Four one-line fragments, so that the fragment under test starts on
  # line 5 of its block.
  @lead "a = 1\nb = 2\nc = 3\nd = 4\n"

  defp last_result(pid, fragment) do
    events = eval(pid, @lead <> fragment)
    assert %{line: 5} = events |> Enum.filter(&(&1.type == :fragment)) |> List.last()
    List.last(results(events))
  end

  describe "the line of a runtime error" do
    @failing [
      {"RuntimeError", "(\n  x = 1\n  raise \"boom at \#{x}\"\n)"},
      {"MatchError", "(\n  x = {:error, 1}\n  {:ok, _} = x\n)"},
      {"ArithmeticError", "[1, 2]\n|> Enum.map(&(&1 * 2))\n|> Enum.map(fn x -> div(x, 0) end)"},
      {"FunctionClauseError", "[1, 2]\n|> Enum.map(& &1)\n|> Enum.map(fn 1 -> :one end)"}
    ]

    for trace <- [false, true], {kind, fragment} <- @failing do
      test "is the failing line for a #{kind}, trace: #{trace}" do
        {_id, pid} = open_session(%{trace: unquote(trace)})

        assert %{ok: false, error: %{kind: unquote(kind), line: 7}} =
                 last_result(pid, unquote(fragment))
      end
    end

    test "inside a function body is the line of the call that ran it" do
      {_id, pid} = open_session()
      in_fn = "x = 2\n|> List.wrap()\n|> Enum.each(fn x ->\n  _ = x\n  raise \"in fn\"\nend)"
      assert %{error: %{kind: "RuntimeError", line: 7}} = last_result(pid, in_fn)
    end

    test "inside a comprehension is the line of the for" do
      {_id, pid} = open_session()
      code = "y = 0\n|> List.wrap()\nfor x <- [1, 2],\n    x > 0 do\n  div(x, y)\nend"
      events = eval(pid, @lead <> code)
      assert %{ok: false, error: %{kind: "ArithmeticError", line: 7}} = List.last(results(events))
    end

    test "leaves the bodies of functions and comprehensions without markers" do
      code = "f = fn x ->\n  y = x\n  y + 1\nend\nfor z <- [1],\n  z > 0,\n  do: div(z, 1)"
      located = code |> Code.string_to_quoted!() |> Trace.locate(1, 0)

      forms =
        located |> Macro.prewalker() |> Enum.filter(&match?({f, _, _} when f in [:fn, :for], &1))

      assert Macro.to_string(located) =~ "BeamBridge.Trace.at(nil, 5, 0)"
      assert [_fun, _comprehension] = forms
      for form <- forms, do: refute(Macro.to_string(form) =~ "Trace.at")
    end

    test "inside an if is the line within the body" do
      {_id, pid} = open_session()
      in_if = "if a == 1 do\n  y = a\n  y + :not_a_number\nend"
      assert %{error: %{kind: "ArithmeticError", line: 7}} = last_result(pid, in_if)
    end

    test "of a one-line fragment is its line" do
      {_id, pid} = open_session()
      assert %{error: %{kind: "RuntimeError", line: 5}} = last_result(pid, "raise \"one\"")
    end

    test "in a function of an earlier block is a line of this block" do
      {_id, pid} = open_session()
      eval(pid, "f = fn x ->\n  _ = x\n  x + 1\nend")
      code = "a = 1\n(\n  b = a\n  f.(:a)\n)"
      assert [_, %{error: %{kind: "ArithmeticError", line: 4}}] = results(eval(pid, code))
    end

    test "tracking lines changes no value and no binding" do
      {_id, pid} = open_session()
      code = "(\n  x = [3, 1, 2]\n  {:ok, y} = {:ok, Enum.sort(x)}\n  for z <- y, do: z * 10\n)"
      assert [%{ok: true, value: "[10, 20, 30]"}] = results(eval(pid, code))
      assert value(pid, "{x, y}") == "{[3, 1, 2], [1, 2, 3]}"
    end
  end

  describe "trace" do
    defp steps(events), do: for(%{type: :step} = s <- events, do: {s.line, s.value})

    test "a long step value is cut between code points" do
      {_id, pid} = open_session(%{trace: true})
      # Twenty strings of `a` and 300 `é`: an inspect text far over the step
      # bound, whose cut at 2,048 bytes falls inside an `é`.
      events = eval(pid, ~s|List.duplicate("a" <> String.duplicate("é", 300), 20) \|> length()|)
      [{_, long}, {_, "20"}] = steps(events)
      assert String.valid?(long) and String.ends_with?(long, "…")
      assert byte_size(long) <= 2_048 + byte_size("…")
    end

    test "reports each stage of a pipeline bound with =, and binds it" do
      {_id, pid} = open_session(%{trace: true})
      events = eval(pid, "total = 1..3 |> Enum.map(&(&1 * 2)) |> Enum.sum()")
      assert steps(events) == [{1, "1..3"}, {1, "[2, 4, 6]"}, {1, "12"}]
      assert [%{ok: true, value: "12"}] = results(events)
      assert value(pid, "total") == "12"
    end

    test "reports the stages of a multi-line pipeline bound with =, on their lines" do
      {_id, pid} = open_session(%{trace: true})
      events = eval(pid, "total =\n  1..3\n  |> Enum.map(&(&1 * 2))\n  |> Enum.sum()")
      assert steps(events) == [{2, "1..3"}, {3, "[2, 4, 6]"}, {4, "12"}]
      assert value(pid, "total") == "12"
    end

    test "a bound pipeline that does not match still raises MatchError after its stages" do
      {_id, pid} = open_session(%{trace: true})
      events = eval(pid, "{:ok, n} = Enum.to_list(1..2) |> Enum.sum()")
      assert steps(events) == [{1, "[1, 2]"}, {1, "3"}]
      assert [%{ok: false, error: %{kind: "MatchError"}}] = results(events)
    end

    test "reports the stages of a pipeline that ends a multi-expression fragment" do
      {_id, pid} = open_session(%{trace: true})
      events = eval(pid, "(\n  x = 1..3\n  x |> Enum.map(&(&1 + 1)) |> Enum.sum()\n)")
      assert steps(events) == [{2, "1..3"}, {3, "1..3"}, {3, "[2, 3, 4]"}, {3, "9"}]
    end
  end

  describe "output" do
    # 2 + 5 * 120_000 bytes: a cut every 64 KiB lands inside a "€".
    @big ~S'IO.write("zz" <> String.duplicate("ab€", 120_000))'

    test "a big print arrives as bounded events, whole code points, in order, before the result" do
      {_id, pid} = open_session()
      events = eval(pid, @big)
      outputs = for %{type: :output, text: text} <- events, do: text

      assert length(outputs) >= div(600_002, 64 * 1024) + 1
      assert Enum.all?(outputs, &(byte_size(&1) <= 64 * 1024 and String.valid?(&1)))
      assert Enum.join(outputs) == "zz" <> String.duplicate("ab€", 120_000)

      types = Enum.map(events, & &1.type)
      assert [:fragment | rest] = types
      assert Enum.uniq(rest) == [:output, :result, :done]
    end

    test "output cut at the limit keeps whole code points" do
      {_id, pid} = open_session(%{limits: %{max_output_bytes: 10}})
      events = eval(pid, ~S'IO.write("aaaaaaaaa€")')
      assert Enum.join(for %{type: :output, text: t} <- events, do: t) == "aaaaaaaaa"
      assert [%{error: %{kind: "output_limit"}}] = results(events)
    end
  end

  describe "speculation follows the policy" do
    defp start(code, context, speculative) do
      opts = %{max_heap_bytes: 64 * 1024 * 1024, max_output_bytes: 1024, speculative: speculative}
      Evaluator.start(code, 1, context, opts)
    end

    test "a speculative evaluation of a fragment the policy flags with effects runs nothing" do
      {_, _, scope} =
        context = Evaluator.new_context("spec-#{System.unique_integer([:positive])}")

      code = "(\n  IO.write(\"early\")\n  defmodule Early do\n    def v, do: 1\n  end\n)"

      %{ref: ref} = start(code, context, true)
      assert_receive {:evaluation_result, ^ref, :declined}, 5_000
      refute_received {:evaluation_output, ^ref, _}
      assert Policy.loaded_modules(scope) == []

      %{ref: ref} = start(code, context, false)
      assert_receive {:evaluation_result, ^ref, {:ok, _, _}}, 5_000
      assert_received {:evaluation_output, ^ref, "early"}
    end

    test "a speculative evaluation of a pure fragment runs" do
      context = Evaluator.new_context("spec-#{System.unique_integer([:positive])}")
      %{ref: ref} = start("Enum.sum([1, 2])", context, true)
      assert_receive {:evaluation_result, ^ref, {:ok, %{value: "3"}, _}}, 5_000
    end

    test "a session runs a pure fragment early, and not one defining a module" do
      {_id, pid} = open_session()
      Session.request(pid, {:chunk, "x = Enum.sum([1, 2])\n"})
      assert speculating(pid) == "x = Enum.sum([1, 2])"
      Session.request(pid, :cancel)

      Session.request(pid, {:chunk, "defmodule Spec do\n  def v, do: 1\nend\n"})
      assert speculating(pid) == nil
    end

    test "a run declined after its commit runs again as the committed fragment" do
      {_id, pid} = open_session(%{limits: %{timeout_ms: 300}})
      Session.request(pid, {:chunk, "Stream.cycle([1]) |> Enum.count()\n"})
      assert speculating(pid) =~ "Stream.cycle"
      Session.request(pid, {:chunk, "1\n"})
      %{ref: ref, index: 1} = :sys.get_state(pid).running

      # What the evaluation sends when the policy flags its fragment.
      send(pid, {:evaluation_result, ref, :declined})
      assert %{index: 1, ref: rerun} = :sys.get_state(pid).running
      assert rerun != ref

      Session.request(pid, :end)

      assert [%{index: 1, error: %{kind: "timeout"}}, %{index: 2, value: "1"}] =
               results(collect(&(&1.type == :done)))
    end
  end
end
