# A model working out a small inventory report, one expression at a time.
# Each top-level expression runs as soon as the next line shows it is complete.

prices = %{"apple" => 0.5, "pear" => 0.75, "fig" => 2.0}

orders = [
  {"apple", 12},
  {"fig", 3},
  {"pear", 8},
  {"kiwi", 4}
]

IO.puts("#{length(orders)} orders to price")

# First attempt: look every fruit up directly. "kiwi" has no price.
total =
  orders
  |> Enum.map(fn {fruit, count} -> Map.fetch!(prices, fruit) * count end)
  |> Enum.sum()

# Recover: price what is known, set the rest aside.
{known, unknown} = Enum.split_with(orders, fn {fruit, _} -> Map.has_key?(prices, fruit) end)

total =
  known
  |> Enum.map(fn {fruit, count} -> prices[fruit] * count end)
  |> Enum.sum()

for {fruit, count} <- known do
  IO.puts("#{String.pad_trailing(fruit, 6)} #{count} × #{prices[fruit]}")
end

%{total: total, unpriced: Enum.map(unknown, &elem(&1, 0))}

Float.round(total / Enum.sum(Enum.map(known, &elem(&1, 1))), 3)
