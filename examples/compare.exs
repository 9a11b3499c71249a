# A program inside the compiled executor's subset, for `beambridge compare`:
# integers, arithmetic, comparisons, booleans, bindings, if/else and
# Enum.reduce over ranges (one counting down).
width = 17
height = div(width * 3, 4)
area = width * height
parity = rem(area, 7)
big = area > 200 and not (parity == 0)
score = if big, do: area - parity * 3, else: -area
triangle = Enum.reduce(1..width, 0, fn i, acc -> acc + i end)
countdown = Enum.reduce(height..1, 1, fn i, acc -> rem(acc * (i + 2), 1_000_003) end)
score + triangle - countdown
String.upcase("outside the subset")
