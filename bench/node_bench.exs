# Node-side cost of a fragment: the whole path inside the node (splitting,
# the sandbox policy, a fresh evaluation process with its limits, IO
# capture, result and `done` events) against a bare `Code.eval_quoted` of
# the same fragment, against the same path with the sandbox off, and with
# the limits off (no heap limit, deadline, binary watchdog or output cap),
# in one run; and fragments per second with 1 and 100 concurrent sessions.
#
#     cd elixir_node && mix run --no-start ../bench/node_bench.exs
#
# Writes bench/results/node.json next to this file. The goal is under
# 50 µs of overhead per fragment.

defmodule NodeBench do
  alias BeamBridge.Session

  @code "x = 1 + 1"
  @warmup 2_000
  @calls 20_000

  def run do
    # The bench drives sessions directly; no listener is needed.
    Application.put_env(:beam_bridge, :listen, false)
    {:ok, _} = Application.ensure_all_started(:beam_bridge)

    # The four variants take turns, call by call, so that a slow spell of
    # the machine falls on all of them alike.
    [bare, session, unchecked, unlimited] =
      timed([bare_fun(), session_fun(true), session_fun(false), session_fun(true, true)])

    one = throughput(1, 20_000)
    hundred = throughput(100, 200)

    rows = [
      {"bare Code.eval_quoted", bare},
      {"session: split + sandbox + evaluate + events", session},
      {"overhead", diff(session, bare)},
      {"session with the sandbox off", unchecked},
      {"sandbox cost: policy parse + check", diff(session, unchecked)},
      {"session with the limits off", unlimited},
      {"limits cost: heap cap, deadline, watchdog, output cap", diff(session, unlimited)}
    ]

    IO.puts("\nbeambridge node benchmark (#{System.schedulers_online()} schedulers)\n")
    IO.puts(String.pad_trailing("µs per fragment", 48) <> "   median      mean")

    for {name, %{median: median, mean: mean}} <- rows do
      IO.puts(String.pad_trailing(name, 48) <> pad(median) <> pad(mean))
    end

    IO.puts("\nfragments/s, 1 session: #{round(one)}; 100 sessions: #{round(hundred)}")

    write_json(%{
      bare_eval_us: bare,
      session_fragment_us: session,
      overhead_us: diff(session, bare),
      overhead_goal_us: 50,
      session_fragment_unsandboxed_us: unchecked,
      sandbox_us: diff(session, unchecked),
      session_fragment_unlimited_us: unlimited,
      limits_us: diff(session, unlimited),
      fragments_per_s_1_session: one,
      fragments_per_s_100_sessions: hundred,
      schedulers: System.schedulers_online(),
      otp: System.otp_release(),
      elixir: System.version()
    })
  end

  # The baseline parses and evaluates in the calling process, as an
  # embedding without sessions would.
  defp bare_fun do
    binding = [x: 0]
    env = Code.env_for_eval([])
    fn -> Code.eval_quoted_with_env(Code.string_to_quoted!(@code), binding, env) end
  end

  # One `eval` request at a time, each awaited up to its `done` event;
  # `sandbox` adds the policy, `unlimited` takes the limits away.
  defp session_fun(sandbox, unlimited \\ false) do
    pid = open(sandbox, unlimited)
    fn -> eval_and_wait(pid) end
  end

  # Each call timed on its own, the functions in turn: the median resists
  # the pauses of a shared machine, the mean shows them.
  defp timed(funs) do
    for _ <- 1..@warmup, fun <- funs, do: fun.()

    samples =
      for _ <- 1..@calls do
        for fun <- funs do
          started = System.monotonic_time(:nanosecond)
          fun.()
          System.monotonic_time(:nanosecond) - started
        end
      end

    samples
    |> Enum.zip()
    |> Enum.map(fn column ->
      sorted = column |> Tuple.to_list() |> Enum.sort()
      %{median: Enum.at(sorted, div(@calls, 2)) / 1000, mean: Enum.sum(sorted) / @calls / 1000}
    end)
  end

  defp diff(a, b), do: %{median: a.median - b.median, mean: a.mean - b.mean}

  defp pad(value), do: String.pad_leading(:erlang.float_to_binary(value / 1, decimals: 1), 9)

  # `sessions` sessions, each sent `per_session` fragments at once; the rate
  # counts fragments whose results arrived.
  defp throughput(sessions, per_session) do
    pids = for _ <- 1..sessions, do: open()
    code = String.duplicate(@code <> "\n", per_session)

    {us, _} =
      :timer.tc(fn ->
        for pid <- pids, do: Session.request(pid, {:eval, code})
        for _ <- pids, do: await_done()
      end)

    sessions * per_session / (us / 1_000_000)
  end

  defp open(sandbox \\ true, unlimited \\ false) do
    id = "bench-#{System.unique_integer([:positive])}"
    # The throughput rows queue 20,000 fragments in one block, past the
    # node's default cap of queued fragments.
    opts = [owner: self(), sandbox: sandbox, unlimited: unlimited]
    {:ok, pid} = Session.start(id, [caps: %{max_queued_fragments: 100_000}] ++ opts)
    receive do: ({:bridge_event, %{type: :opened}} -> pid)
  end

  defp eval_and_wait(pid) do
    Session.request(pid, {:eval, @code})
    await_done()
  end

  defp await_done do
    receive do
      {:bridge_event, %{type: :done}} -> :ok
      {:bridge_event, _other} -> await_done()
    after
      10_000 -> raise "no done event within 10 s"
    end
  end

  defp write_json(map) do
    dir = Path.join(__DIR__, "results")
    File.mkdir_p!(dir)

    body =
      map
      |> Enum.map(fn {k, v} -> ~s(  "#{k}": #{json(v)}) end)
      |> Enum.join(",\n")

    File.write!(Path.join(dir, "node.json"), "{\n" <> body <> "\n}\n")
    IO.puts("\nwrote #{Path.join(dir, "node.json")}")
  end

  defp json(%{median: median, mean: mean}),
    do: ~s({"median": #{json(median / 1)}, "mean": #{json(mean / 1)}})

  defp json(v) when is_binary(v), do: inspect(v)
  defp json(v) when is_float(v), do: :erlang.float_to_binary(v, decimals: 2)
  defp json(v), do: to_string(v)
end

NodeBench.run()
