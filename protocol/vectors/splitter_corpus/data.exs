numbers = [3, 1, 4, 1, 5, 9, 2, 6]
sorted = Enum.sort(numbers)
total = Enum.sum(numbers)
{sorted, total}
# ---
users = [
  %{name: "Ada", age: 36},
  %{name: "Grace", age: 45},
  %{name: "Linus", age: 28}
]

users
|> Enum.filter(&(&1.age > 30))
|> Enum.map(& &1.name)
# ---
config = %{
  host: "localhost",
  port: 4000,
  # nested settings
  pool: %{size: 10, overflow: 2}
}
get_in(config, [:pool, :size])
# ---
word_counts =
  "the quick brown fox jumps over the lazy dog the end"
  |> String.split()
  |> Enum.frequencies()

Enum.max_by(word_counts, fn {_word, count} -> count end)
# ---
point = {1.5, -2.0}
{x, y} = point
:math.sqrt(x * x + y * y)
# ---
list = for i <- 1..10, rem(i, 2) == 0, do: i * i
Enum.reduce(list, 0, fn x, acc -> x + acc end)
# ---
opts = [timeout: 5_000, retries: 3]
Keyword.get(opts, :timeout)
Keyword.put(opts, :retries, 5)
# ---
set = MapSet.new([1, 2, 3])
set = MapSet.put(set, 4)
MapSet.member?(set, 4)
# ---
matrix = [[1, 2, 3], [4, 5, 6], [7, 8, 9]]
transposed = matrix |> Enum.zip() |> Enum.map(&Tuple.to_list/1)
diagonal = for {row, i} <- Enum.with_index(matrix), do: Enum.at(row, i)
# ---
binary = <<1, 2, 3, 255>>
<<first, rest::binary>> = binary
{first, byte_size(rest)}
# ---
stream = Stream.iterate(1, &(&1 * 2))
stream |> Stream.take_while(&(&1 < 1000)) |> Enum.to_list()
# ---
acc = %{}
acc = Map.update(acc, :count, 1, &(&1 + 1))
acc = Map.update(acc, :count, 1, &(&1 + 1)); acc[:count]
# ---
ranges = [1..3, 5..8//1]
Enum.flat_map(ranges, &Enum.to_list/1)
