defmodule BeamBridge.HostileTest do
  @moduledoc """
  Hostile programs, one test each. Every program runs in a real session
  of its own (policy, heap limit, deadline); each test then checks the kind
  of the outcome and that the node's processes and a bystander session,
  evaluating throughout, still work.

  Not async: the memory and CPU bombs would starve the timing of tests
  running beside them.
  """

  use ExUnit.Case, async: false

  alias BeamBridge.Session

  @heap_bytes 64 * 1024 * 1024
  @deadline_ms 1_500

  # {name, code, expected kind}
  @programs [
    # file system
    {"reads a file", ~S'File.read!("/etc/passwd")', "denied"},
    {"writes a file", ~S'File.write!("/tmp/bb_owned", "x")', "denied"},
    {"lists a directory", ~S'File.ls!("/")', "denied"},
    {"reads through :file", ~S{:file.read_file('/etc/passwd')}, "denied"},
    {"writes through a File.Stream struct",
     ~S'Enum.into(["x"], %File.Stream{path: "/tmp/bb_owned", modes: [:write], line_or_bytes: :line, raw: true})',
     "denied"},
    {"globs the file system", ~S'Path.wildcard("/etc/*")', "denied"},
    # network
    {"opens a TCP connection", ~S{:gen_tcp.connect('example.com', 80, [])}, "denied"},
    {"resolves a host name", ~S{:inet.gethostbyname('example.com')}, "denied"},
    {"opens a socket", ~S'(:socket.open(:inet, :stream, :tcp))', "denied"},
    {"makes an HTTP request", ~S{:httpc.request('http://example.com')}, "denied"},
    # OS and ports
    {"runs a shell command", ~S'System.cmd("id", [])', "denied"},
    {"runs :os.cmd", ~S{:os.cmd('id')}, "denied"},
    {"opens a port", ~S'Port.open({:spawn, "sh"}, [:binary])', "denied"},
    {"reads the environment", ~S'System.get_env("HOME")', "denied"},
    # atoms
    {"String.to_atom", ~S'String.to_atom("bb_hostile")', "denied"},
    # Elixir makes an atom `_x@n` for the n-th binding of `x` in a fragment.
    {"rebinds one variable thousands of times",
     "(" <> Enum.map_join(1..5_000, "; ", &"x = #{&1}") <> ")", "denied"},
    {"List.to_atom", ~S{List.to_atom('bb_hostile')}, "denied"},
    {":erlang.binary_to_atom", ~S':erlang.binary_to_atom("bb_hostile", :utf8)', "denied"},
    {"an interpolated atom", ~S'n = 1; :"bb_hostile_#{n}"', "denied"},
    {"Module.concat with a dynamic part", ~S'n = "X"; Module.concat(Enum, n)', "denied"},
    {"binary_to_term", ~S':erlang.binary_to_term(:erlang.term_to_binary(1))', "denied"},
    {"String.to_existing_atom as a module finder", ~S'String.to_existing_atom("Elixir.File")',
     "denied"},
    {"a word list of atoms", "~w(bb_h1 bb_h2)a", "denied"},
    # Module names found at run time, ready for a forged `__struct__`.
    {"List.to_existing_atom as a module finder", ~S{List.to_existing_atom('Elixir.File.Stream')},
     "denied"},
    {":erlang.binary_to_existing_atom as a module finder",
     ~S':erlang.binary_to_existing_atom("Elixir.File.Stream", :utf8)', "denied"},
    {"Module.safe_concat as a module finder", ~S'Module.safe_concat(["File", "Stream"])',
     "denied"},
    {"OptionParser.next as a module finder", ~S'OptionParser.next(["--Elixir.File.Stream"], [])',
     "denied"},
    {"a quoted atom as a module finder", ~S'quote(unquote: false, do: :"Elixir.IO.Stream")',
     "denied"},
    {"a module's compiled attributes", "Enum.__info__(:attributes)", "denied"},
    {"a forged File.Stream built with Map.put",
     ~S'fields = %{path: "/etc/hostname", modes: [:read], line_or_bytes: :line, raw: true}' <>
       ~S'; Map.put(fields, :__struct__, :"Elixir.File.Stream") |> Enum.to_list()', "denied"},
    {"hundreds of new atom literals",
     "[" <> Enum.map_join(1..400, ", ", &":bb_hostile_literal_#{&1}") <> "]", "denied"},
    # memory
    {"String.duplicate a gigabyte", ~S'String.duplicate("x", 1_000_000_000)', "memory"},
    {":binary.copy a gigabyte", ~S':binary.copy("x", 1_000_000_000)', "memory"},
    {"List.duplicate a billion", "List.duplicate(0, 1_000_000_000)", "memory"},
    {"Tuple.duplicate a billion", "Tuple.duplicate(0, 1_000_000_000)", "memory"},
    {"a bitstring with a dynamic size", "n = 8_000_000_000; <<0::size(n)>>", "memory"},
    {"binary doubling", ~S'Enum.reduce(1..40, "x", fn _, a -> a <> a end)', "memory"},
    {"a huge power", "7 ** 30_000_000", "memory"},
    {"Integer.pow", "Integer.pow(7, 3_000_000)", "memory"},
    {"a huge shift", "import Bitwise; 1 <<< 4_000_000_000", "memory"},
    {"padding a gigabyte", ~S'String.pad_leading("", 1_000_000_000)', "memory"},
    {"a list bomb", "Enum.to_list(1..100_000_000)", "memory"},
    {"an endless stream into a list", "Stream.cycle([1]) |> Enum.to_list()", "memory"},
    {"structural sharing printed as chardata",
     ~S'x = Enum.reduce(1..40, ["x"], fn _, a -> [a, a] end); IO.puts(x)', "memory"},
    {"structural sharing sent to itself",
     "x = Enum.reduce(1..40, 1, fn _, a -> {a, a} end); send(self(), x)", "memory"},
    # loops and recursion
    {"an infinite loop", ["defmodule Spin do\n def f(n), do: f(n + 1)\nend", "Spin.f(0)"],
     "timeout"},
    {"waiting forever", "receive do\n :never -> :ok\nend", "timeout"},
    {"deep recursion", ["defmodule Deep do\n def f(n), do: 1 + f(n + 1)\nend", "Deep.f(0)"],
     ["memory", "timeout"]},
    # processes
    {"spawn", "spawn(fn -> :ok end)", "denied"},
    {"spawn_link in a loop", "for _ <- 1..1_000_000, do: spawn_link(fn -> :ok end)", "denied"},
    {"Task.async", "Task.async(fn -> 1 end)", "denied"},
    {"Agent.start", "Agent.start(fn -> 1 end)", "denied"},
    {"spawn_opt through :erlang", ":erlang.spawn_opt(fn -> 1 end, [])", "denied"},
    {"trapping exits", "Process.flag(:trap_exit, true)", "denied"},
    # apply, captures, Function, dynamic modules
    {"apply on File", ~S'apply(File, :read!, ["/etc/passwd"])', "denied"},
    {"apply with a module in a variable", ~S'm = :os; apply(m, :cmd, [~c"id"])', "denied"},
    {":erlang.apply", ~S':erlang.apply(:os, :cmd, [~c"id"])', "denied"},
    {"Function.capture", "Function.capture(:os, :cmd, 1)", "denied"},
    {":erlang.make_fun", ":erlang.make_fun(:os, :cmd, 1)", "denied"},
    {"a capture on a variable module", "m = :os; &m.cmd/1", "denied"},
    {"a dynamic call through a map", ~S'%{m: System}.m.halt()', "denied"},
    {"a dynamic call on a module in a variable", ~S'm = :erlang; m.halt()', "denied"},
    {"a user macro that generates a denied call",
     [
       "defmodule Sneak do\n defmacro go, do: quote(do: System.halt())\nend",
       "require Sneak",
       "Sneak.go()"
     ], "denied"},
    # code and module evaluation
    {"Code.eval_string", ~S'Code.eval_string("System.halt()")', "denied"},
    {"Code.compile_string", ~S'Code.compile_string("defmodule X do end")', "denied"},
    {"Module.create", ~S'Module.create(X, quote(do: nil), __ENV__)', "denied"},
    {":erl_eval", ~S':erl_eval.exprs([], [])', "denied"},
    {"a module attribute that runs code", "defmodule A1 do\n @x File.read!(\"/etc/passwd\")\nend",
     "denied"},
    {"an @on_load hook", "defmodule A2 do\n @on_load :go\n def go, do: :ok\nend", "denied"},
    {"defmodule inside a function", "f = fn -> defmodule A3 do end end", "denied"},
    {"a protocol implementation",
     "defimpl String.Chars, for: Tuple do\n def to_string(_), do: \"\"\nend", "denied"},
    # messages and other processes
    {"send to a registered name", "send(BeamBridge.SessionSupervisor, :boom)", "denied"},
    {"GenServer.call to the supervisor", "GenServer.call(BeamBridge.SessionSupervisor, :x)",
     "denied"},
    {"Process.whereis", "Process.whereis(BeamBridge.SessionRegistry)", "denied"},
    {":sys.get_state", ":sys.get_state(BeamBridge.SessionRegistry)", "denied"},
    {"listing processes", "Process.list()", "denied"},
    {"reading another process's info", ":erlang.processes() |> hd() |> Process.info()", "denied"},
    {"writing to another IO device", ~S'IO.puts(:stderr, "x")', "denied"},
    # killing processes
    {"Process.exit with :kill", "Process.exit(self(), :kill)", "denied"},
    {":erlang.exit/2", ":erlang.exit(self(), :kill)", "denied"},
    {"changing the group leader", "Process.group_leader()", "denied"},
    # shared state
    {":ets.new", ":ets.new(:bb_t, [:public])", "denied"},
    {":persistent_term.put", ":persistent_term.put(:bb, 1)", "denied"},
    {":counters.new", ":counters.new(100_000_000, [])", "denied"},
    {":atomics.new", ":atomics.new(100_000_000, [])", "denied"},
    {"Application.put_env", "Application.put_env(:beam_bridge, :secret, \"x\")", "denied"},
    # the VM
    {":erlang.halt", ":erlang.halt()", "denied"},
    {"System.halt", "System.halt(1)", "denied"},
    {":init.stop", ":init.stop()", "denied"},
    {"System.stop", "System.stop()", "denied"},
    {"__ENV__", "__ENV__.file", "denied"},
    {"tracing", ":erlang.trace(:all, true, [:call])", "denied"},
    {"purging code", ":code.purge(BeamBridge.Session)", "denied"},
    {"loading a binary module", ":code.load_binary(:x, 'x', <<>>)", "denied"}
  ]

  defmodule Bystander do
    @moduledoc """
    A session that keeps evaluating while a hostile program runs: its
    driver process owns it and sends `n = n + 1` again as soon as the last
    block is done, checking every value, so the test's mailbox holds only
    the hostile session's events.
    """

    alias BeamBridge.Session

    @doc "Starts a driver, its session evaluating from the start."
    def start do
      test = self()
      driver = spawn_link(fn -> init(test) end)

      receive do
        {:bystander_ready, ^driver} -> driver
      end
    end

    @doc "Blocks until the bystander has finished `more` blocks since now; its report."
    def progress(driver, more \\ 1) do
      send(driver, {:report, self(), more})

      receive do
        {:bystander_report, ^driver, report} -> report
      after
        15_000 -> raise "the bystander finished no block within 15 s"
      end
    end

    @doc "Stops the driver and waits until its session is gone too."
    def stop({driver, session}) do
      watch = Process.monitor(session)
      Process.exit(driver, :kill)
      receive do: ({:DOWN, ^watch, :process, _, _} -> :ok)
    end

    @doc "The driver's session process."
    def session(driver) do
      send(driver, {:session, self()})
      receive do: ({:bystander_session, ^driver, pid} -> pid)
    end

    @doc "The value of `code` evaluated in the bystander's session, between its blocks."
    def eval(driver, code) do
      send(driver, {:eval, self(), code})

      receive do
        {:bystander_value, ^driver, value} -> value
      after
        15_000 -> raise "the bystander did not evaluate #{inspect(code)} within 15 s"
      end
    end

    defp init(test) do
      id = "bystander-#{System.unique_integer([:positive])}"
      {:ok, pid} = Session.start(id, owner: self())
      receive do: ({:bridge_event, %{type: :opened}} -> :ok)
      Session.request(pid, {:eval, "n = 0"})
      st = %{pid: pid, blocks: 0, n: 0, failures: [], waiting: [], evals: []}
      st = await_done(st, fn _value -> :ok end)
      send(test, {:bystander_ready, self()})
      loop(st)
    end

    defp loop(%{evals: [{from, code} | rest]} = st) do
      Session.request(st.pid, {:eval, code})
      loop(await_done(%{st | evals: rest}, &send(from, {:bystander_value, self(), &1})))
    end

    defp loop(st) do
      expected = Integer.to_string(st.n + 1)
      Session.request(st.pid, {:eval, "n = n + 1"})

      st =
        await_done(st, fn
          ^expected -> :ok
          other -> send(self(), {:failure, {expected, other}})
        end)

      loop(%{st | n: st.n + 1})
    end

    # Waits for the block's result and `done`, answering reports meanwhile.
    defp await_done(st, on_value) do
      receive do
        {:bridge_event, %{type: :result} = result} ->
          on_value.(if(result.ok, do: result.value, else: result.error))
          await_done(st, on_value)

        {:bridge_event, %{type: :done}} ->
          blocks = st.blocks + 1
          {due, waiting} = Enum.split_with(st.waiting, fn {_from, at} -> blocks >= at end)
          st = %{st | blocks: blocks, waiting: waiting, failures: failures(st.failures)}
          for {from, _at} <- due, do: send(from, {:bystander_report, self(), report(st)})
          st

        {:report, from, more} ->
          await_done(%{st | waiting: [{from, st.blocks + more} | st.waiting]}, on_value)

        {:eval, from, code} ->
          await_done(%{st | evals: st.evals ++ [{from, code}]}, on_value)

        {:session, from} ->
          send(from, {:bystander_session, self(), st.pid})
          await_done(st, on_value)

        {:bridge_event, _other} ->
          await_done(st, on_value)
      end
    end

    defp failures(acc) do
      receive do
        {:failure, failure} -> failures([failure | acc])
      after
        0 -> acc
      end
    end

    defp report(st), do: %{blocks: st.blocks, failures: Enum.reverse(st.failures)}
  end

  setup do
    bystander = Bystander.start()
    session = Bystander.session(bystander)
    on_exit(fn -> Bystander.stop({bystander, session}) end)
    Bystander.progress(bystander)
    %{bystander: bystander}
  end

  for {name, code, kind} <- @programs do
    @code code
    @kind kind
    test "#{name} ends as #{Enum.join(List.wrap(kind), " or ")}", %{bystander: bystander} do
      assert {kind, message} = run(@code)
      assert kind in List.wrap(@kind), "expected #{inspect(@kind)}, got #{kind}: #{message}"
      assert message != ""
      assert_node_fine(bystander)
    end
  end

  test "binding a structurally shared term ends as memory, not a node-wide copy",
       %{bystander: bystander} do
    assert {"memory", message} = run(~S'x = Enum.reduce(1..40, 1, fn _, a -> {a, a} end)')
    assert message =~ "share structure"
    assert_node_fine(bystander)
  end

  test "printing a structurally shared term is bounded", %{bystander: bystander} do
    code = ~S'Enum.reduce(1..40, "x", fn _, a -> {a, a} end) |> inspect() |> byte_size()'
    assert {"ok", size} = run(code)
    assert String.to_integer(size) < 1_000_000
    assert_node_fine(bystander)
  end

  describe "escapes an audit found" do
    # File.Stream is a struct of a denied module: a map that names it in
    # `__struct__` reads or writes files through Enumerable and Collectable.
    @read_fields ~S'path: "/etc/hostname", modes: [:read], line_or_bytes: :line, raw: true'

    test "OptionParser turning a switch into File.Stream to read a file is denied",
         %{bystander: bystander} do
      code = """
      {[{m, _}], _, _} = OptionParser.parse(["--Elixir.File.Stream"], switches: [])
      Enum.to_list(%{__struct__: m, #{@read_fields}})
      """

      assert denied(code, bystander) =~ "OptionParser.parse/2 turns text into atoms"
    end

    test "OptionParser turning a switch into File.Stream to write a file is denied",
         %{bystander: bystander} do
      path = Path.join(System.tmp_dir!(), "bb_owned_#{System.unique_integer([:positive])}")

      code = """
      {[{m, _}], _, _} = OptionParser.parse(["--Elixir.File.Stream"], switches: [])
      stream = %{__struct__: m, path: #{inspect(path)}, modes: [:write],
                 line_or_bytes: :line, raw: true}
      Enum.into(["owned"], stream)
      """

      assert denied(code, bystander) =~ "OptionParser.parse/2"
      refute File.exists?(path)
    end

    test "OptionParser with allow_nonexistent_atoms makes no atoms", %{bystander: bystander} do
      before = :erlang.system_info(:atom_count)

      outcomes =
        for batch <- 1..2 do
          run("""
          args = for i <- 1..20_000, do: "--bb-hostile-#{batch}-\#{i}"
          OptionParser.parse(args, switches: [], allow_nonexistent_atoms: true)
          """)
        end

      grown = :erlang.system_info(:atom_count) - before
      assert grown < 1_000, "the atom table grew by #{grown}"

      for outcome <- outcomes do
        assert {"denied", message} = outcome
        assert message =~ "OptionParser.parse/2 turns text into atoms"
      end

      assert_node_fine(bystander)
    end

    test "a session cannot change how another session inspects values",
         %{bystander: bystander} do
      on_exit(fn -> Inspect.Opts.default_inspect_fun(&Inspect.inspect/2) end)
      outcome = run(~S'Inspect.Opts.default_inspect_fun(fn _term, _opts -> "owned" end)')

      assert Bystander.eval(bystander, "inspect(%{a: [1]})") == ~S'"%{a: [1]}"'

      assert {"denied", message} = outcome
      assert message =~ "Inspect.Opts.default_inspect_fun/1 reads or sets"
      assert_node_fine(bystander)
    end

    test "Calendar.put_time_zone_database is denied", %{bystander: bystander} do
      on_exit(fn -> Calendar.put_time_zone_database(Calendar.UTCOnlyTimeZoneDatabase) end)
      code = "Calendar.put_time_zone_database(Calendar.ISO)"
      assert denied(code, bystander) =~ "the time zone database of the whole node"
      assert Calendar.get_time_zone_database() == Calendar.UTCOnlyTimeZoneDatabase
    end

    test "URI.default_port/2 is denied", %{bystander: bystander} do
      assert denied(~S'URI.default_port("bb-hostile", 1)', bystander) =~
               "URI.default_port/2 reads or sets a scheme's default port"

      assert URI.default_port("bb-hostile") == nil
    end

    test "an atom literal inside quote cannot name File.Stream", %{bystander: bystander} do
      code =
        ~s'm = quote(do: :"Elixir.File.Stream")\nEnum.to_list(%{__struct__: m, #{@read_fields}})'

      assert denied(code, bystander) =~ "File.Stream is not on the sandbox's allowlist"
    end

    test "a protocol's list of impls cannot hand out File.Stream", %{bystander: bystander} do
      path = Path.join(System.tmp_dir!(), "bb_owned_#{System.unique_integer([:positive])}")

      code = """
      {:consolidated, impls} = Collectable.__protocol__(:impls)
      m = Enum.find(impls, &(inspect(&1) == "File.Stream"))
      fields = [path: #{inspect(path)}, modes: [:write], line_or_bytes: :line, raw: true]
      Enum.into(["owned"], struct(m, fields))
      """

      assert denied(code, bystander) =~ "Collectable.__protocol__/1 reflects on compiled modules"
      refute File.exists?(path)
    end

    test "Exception.blame_mfa cannot read compiled code", %{bystander: bystander} do
      assert denied("Exception.blame_mfa(Enum, :into, [1, 2])", bystander) =~
               "Exception.blame_mfa/3 reads modules' compiled code"
    end

    test "a struct named by a module value the fragment was handed is checked when it runs",
         %{bystander: bystander} do
      # Calendar.UTCOnlyTimeZoneDatabase is harmless, but not on the
      # allowlist: the same check stops any module a value carries.
      for build <- [
            "%{__struct__: m}",
            "%{1..2 | __struct__: m}",
            "Map.put(%{}, :__struct__, m)",
            "struct(m, [])"
          ] do
        code = "m = Calendar.get_time_zone_database()\n" <> build

        module = "Calendar.UTCOnlyTimeZoneDatabase"
        assert denied(code, bystander) =~ "a struct named #{module}: #{module} is not"
      end
    end
  end

  # -- helpers

  # Runs the program's fragments in a real session of its own, with the
  # limits above; the first failure, or the last value, is the outcome.
  defp run(code) do
    id = "hostile-#{System.unique_integer([:positive])}"
    limits = %{timeout_ms: @deadline_ms, max_heap_bytes: @heap_bytes}
    {:ok, pid} = Session.start(id, owner: self(), options: %{limits: limits})
    assert_receive {:bridge_event, %{type: :opened, session: ^id}}

    try do
      run_fragments(pid, id, List.wrap(code))
    after
      Session.request(pid, :close)
      assert_receive {:bridge_event, %{type: :closed, session: ^id}}, 15_000
    end
  end

  defp run_fragments(pid, id, [code | rest]) do
    Session.request(pid, {:eval, code})

    case result(id) do
      %{ok: true, value: value} when rest == [] -> {"ok", value}
      %{ok: true} -> run_fragments(pid, id, rest)
      %{ok: false, error: error} -> {error.kind, error.message}
    end
  end

  # The first result of the block; a program whose code splits into several
  # fragments is judged by the first that fails, or by its last value.
  defp result(id, first_failure \\ nil) do
    receive do
      {:bridge_event, %{session: ^id, type: :result} = r} ->
        result(id, first_failure || if(r.ok, do: nil, else: r), r)

      {:bridge_event, %{session: ^id, type: :done}} ->
        first_failure
    after
      15_000 -> flunk("no result from #{id} within 15 s")
    end
  end

  defp result(id, failure, last) do
    receive do
      {:bridge_event, %{session: ^id, type: :result} = r} ->
        result(id, failure || if(r.ok, do: nil, else: r), r)

      {:bridge_event, %{session: ^id, type: :done}} ->
        failure || last
    after
      15_000 -> flunk("no done from #{id} within 15 s")
    end
  end

  # Runs a program expected to be denied, checks the bystander and returns
  # the denial's message.
  defp denied(code, bystander) do
    assert {"denied", message} = run(code)
    assert_node_fine(bystander)
    message
  end

  defp assert_node_fine(bystander) do
    for name <- [BeamBridge.SessionSupervisor, BeamBridge.SessionRegistry, BeamBridge.Supervisor] do
      assert is_pid(Process.whereis(name)), "#{inspect(name)} is gone"
    end

    # Every value the bystander got while the program ran was right, and it
    # still finishes blocks now.
    assert %{failures: [], blocks: blocks} = Bystander.progress(bystander)
    assert blocks >= 2
  end
end
