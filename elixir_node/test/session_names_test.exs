defmodule BeamBridge.SessionNamesTest do
  # Not async: the budget tests read the node-wide atom count, which tests
  # running beside them would move.
  use ExUnit.Case, async: false

  import BeamBridge.SessionHelpers

  alias BeamBridge.{Evaluator, Policy}
  alias BeamBridge.Policy.Scope

  # Names no atom has yet: each test makes its own.
  defp fresh(prefix), do: "#{prefix}_#{System.unique_integer([:positive])}"

  defp fork(parent, parent_id, at), do: open_session(%{}, fork_of: {parent, parent_id, at})

  defp error(pid, code) do
    assert [%{ok: false, error: error}] = results(eval(pid, code))
    error
  end

  defp context(pid), do: :sys.get_state(pid).context

  # The value of the last fragment of `code`.
  defp last_value(pid, code), do: List.last(results(eval(pid, code))).value

  describe "a function name without parentheses" do
    test "is defined under its own name by def and defp, and calls reach it" do
      total = fresh("zqtotal")
      helper = fresh("zqhelper")
      {_id, pid} = open_session()

      code = """
      defmodule Foo do
        def #{total}, do: #{helper} + 1
        defp #{helper}, do: 41
      end
      """

      assert [%{ok: true}] = results(eval(pid, code))
      assert value(pid, "Foo.#{total}()") == "42"
      assert value(pid, "Foo.#{total}") == "42"
      assert value(pid, "Foo.__info__(:functions)") == "[#{total}: 0]"
      assert value(pid, "&Foo.#{total}/0") == "&Foo.#{total}/0"
    end

    test "becomes a real atom in the parsed tree, not a pool variable" do
      name = fresh("zqparsed")

      assert {:ok, quoted, _scope} =
               Policy.parse("defmodule P do\n  def #{name}, do: 1\nend", 1, Scope.new("p"))

      {:defmodule, _, [_module, [do: {:def, _, [{head, _, nil}, _body]}]]} = quoted
      assert Atom.to_string(head) == name
    end

    test "of a macro, a capture, a guard clause and an attribute works too" do
      [mac, cap, guarded, attr] = Enum.map(~w(zqmac zqcap zqguarded zqattr), &fresh/1)
      {_id, pid} = open_session()

      code = """
      defmodule Bar do
        @#{attr} 5
        defmacro #{mac}, do: 10
        def #{guarded} when true, do: @#{attr} + #{mac}()
        def #{cap}, do: &#{guarded}/0
      end
      """

      assert [%{ok: true}] = results(eval(pid, code))
      assert value(pid, "Bar.#{cap}().()") == "15"
    end

    test "is named in errors" do
      total = fresh("zqnamed")
      missing = fresh("zqmissing")
      {_id, pid} = open_session()
      assert [%{ok: true}] = results(eval(pid, "defmodule Foo do\n  def #{total}, do: 1\nend"))

      message = error(pid, "Foo.#{total}(1)").message
      assert message =~ "function Foo.#{total}/1 is undefined or private"
      refute message =~ "bb_v"

      message = error(pid, "defmodule Baz do\n  def #{total}, do: #{missing}\nend").message
      assert message =~ "#{missing}/0"
      refute message =~ "bb_v"
    end

    test "that a pattern binds stays a variable" do
      helper = fresh("zqshadowed")
      echo = fresh("zqecho")
      {_id, pid} = open_session()

      code = """
      defmodule Foo do
        def #{echo}(#{helper}), do: #{helper}
        def #{helper}, do: 0
      end
      """

      assert [%{ok: true}] = results(eval(pid, code))
      assert value(pid, "Foo.#{echo}(5)") == "5"
      assert value(pid, "Foo.#{helper}") == "0"
    end

    test "that is a variable of the session stays one at the top level" do
      name = fresh("zqsessionvar")
      {_id, pid} = open_session()
      assert value(pid, "#{name} = 3") == "3"
      assert last_value(pid, "defmodule Foo do\n  def #{name}, do: 1\nend\n#{name}") == "3"
      assert value(pid, name) == "3"
      assert value(pid, "Foo.#{name}") == "1"
    end
  end

  describe "the atom budget" do
    test "holds for a stream of 300,000 unique function names" do
      scope = Scope.new("zqbudget")
      before = :erlang.system_info(:atom_count)

      # 3,000 fragments of 100 new parenless definitions each.
      scope =
        Enum.reduce(1..3_000, scope, fn f, scope ->
          defs = Enum.map_join(1..100, "\n", &"  def zqfn_#{f}_#{&1}_u, do: 1")

          case Policy.parse("defmodule M do\n#{defs}\nend", 1, scope) do
            {:ok, _quoted, scope} -> scope
            {:error, %{kind: "denied", message: "atom budget exhausted" <> _}} -> scope
          end
        end)

      grown = :erlang.system_info(:atom_count) - before
      assert grown <= Scope.limits().session_atoms, "the atom table grew by #{grown}"
      assert scope.atoms <= Scope.limits().session_atoms
    end

    test "denies a fragment over it, which makes no atom" do
      {_id, pid} = open_session()
      base = fresh("zqover")
      defs = Enum.map_join(1..300, "\n", &"  def #{base}_#{&1}, do: 1")
      before = :erlang.system_info(:atom_count)

      assert %{kind: "denied", message: message} = error(pid, "defmodule M do\n#{defs}\nend")
      assert message =~ "atom budget exhausted"
      assert :erlang.system_info(:atom_count) == before
    end
  end

  describe "a fork" do
    test "calls a module it inherited through a value" do
      {id, pid} = open_session()
      eval(pid, "defmodule Foo do\n  def v, do: 1\nend")
      eval(pid, "defmodule Pt do\n  defstruct x: 0\nend")
      {_fork_id, fork} = fork(pid, id, 2)

      assert last_value(fork, "m = Foo\nm.v()") == "1"
      assert last_value(fork, "m = Foo\nm.v") == "1"
      assert last_value(fork, "m = Foo\napply(m, :v, [])") == "1"
      assert last_value(fork, "m = Foo\n(&m.v/0).()") == "1"
      assert last_value(fork, "m = Pt\nstruct(m, x: 2)") == "%Pt{x: 2}"
    end

    test "still cannot call, through a value, a module it did not inherit" do
      {id, pid} = open_session()
      eval(pid, "defmodule Foo do\n  def v, do: 1\nend")
      {_fork_id, fork} = fork(pid, id, 1)
      eval(pid, "defmodule Later do\n  def v, do: 2\nend")
      {_other_id, other} = open_session()
      eval(other, "defmodule Secret do\n  def v, do: 3\nend")

      later = context(pid) |> elem(2) |> Map.fetch!(:modules) |> Map.fetch!("Later")
      secret = context(other) |> elem(2) |> Map.fetch!(:modules) |> Map.fetch!("Secret")

      # A fragment cannot spell those modules; the binding hands them over
      # as if a value had carried them in.
      {binding, env, scope} = context(fork)

      for module <- [later, secret],
          code <- ["m.v()", "apply(m, :v, [])", "(&m.v/0).()", "struct(m, [])"] do
        context = {[m: module] ++ binding, env, scope}
        assert {:error, %{kind: "denied"}, _scope} = Evaluator.run(code, 1, context), code
      end

      assert {:ok, %{value: "1"}, _} = Evaluator.run("Foo.v()", 1, {binding, env, scope})
    end
  end
end
