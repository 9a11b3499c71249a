defmodule BeamBridge.PolicyTest do
  use ExUnit.Case, async: true

  alias BeamBridge.Policy
  alias BeamBridge.Policy.Scope

  # Runs fragments one after another in a fresh context, each in its own
  # process with a heap limit and a deadline, as the evaluator does.
  defp run(fragments, opts \\ []) when is_list(fragments) do
    context = {[], Code.env_for_eval(file: "fragment"), Scope.new("policy-test")}

    {results, {_, _, scope}} =
      Enum.map_reduce(fragments, context, fn code, context ->
        run_one(code, context, opts)
      end)

    {results, scope}
  end

  defp run_one(code, {binding, env, scope} = context, opts) do
    test = self()
    ref = make_ref()

    {pid, monitor} =
      spawn_monitor(fn ->
        outcome =
          case Policy.prepare(code, 1, env, scope) do
            {:ok, quoted, scope, effects} ->
              try do
                {value, binding, env} = Code.eval_quoted_with_env(quoted, binding, env)
                {:ok, value, {binding, env, scope}, effects}
              rescue
                e ->
                  kind = Policy.error_kind(e) || inspect(e.__struct__)
                  {:error, kind, Policy.humanize(Exception.message(e), scope)}
              end

            {:error, error, _scope} ->
              {:error, error.kind, error.message}
          end

        send(test, {ref, outcome})
      end)

    receive do
      {^ref, {:ok, value, context, effects}} ->
        Process.demonitor(monitor, [:flush])
        {{:ok, value, effects}, context}

      {^ref, error} ->
        Process.demonitor(monitor, [:flush])
        {error, context}

      {:DOWN, ^monitor, :process, ^pid, reason} ->
        {{:error, "exit", inspect(reason)}, context}
    after
      Keyword.get(opts, :timeout, 5_000) ->
        Process.exit(pid, :kill)
        {{:error, "timeout", "deadline"}, context}
    end
  end

  defp value(code) do
    {[result], _scope} = run([code])
    assert {:ok, value, _effects} = result
    value
  end

  defp denied(code) do
    {results, _scope} = run(List.wrap(code))
    assert {:error, "denied", message} = List.last(results)
    message
  end

  describe "allowed programs" do
    test "pipelines, captures and comprehensions" do
      assert value(
               "1..10 |> Enum.map(&(&1 * &1)) |> Enum.filter(&(rem(&1, 2) == 0)) |> Enum.sum()"
             ) ==
               220

      assert value("for x <- 1..3, y <- [:a, :b], x != 2, do: {x, y}") ==
               [{1, :a}, {1, :b}, {3, :a}, {3, :b}]

      assert value("for <<c <- \"abc\">>, into: \"\", do: <<c + 1>>") == "bcd"
      assert value("for x <- 1..4, reduce: 0 do\n acc -> acc + x\nend") == 10
    end

    test "maps, keywords, structs of the standard library and access" do
      assert value("m = %{a: %{b: 1}}; put_in(m, [:a, :b], 2) |> get_in([:a, :b])") == 2
      assert value("%{a: 1} |> Map.put(:b, 2) |> Map.to_list() |> Keyword.keys()") == [:a, :b]
      assert value("MapSet.new([3, 1, 3]) |> MapSet.size()") == 2
      assert value("m = %{name: \"x\"}; m.name") == "x"
      assert value("Date.new!(2024, 2, 29) |> Date.add(1) |> Date.to_string()") == "2024-03-01"
    end

    test "string processing, regexes and interpolation" do
      assert value(~S'"Hello, World" |> String.downcase() |> String.split(", ")') == [
               "hello",
               "world"
             ]

      assert value(~S'Regex.scan(~r/\d+/, "a1 b22 c333") |> List.flatten()') == ["1", "22", "333"]
      assert value(~S'n = 3; "#{n} items, #{String.duplicate("ab", n)}"') == "3 items, ababab"
      assert value(~S'String.pad_leading("7", 3, "0")') == "007"
    end

    test "closures, recursion through anonymous functions, with/case/cond" do
      assert value("k = 10; add = fn x -> x + k end; Enum.map([1, 2], add)") == [11, 12]

      code = """
      fib = fn
        f, n when n < 2 -> n
        f, n -> f.(f, n - 1) + f.(f, n - 2)
      end
      fib.(fib, 15)
      """

      assert value(code) == 610

      assert value("with {:ok, a} <- {:ok, 2}, b when b > 1 <- a * 2 do a + b else _ -> 0 end") ==
               6

      assert value("cond do\n 1 > 2 -> :no\n true -> :yes\nend") == :yes
    end

    test "recursion through a module the session defines, used in later fragments" do
      {results, scope} =
        run([
          """
          defmodule Maths do
            @moduledoc "session helpers"
            @base 1
            def fact(0), do: @base
            def fact(n) when n > 0, do: n * fact(n - 1)
            defp hidden, do: :ok
            def twice(f, x), do: f.(f.(x))
          end
          """,
          "Maths.fact(10)",
          "Maths.twice(&Maths.fact/1, 3)",
          "%{m: Maths} |> Map.fetch!(:m) |> then(fn m -> m.fact(5) end)"
        ])

      assert [
               {:ok, {:module, module, _, _}, :effects},
               {:ok, 3_628_800, :pure},
               {:ok, 720, :pure},
               {:ok, 120, :pure}
             ] = results

      assert Policy.modules(scope) == [module]
      assert Atom.to_string(module) == scope.namespace <> ".Maths"
      assert Policy.humanize(inspect(module), scope) == "Maths"
      assert Policy.purge([module]) == :ok
      refute Code.ensure_loaded?(module)
    end

    test "structs, nested modules and aliases of the session's modules" do
      {results, scope} =
        run([
          """
          defmodule Shapes.Circle do
            defstruct r: 1
            def area(%Shapes.Circle{r: r}), do: 3 * r * r
          end
          """,
          "alias Shapes.Circle",
          "Circle.area(%Circle{r: 2})",
          """
          defmodule Outer do
            defmodule Inner do
              def hi, do: :hi
            end
            def call, do: Inner.hi()
          end
          """,
          "{Outer.call(), Outer.Inner.hi()}"
        ])

      assert [
               {:ok, _, :effects},
               {:ok, _, :pure},
               {:ok, 12, :pure},
               {:ok, _, :effects},
               {:ok, {:hi, :hi}, :pure}
             ] = results

      assert length(Policy.modules(scope)) == 3
      Policy.purge(Policy.loaded_modules(scope))
      assert Policy.loaded_modules(scope) == []
    end

    test "a macro the session defines is expanded and its output checked" do
      {results, _scope} =
        run([
          "defmodule M do\n defmacro double(x), do: quote(do: unquote(x) * 2)\nend",
          "require M",
          "M.double(21)"
        ])

      assert {:ok, 42, :pure} = List.last(results)
    end

    test "structs built from module values, quotes and OptionParser.split" do
      assert value("m = Range; struct(m, first: 1, last: 3, step: 1) |> Enum.to_list()") ==
               [1, 2, 3]

      assert value("m = MapSet; Map.put(%{map: %{1 => []}}, :__struct__, m) |> MapSet.size()") ==
               1

      assert value("%{1..3 | last: 5} |> Enum.sum()") == 15
      assert value("x = 2; quote(do: Enum.map(1..unquote(x), & &1))") |> is_tuple()
      assert value(~S'OptionParser.split("a \'b c\'")') == ["a", "b c"]
      assert value(~S'URI.parse("https://example.com/x").port') == 443
    end

    test "output, send to self and receive" do
      assert value(~S'IO.puts("hi"); send(self(), {:n, 1}); receive do {:n, n} -> n end') == 1
    end

    test "unknown variable names get pool atoms and read back in messages" do
      {results, scope} =
        run(["zq_unheard_of_name = 41", "zq_unheard_of_name + 1", "zq_other_unknown"])

      assert [{:ok, 41, :pure}, {:ok, 42, :pure}, {:error, "CompileError", message}] = results
      assert message =~ "zq_other_unknown"
      assert %{"zq_unheard_of_name" => pool} = scope.vars
      assert Atom.to_string(pool) =~ ~r/^bb_v\d+$/
    end
  end

  describe "denied programs name the call and why" do
    test "file system, OS, ports, network" do
      assert denied(~S'File.read!("/etc/passwd")') =~ "File.read!/1 reaches the file system"
      assert denied(~S'System.cmd("id", [])') =~ "System.cmd/2 reaches the operating system"
      assert denied(~S'Port.open({:spawn, "id"}, [])') =~ "Port.open/2"
      assert denied(~S{:os.cmd('id')}) =~ ":os.cmd/1 reaches the operating system"
      assert denied(~S{:gen_tcp.connect('localhost', 80, [])}) =~ "network"
    end

    test "run-time atom makers" do
      assert denied(~S'String.to_atom("a")') =~ "String.to_atom/1 makes atoms"
      assert denied(~S{List.to_atom('a')}) =~ "List.to_atom/1"
      assert denied(~S'x = 1; :"a#{x}"') =~ ":erlang.binary_to_atom/2"
      assert denied(~S'Module.concat([Foo, "Bar"])') =~ "Module.concat/1"
      assert denied(~S':erlang.binary_to_term(<<131, 100, 0, 1, 97>>)') =~ "binary_to_term"
      assert denied("~w(a b)a") =~ "makes atoms"
    end

    test "module names from run-time data, reflection and node-wide settings" do
      assert denied(~S'OptionParser.parse(["--a"], switches: [])') =~
               "OptionParser.parse/2 turns text into atoms"

      assert denied(~S'quote(do: :"Elixir.File.Stream")') =~ "File.Stream"
      assert denied("Enumerable.__protocol__(:impls)") =~ "reflects on compiled modules"
      assert denied("Inspect.impl_for(1)") =~ "Inspect.impl_for/1 reflects"
      assert denied(":lists.module_info(:attributes)") =~ ":lists.module_info/1 reflects"
      assert denied("FunctionClauseError.blame(%FunctionClauseError{}, [])") =~ "compiled code"
      assert denied("Calendar.put_time_zone_database(Calendar.ISO)") =~ "whole node"

      requirement = ~S'm = Version.parse_requirement!("~> 1.0") |> Map.get(:__struct__)'
      assert denied(requirement <> "; struct(m, [])") =~ "a struct named Version.Requirement"

      assert denied("m = Calendar.get_time_zone_database(); f = &struct!/2; f.(m, [])") =~
               "a struct named"
    end

    test "processes, messages, the node" do
      assert denied("spawn(fn -> :ok end)") =~ "spawn/1"
      assert denied("Process.list()") =~ "Process.list/0"
      assert denied("Process.exit(self(), :kill)") =~ "Process.exit/2"
      assert denied(":erlang.halt()") =~ ":erlang.halt/0"
      assert denied("Node.list()") =~ "Node.list/0"
    end

    test "code loading, evaluation and the compiler's env" do
      assert denied(~S'Code.eval_string("1")') =~ "Code.eval_string/1 loads or evaluates code"
      assert denied("__ENV__") =~ "__ENV__"
      assert denied("Macro.expand(quote(do: 1), __ENV__)") =~ "Macro"
      assert denied("use GenServer") =~ "use"
    end

    test "module references and directives of denied modules" do
      assert denied("%File.Stream{}") =~ "File.Stream"
      assert denied("alias File, as: F") =~ "alias File"
      assert denied("import File") =~ "import File"
      assert denied("&File.read/1") =~ "&File.read/1"
    end

    test "module hooks and definitions outside modules" do
      assert denied("defmodule H do\n @on_load :x\n def x, do: :ok\nend") =~ "@on_load"
      assert denied("defmodule H2 do\n @before_compile H2\nend") =~ "@before_compile"
      assert denied("defmodule H3 do\n @x File.read!(\"/etc/hosts\")\nend") =~ "File.read!/1"
      assert denied("fn -> defmodule H4 do end end") =~ "defmodule inside a function"

      assert denied("defimpl String.Chars, for: Tuple do\n def to_string(_), do: \"\"\nend") =~
               "global"
    end

    test "a macro's output is checked like hand-written code" do
      {results, _} =
        run([
          "defmodule Evil do\n defmacro read(p), do: quote(do: File.read!(unquote(p)))\nend",
          "require Evil; Evil.read(\"/etc/passwd\")"
        ])

      assert {:error, "denied", message} = List.last(results)
      assert message =~ "File.read!/1"
    end

    test "dynamic calls are checked when they run" do
      {[result], _} = run(["m = :os; m.cmd('id')"])
      assert {:error, "denied", message} = result
      assert message =~ ":os.cmd/1"

      {[result], _} = run(["apply(String, :to_atom, [\"x\"])"])
      assert {:error, "denied", _} = result
    end
  end

  describe "atoms" do
    test "parsing 300,000 unique identifiers and atom literals grows the atom table by < 1,000" do
      scope = Scope.new("atoms")
      before = :erlang.system_info(:atom_count)

      # 3,000 fragments of 50 new variables and 50 new atom literals each.
      scope =
        Enum.reduce(0..2_999, scope, fn f, scope ->
          code =
            Enum.map_join(0..49, "\n", fn i ->
              n = f * 50 + i
              "zqvar_#{n}_u = :zqatom_#{n}_u"
            end)

          case Policy.parse(code, 1, scope) do
            {:ok, _quoted, scope} -> scope
            {:error, %{kind: "denied"}} -> scope
          end
        end)

      grown = :erlang.system_info(:atom_count) - before
      assert grown < 1_000, "the atom table grew by #{grown}"
      assert scope.atoms <= Scope.limits().session_atoms
    end

    test "the session's budget ends with a clear denial" do
      code = Enum.map_join(1..300, " ", &":zq_budget_#{&1}_#{System.unique_integer([:positive])}")

      assert {:error, %{kind: "denied", message: message}} =
               Policy.parse("[" <> String.replace(code, " ", ", ") <> "]", 1, Scope.new("b"))

      assert message =~ "atom budget exhausted"
    end

    test "a fragment that uses one variable past the cap is denied before it runs" do
      code = "(" <> Enum.map_join(1..40, "; ", &"y = #{&1}") <> ")"
      assert denied(code) =~ "more than 32 times"
    end

    test "pool names cannot be written by hand" do
      assert {:error, %{kind: "denied", message: message}} =
               Policy.parse("bb_v0 = 1", 1, Scope.new("p"))

      assert message =~ "reserved"
    end
  end

  describe "isolation" do
    test "a session cannot name another session's module" do
      {[{:ok, {:module, module, _, _}, _}], _} = run(["defmodule Secret do\n def v, do: 42\nend"])
      other = module |> Module.split() |> Enum.join(".")
      {[result], _} = run([other <> ".v()"])
      assert {:error, "denied", message} = result
      assert message =~ "Secret"
    end

    test "modules with the same name in two sessions are distinct" do
      {[{:ok, {:module, a, _, _}, _}], _} = run(["defmodule Same do\n def v, do: 1\nend"])
      {[{:ok, {:module, b, _, _}, _}], _} = run(["defmodule Same do\n def v, do: 2\nend"])
      assert a != b
      assert {a.v(), b.v()} == {1, 2}
    end
  end
end
