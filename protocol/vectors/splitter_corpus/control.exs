x = 15

result =
  cond do
    rem(x, 15) == 0 -> "FizzBuzz"
    rem(x, 3) == 0 -> "Fizz"
    rem(x, 5) == 0 -> "Buzz"
    true -> Integer.to_string(x)
  end
# ---
value = {:ok, 42}

case value do
  {:ok, n} when is_integer(n) and n > 0 ->
    n * 2

  {:ok, _other} ->
    :not_positive

  {:error, reason} ->
    {:failed, reason}
end
# ---
if length([1, 2]) > 1 do
  IO.puts("more than one")
else
  IO.puts("one or none")
end
# ---
unless Enum.empty?([1]), do: :non_empty, else: :empty
flag = if true, do: 1, else: 2
# ---
params = %{"name" => "Ada", "age" => "36"}

with {:ok, name} <- Map.fetch(params, "name"),
     {:ok, raw_age} <- Map.fetch(params, "age"),
     {age, ""} <- Integer.parse(raw_age) do
  %{name: name, age: age}
else
  :error -> {:error, :missing}
  _ -> {:error, :invalid}
end
# ---
try do
  String.to_integer("abc")
rescue
  e in ArgumentError -> {:rescued, Exception.message(e)}
after
  IO.puts("done")
end
# ---
fib = fn
  0, _self -> 0
  1, _self -> 1
  n, self -> self.(n - 1, self) + self.(n - 2, self)
end

fib.(20, fib)
# ---
for x <- 1..3,
    y <- [:a, :b],
    into: %{} do
  {{x, y}, x}
end
# ---
counter = fn acc ->
  # a comment that says do and end
  acc + 1
end
counter.(1)
# ---
total =
  1
  + 2
  - 3
total
# ---
ok? = true and not false
also = false or ok?
ok? && also || :neither
# ---
x = 1; y = 2; z = x + y
z * 2
# ---
receive do
  {:msg, m} -> m
after
  0 -> :nothing
end
# ---
Enum.each(1..3, fn i ->
  IO.puts("line #{i}")
end)
:ok
