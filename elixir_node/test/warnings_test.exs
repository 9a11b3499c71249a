defmodule BeamBridge.WarningsTest do
  # Not async: some tests point the router's forwarding at a test device or
  # restart the router, which would catch or disturb other modules' writes.
  use ExUnit.Case, async: false

  import BeamBridge.SessionHelpers
  import ExUnit.CaptureIO

  alias BeamBridge.{IOProxy, StandardError}

  # A name that is not an atom yet, so that the parser gives it a pool atom.
  defp fresh_name(prefix), do: "#{prefix}_#{System.unique_integer([:positive])}"

  # Runs `fun` with the router forwarding to a fresh StringIO; returns
  # `{fun's value, what reached that device}`.
  defp with_device(fun) do
    {:ok, device} = StringIO.open("")
    previous = StandardError.put_device(device)

    try do
      value = fun.()
      {value, StringIO.flush(device)}
    after
      StandardError.put_device(previous)
      StringIO.close(device)
    end
  end

  defp router, do: Process.whereis(:standard_error)

  defp supervised_router do
    Enum.find_value(Supervisor.which_children(BeamBridge.Supervisor), fn
      {StandardError, pid, _, _} -> pid
      _ -> nil
    end)
  end

  # Spawns a process whose group leader is `leader` and runs `fun` there;
  # the value comes back as `{:ran, value}`.
  defp run_under(leader, fun) do
    test = self()

    spawn(fn ->
      Process.group_leader(self(), leader)
      send(test, {:ran, fun.()})
    end)
  end

  # The output a bare proxy sent for `ref`, up to its result.
  defp proxy_output(ref, acc \\ "") do
    receive do
      {:evaluation_output, ^ref, text} -> proxy_output(ref, acc <> text)
      {:evaluation_result, ^ref, _} -> acc
    after
      5_000 -> flunk("the proxy sent no result")
    end
  end

  describe "compiler warnings of a fragment" do
    test "arrive as output in the user's names, before the result" do
      {_id, pid} = open_session()
      name = fresh_name("count")

      {events, leaked} = with_device(fn -> eval(pid, "f = fn -> #{name} = 1; :ok end") end)

      assert [_fragment, %{type: :output, text: text}, %{type: :result, ok: true}, _done] = events

      assert text =~ ~s(warning: variable "#{name}" is unused)
      refute text =~ "bb_v"
      refute leaked =~ "is unused"
    end

    test "of an undefined variable name the user's variable, and the fragment still fails" do
      {_id, pid} = open_session()
      name = fresh_name("total")

      events = eval(pid, "#{name} + 1")

      assert [text] = for(%{type: :output, text: t} <- events, do: t)
      assert text =~ ~s{variable "#{name}" does not exist and is being expanded to "#{name}()"}
      refute text =~ "bb_v"
      assert [%{ok: false, error: %{kind: "CompileError", message: message}}] = results(events)
      assert message =~ "undefined function #{name}/0"
    end

    test "of a module, from the processes that compile it, drop the session's namespace" do
      {_id, pid} = open_session()
      name = fresh_name("step")
      code = "defmodule Quiet do\n  defp helper, do: 1\n  def run do\n    #{name} = 1\n  end\nend"

      events = eval(pid, code)

      text = Enum.join(for %{type: :output, text: t} <- events, do: t)
      assert text =~ ~s(warning: variable "#{name}" is unused)
      assert text =~ "fragment:4: Quiet.run/0"
      assert text =~ "warning: function helper/0 is unused\n  fragment:2"
      refute text =~ "BeamBridge.User"
      refute text =~ "bb_v"
      assert [%{ok: true}] = results(events)
    end

    test "count against the output limit, and none reach the node's standard error" do
      {_id, pid} = open_session(%{limits: %{max_output_bytes: 300}})
      names = for i <- 1..40, do: fresh_name("v#{i}")
      body = Enum.map_join(names, "; ", &"#{&1} = 1")

      {events, leaked} = with_device(fn -> eval(pid, "fn -> #{body}; :ok end") end)

      printed = Enum.join(for %{type: :output, text: t} <- events, do: t)
      assert byte_size(printed) == 300
      assert Enum.any?(names, &(printed =~ ~s(warning: variable "#{&1}" is unused)))
      assert [%{ok: false, error: %{kind: "output_limit"}}] = results(events)
      refute leaked =~ "is unused"
      refute leaked =~ "bb_v"
    end
  end

  describe "the router of standard error" do
    test "forwards a write of a process outside evaluations to the original device" do
      assert {:ok, "from the node\n"} = with_device(fn -> IO.puts(:stderr, "from the node") end)
    end

    test "holds the name by default and forwards to the device that held it before" do
      assert router() == supervised_router()
      assert StandardError.original() != router()
      assert is_pid(StandardError.original())
    end

    test "passes unicode, binary, formatted and {mod, fun, args} writes to a proxy" do
      ref = make_ref()
      proxy = IOProxy.start(self(), ref, 1_000)

      run_under(proxy, fn ->
        [
          IO.write(:stderr, "é "),
          IO.binwrite(:stderr, "bin "),
          :io.format(:standard_error, "~ts ~p~n", ["ü", 42]),
          :io.request(:standard_error, {:put_chars, :unicode, String, :duplicate, ["x", 3]}),
          :io.request(:standard_error, {:put_chars, :unicode, :no_such_module, :f, []})
        ]
      end)

      assert_receive {:ran, replies}
      assert replies == [:ok, :ok, :ok, :ok, {:error, :put_chars}]
      IOProxy.finish(proxy, :done)
      assert proxy_output(ref) == "é bin ü 42\nxxx"
    end

    test "answers a write whose proxy is gone instead of leaving it waiting" do
      proxy = IOProxy.start(self(), make_ref(), 1_000)
      monitor = Process.monitor(proxy)
      IOProxy.stop(proxy)
      assert_receive {:DOWN, ^monitor, _, _, _}

      {{:ran, reply}, leaked} =
        with_device(fn ->
          run_under(proxy, fn -> :io.request(:standard_error, {:put_chars, :unicode, "gone"}) end)
          assert_receive {:ran, _} = ran
          ran
        end)

      assert reply == {:error, :terminated}
      assert leaked == ""
    end

    test "answers a write whose proxy ends while handling it" do
      proxy = IOProxy.start(self(), make_ref(), 1_000)
      # The device runs the function of a {mod, fun, args} write itself.
      request = {:put_chars, :unicode, __MODULE__, :hold, [self()]}
      run_under(proxy, fn -> :io.request(:standard_error, request) end)

      assert_receive {:held, ^proxy}
      Process.exit(proxy, :kill)

      assert_receive {:ran, {:error, :terminated}}
    end

    test "leaves capture_io(:stderr) working and holds the name again afterwards" do
      before = router()
      assert capture_io(:stderr, fn -> IO.write(:stderr, "captured") end) == "captured"
      assert router() == before
    end

    test "restarted after a crash, takes the name back and keeps the original device" do
      original = StandardError.original()
      old = router()
      monitor = Process.monitor(old)

      Process.exit(old, :kill)
      assert_receive {:DOWN, ^monitor, _, _, _}

      new = supervised_router()
      assert is_pid(new) and new != old
      assert router() == new
      assert StandardError.original() == original
      assert {:ok, "again\n"} = with_device(fn -> IO.puts(:stderr, "again") end)
    end
  end

  @doc false
  def hold(test) do
    send(test, {:held, self()})

    receive do
      :release -> ""
    after
      5_000 -> ""
    end
  end
end
