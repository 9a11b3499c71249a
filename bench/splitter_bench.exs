# Streams generated Elixir through BeamBridge.Splitter in 4-character
# chunks, the way a model's tokens arrive, at 1 MiB and 2 MiB, and checks
# that throughput stays at least 1 MiB/s and grows linearly with size.
# Three workloads: a session's mix of fragments, and two single
# expressions that stay unfinished for the whole stream (a list of lists
# and a module of many functions), where each line closes something
# inside the open expression.
#
#     cd elixir_node && mix run --no-start ../bench/splitter_bench.exs
#
# Writes bench/results/splitter.json next to this file.

defmodule SplitterBench do
  alias BeamBridge.Splitter

  @chunk_size 4
  @mib 1024 * 1024

  # Fragments a model writes in a session: one-liners, pipelines, maps,
  # control flow, heredocs and small modules. `n` keeps names distinct, as
  # a long session would.
  def fragment(n) do
    case rem(n, 12) do
      0 ->
        "total_#{n} = Enum.sum([#{n}, 2, 3]) # running total\n"

      1 ->
        """
        result_#{n} =
          1..#{rem(n, 50) + 5}
          # keep the odd ones
          |> Enum.filter(&(rem(&1, 2) == 1))
          |> Enum.map(fn x -> x * x end)
          |> Enum.sum()
        """

      2 ->
        """
        user_#{n} = %{
          name: "user #{n}",
          tags: [:admin, :beta],
          address: %{city: "Lisbon", zip: "#{1000 + rem(n, 9000)}"}
        }
        """

      3 ->
        """
        case Map.fetch(%{a: #{n}}, :a) do
          {:ok, value} when value > 10 ->
            {:big, value}

          {:ok, value} ->
            {:small, value}

          :error ->
            :missing
        end
        """

      4 ->
        """
        defmodule Bench.Shape#{n} do
          @moduledoc "Areas of simple shapes."

          @pi 3.14159

          def area({:circle, r}), do: @pi * r * r
          def area({:rect, w, h}), do: w * h

          def describe(shape) do
            case area(shape) do
              a when a > 100 -> "large"
              _ -> "small"
            end
          end
        end
        """

      5 ->
        """
        query_#{n} = \"\"\"
        SELECT id, name
        FROM items # not a comment
        WHERE id = #{n}
        \"\"\"
        """

      6 ->
        """
        with {:ok, a} <- {:ok, #{n}},
             {:ok, b} <- {:ok, a * 2} do
          a + b
        else
          _ -> :error
        end
        """

      7 ->
        "x_#{n} = #{n}; y_#{n} = x_#{n} * 2; :ok_#{n}\n\n"

      8 ->
        """
        squares_#{n} = for i <- 1..10, rem(i, 3) == 0, into: %{} do
          {i, i * i}
        end
        """

      9 ->
        """
        handler_#{n} = fn
          {:ok, v} -> v
          {:error, reason} -> raise "failed: \#{inspect(reason)}"
        end
        """

      10 ->
        """
        # Comments between fragments are dropped from the fragments.
        if rem(#{n}, 2) == 0 do
          IO.puts("even #{n}")
        else
          IO.puts("odd")
        end
        """

      11 ->
        "Bench.Shape#{n - 7}.area({:rect, #{n}, 2}) |> IO.inspect(label: \"area\")\n"
    end
  end

  # One element of a long list literal, and one function of a long module.
  def list_row(n), do: "  [#{n}, %{id: #{n}, tags: [:a, :b]}, {#{n}, \"row\"}],\n"

  def function(n) do
    """
      def f#{n}(x) do
        case x do
          {:ok, v} -> [v, #{n}]
          _ -> nil
        end
      end

    """
  end

  def generate(:mixed, bytes), do: generate(&fragment/1, bytes, 0, [], 0)

  def generate(:nested_list, bytes),
    do: "data = [\n" <> generate(&list_row/1, bytes, 0, [], 0) <> "]\n"

  def generate(:module, bytes),
    do: "defmodule Bench.Big do\n" <> generate(&function/1, bytes, 0, [], 0) <> "end\n"

  defp generate(_piece, bytes, _n, acc, size) when size >= bytes,
    do: acc |> Enum.reverse() |> IO.iodata_to_binary()

  defp generate(piece, bytes, n, acc, size) do
    text = piece.(n)
    generate(piece, bytes, n + 1, [text | acc], size + byte_size(text))
  end

  # Chunks are cut as they are fed, as a session receives them; a list of
  # all of them would make garbage collection, not the splitter, grow
  # faster than the stream.
  def stream(text), do: stream(text, 0, 0, Splitter.new())

  defp stream(text, offset, count, splitter) when offset < byte_size(text) do
    chunk = binary_part(text, offset, min(@chunk_size, byte_size(text) - offset))
    {fragments, splitter} = Splitter.feed(splitter, chunk)
    stream(text, offset + @chunk_size, count + length(fragments), splitter)
  end

  defp stream(_text, _offset, count, splitter) do
    {last, _} = Splitter.finish(splitter)
    count + length(last)
  end

  # Each run streams in a fresh process, after a collection, so the
  # garbage of generating the text is not charged to the splitter. The
  # best of `@repeats` runs is kept: the machine may be shared.
  @repeats 3

  def measure(workload, mib) do
    1..@repeats
    |> Enum.map(fn _ ->
      Task.await(Task.async(fn -> measure_once(workload, mib) end), :infinity)
    end)
    |> Enum.min_by(& &1.seconds)
  end

  defp measure_once(workload, mib) do
    text = generate(workload, mib * @mib)
    # A warm-up run keeps code loading out of the first measurement.
    _ = stream(binary_part(text, 0, 40_000))
    :erlang.garbage_collect()

    # CPU time is reported beside wall time because the machine may be
    # shared; the goals are checked against wall time.
    {cpu_before, _} = :erlang.statistics(:runtime)
    {micros, fragments} = :timer.tc(fn -> stream(text) end)
    {cpu_after, _} = :erlang.statistics(:runtime)
    seconds = micros / 1_000_000

    %{
      workload: Atom.to_string(workload),
      mib: mib,
      bytes: byte_size(text),
      seconds: seconds,
      mib_per_s: byte_size(text) / @mib / seconds,
      cpu_seconds: (cpu_after - cpu_before) / 1000,
      fragments: fragments
    }
  end

  @workloads [:mixed, :nested_list, :module]

  def run do
    IO.puts("best of #{@repeats} runs, #{@chunk_size}-byte chunks")
    IO.puts("workload      size    seconds   cpu s   MiB/s   fragments   ratio 2MiB/1MiB")

    pairs =
      for workload <- @workloads do
        [one, two] = Enum.map([1, 2], &measure(workload, &1))
        ratio = two.seconds / one.seconds

        for row <- [one, two] do
          IO.puts(
            :io_lib.format("~-12s  ~B MiB   ~7.3f   ~5.2f   ~5.2f   ~9B   ~s", [
              row.workload,
              row.mib,
              row.seconds,
              row.cpu_seconds,
              row.mib_per_s,
              row.fragments,
              if(row == two, do: :erlang.float_to_binary(ratio, decimals: 2), else: "")
            ])
          )
        end

        %{workload: Atom.to_string(workload), runs: [one, two], ratio_2mib_1mib: ratio}
      end

    goals = %{min_mib_per_s: 1.0, max_ratio: 2.2}

    met =
      Enum.all?(pairs, fn %{runs: runs, ratio_2mib_1mib: ratio} ->
        Enum.all?(runs, &(&1.mib_per_s >= goals.min_mib_per_s)) and ratio <= goals.max_ratio
      end)

    IO.puts(
      "goals (>= 1 MiB/s, ratio <= 2.2, every workload): " <> if(met, do: "met", else: "missed")
    )

    write_json(%{
      chunk_bytes: @chunk_size,
      best_of: @repeats,
      workloads: pairs,
      goals: goals,
      goals_met: met,
      elixir: System.version(),
      otp: System.otp_release()
    })
  end

  defp write_json(result) do
    dir = Path.expand("results", __DIR__)
    File.mkdir_p!(dir)
    path = Path.join(dir, "splitter.json")
    File.write!(path, json(result) <> "\n")
    IO.puts("wrote " <> Path.relative_to_cwd(path))
  end

  # OTP 25 has no JSON module; these values need only maps, lists,
  # numbers, booleans and plain strings.
  defp json(map) when is_map(map) do
    fields =
      map |> Enum.sort() |> Enum.map(fn {k, v} -> json(to_string(k)) <> ": " <> json(v) end)

    "{" <> Enum.join(fields, ", ") <> "}"
  end

  defp json(list) when is_list(list), do: "[" <> Enum.map_join(list, ", ", &json/1) <> "]"
  defp json(value) when is_boolean(value), do: to_string(value)
  defp json(value) when is_float(value), do: :erlang.float_to_binary(value, decimals: 4)
  defp json(value) when is_integer(value), do: Integer.to_string(value)
  defp json(value) when is_binary(value), do: inspect(value)
end

SplitterBench.run()
