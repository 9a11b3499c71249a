# The inventory report of demo.exs, continued in the same session: the model
# changes its mind twice. `beambridge demo` streams this file after demo.exs.
# Each "#!" line starts a new block and tells the demo what to do with it
# (to Elixir it is a comment):
#   "#! cancel once it prints" - cancel the running fragment at its first output;
#   "#! rewind if it fails"    - if a fragment of the block fails, rewind to
#                                just before the block and forget its bindings;
#   any other "#!" line        - just a new block.

#! cancel once it prints
# How many more figs bring the total to exactly 100.10? None do, at 2.0 each:
# this search never ends, and the model stops it once it sees it counting.
Stream.iterate(1, &(&1 + 1))
|> Stream.each(fn n -> if rem(n, 50_000) == 0, do: IO.puts("#{n} figs, still looking") end)
|> Enum.find(fn n -> total + n * prices["fig"] == 100.10 end)

#! rewind if it fails
# The kiwis got a price. It goes in as text, by mistake.
prices = Map.put(prices, "kiwi", "1.25")
orders |> Enum.map(fn {fruit, count} -> prices[fruit] * count end) |> Enum.sum()

#! then bind the price again, as a number this time
prices = Map.put(prices, "kiwi", 1.25)
total = orders |> Enum.map(fn {fruit, count} -> prices[fruit] * count end) |> Enum.sum()
IO.puts("all #{length(orders)} orders priced: #{total}")
