defmodule BeamBridge.SessionModulesTest do
  use ExUnit.Case, async: true

  import BeamBridge.SessionHelpers
  alias BeamBridge.Session

  # A fork made the way the gateway makes one: the new session fetches the
  # context from its parent itself.
  defp fork(parent, parent_id, at), do: open_session(%{}, fork_of: {parent, parent_id, at})

  defp define(pid, name, v) do
    assert [%{ok: true}] = results(eval(pid, "defmodule #{name} do\n  def v, do: #{v}\nend"))
  end

  defp namespace(pid) do
    {_, _, scope} = :sys.get_state(pid).context
    scope.namespace
  end

  defp loaded_in(namespace) do
    prefix = namespace <> "."

    for {module, _} <- :code.all_loaded(),
        String.starts_with?(Atom.to_string(module), prefix),
        do: module
  end

  defp close(pid, id) do
    Session.request(pid, :close)
    assert_receive {:bridge_event, %{type: :closed, session: ^id}}
  end

  describe "fork" do
    test "a fork and its parent that both define Foo each see their own" do
      {id, pid} = open_session()
      eval(pid, "x = 0")
      {_fork_id, fork} = fork(pid, id, 1)
      define(pid, "Foo", 1)
      define(fork, "Foo", 2)
      assert value(pid, "Foo.v()") == "1"
      assert value(fork, "Foo.v()") == "2"
    end

    test "a fork that redefines an inherited Foo leaves the parent's alone" do
      {id, pid} = open_session()
      define(pid, "Foo", 1)
      {_fork_id, fork} = fork(pid, id, 1)
      assert value(fork, "Foo.v()") == "1"
      define(fork, "Foo", 2)
      assert value(fork, "Foo.v()") == "2"
      assert value(pid, "Foo.v()") == "1"
    end

    test "the parent's close or rewind leaves the fork's inherited Foo working" do
      {id, pid} = open_session()
      define(pid, "Foo", 1)
      {_fork_id, fork} = fork(pid, id, 1)
      Session.request(pid, {:rewind, 0})
      assert_receive {:bridge_event, %{type: :rewound, to: 0}}
      assert value(fork, "Foo.v()") == "1"
      close(pid, id)
      assert value(fork, "Foo.v()") == "1"
    end

    test "the fork's close leaves the parent's Foo working" do
      {id, pid} = open_session()
      define(pid, "Foo", 1)
      {fork_id, fork} = fork(pid, id, 1)
      define(fork, "Foo", 2)
      close(fork, fork_id)
      assert value(pid, "Foo.v()") == "1"
    end

    test "closing every session of a family unloads all their modules" do
      {id, pid} = open_session()
      define(pid, "Foo", 1)
      {fork_id, fork} = fork(pid, id, 1)
      {grandchild_id, grandchild} = fork(fork, fork_id, 0)
      define(fork, "Foo", 2)
      define(fork, "Bar", 3)
      define(grandchild, "Baz", 4)
      spaces = Enum.map([pid, fork, grandchild], &namespace/1)
      assert Enum.map(spaces, &length(loaded_in(&1))) == [1, 2, 1]

      close(pid, id)
      assert length(loaded_in(hd(spaces))) == 1
      close(fork, fork_id)
      close(grandchild, grandchild_id)
      assert Enum.flat_map(spaces, &loaded_in/1) == []
    end
  end

  describe "rewind" do
    test "past a redefinition brings back the older version" do
      {_id, pid} = open_session()
      define(pid, "Foo", 1)
      define(pid, "Foo", 2)
      assert value(pid, "Foo.v()") == "2"
      Session.request(pid, {:rewind, 1})
      assert_receive {:bridge_event, %{type: :rewound, to: 1}}
      assert value(pid, "Foo.v()") == "1"
      assert length(loaded_in(namespace(pid))) == 1
    end

    test "to before the first definition leaves Foo undefined and unloaded" do
      {_id, pid} = open_session()
      define(pid, "Foo", 1)
      assert [_] = loaded_in(namespace(pid))
      Session.request(pid, {:rewind, 0})
      assert_receive {:bridge_event, %{type: :rewound, to: 0}}
      assert loaded_in(namespace(pid)) == []
      assert [%{ok: false}] = results(eval(pid, "Foo.v()"))
      define(pid, "Foo", 3)
      assert value(pid, "Foo.v()") == "3"
    end
  end

  describe "a fragment that does not succeed" do
    test "unloads the module it defined and keeps the one before" do
      {_id, pid} = open_session()
      define(pid, "Foo", 1)

      code =
        "(\n  defmodule Foo do\n    def v, do: 2\n  end\n  IO.puts(Foo.v())\n  Foo.v() + :a\n)"

      events = eval(pid, code)
      assert [%{text: "2\n"}] = for(%{type: :output} = o <- events, do: o)
      assert [%{ok: false, error: %{kind: "ArithmeticError"}}] = results(events)
      assert value(pid, "Foo.v()") == "1"
      assert length(loaded_in(namespace(pid))) == 1
    end

    test "unloads a module defined by a fragment that is cancelled" do
      {_id, pid} = open_session()

      code =
        "(\n  defmodule Foo do\n    def v, do: 1\n  end\n" <>
          "  IO.puts(Foo.v())\n  Process.sleep(:infinity)\n)"

      Session.request(pid, {:eval, code})
      assert_receive {:bridge_event, %{type: :output, text: "1\n"}}
      assert [_] = loaded_in(namespace(pid))
      Session.request(pid, :cancel)
      assert [%{error: %{kind: "cancelled"}}] = results(collect(&(&1.type == :done)))
      assert loaded_in(namespace(pid)) == []
      assert [%{ok: false}] = results(eval(pid, "Foo.v()"))
    end

    test "unloads a module defined by a fragment that times out" do
      {_id, pid} = open_session(%{limits: %{timeout_ms: 300}})
      code = "(\n  defmodule Foo do\n    def v, do: 1\n  end\n  Process.sleep(:infinity)\n)"
      assert [%{error: %{kind: "timeout"}}] = results(eval(pid, code))
      assert loaded_in(namespace(pid)) == []
    end
  end

  describe "names" do
    test "a redefined module and an inherited one read as the session named them" do
      {id, pid} = open_session()
      define(pid, "Foo", 1)
      code = "defmodule Foo do\n  defstruct a: 1\n  def me(), do: __MODULE__\nend"
      assert [%{value: "{:module, Foo, " <> _}] = results(eval(pid, code))
      assert value(pid, "{inspect(Foo), Foo.me(), %Foo{}}") == ~S'{"Foo", Foo, %Foo{a: 1}}'

      assert [%{error: %{message: message}}] = results(eval(pid, "Foo.nope()"))
      assert message == "function Foo.nope/0 is undefined or private"

      {_fork_id, fork} = fork(pid, id, 2)
      assert value(fork, "{inspect(Foo), Foo.me(), %Foo{}}") == ~S'{"Foo", Foo, %Foo{a: 1}}'
      assert [%{error: %{message: ^message}}] = results(eval(fork, "Foo.nope()"))
    end
  end

  describe "the queue cap" do
    test "applies to the fragments one chunk splits into; what was accepted stays" do
      {_id, pid} = open_session(%{}, caps: %{max_queued_fragments: 2})
      Session.request(pid, {:chunk, "Process.sleep(:infinity)\n1\n"})
      assert_receive {:bridge_event, %{type: :fragment, index: 1}}
      Session.request(pid, {:chunk, "2\n3\n4\n5\n"})
      assert_receive {:bridge_event, %{type: :error, code: :limit, message: message}}
      assert message =~ "waiting to run"
      refute_received {:bridge_event, %{type: :fragment}}

      # The pending "1" was kept: the next chunk commits it.
      Session.request(pid, {:chunk, "2\n"})
      assert_receive {:bridge_event, %{type: :fragment, index: 2, code: "1"}}
    end

    test "refuses one big chunk whole, with the default cap" do
      {_id, pid} = open_session()
      Session.request(pid, {:eval, String.duplicate("x = 1\n", 5_000)})
      assert_receive {:bridge_event, %{type: :error, code: :limit, message: message}}
      assert message =~ "waiting to run"
      refute_received {:bridge_event, %{type: :fragment}}
      assert [%{index: 1, value: "2"}] = results(eval(pid, "1 + 1"))
    end
  end
end
