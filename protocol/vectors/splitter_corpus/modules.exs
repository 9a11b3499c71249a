defmodule Geometry do
  @moduledoc "Shapes and their areas."

  @pi 3.14159

  def area({:circle, r}), do: @pi * r * r
  def area({:rect, w, h}), do: w * h

  defp helper(x) do
    x
  end
end

Geometry.area({:circle, 2})
# ---
defmodule Stack do
  defstruct items: []

  def push(%Stack{items: items} = stack, item) do
    %{stack | items: [item | items]}
  end

  def pop(%Stack{items: [top | rest]} = stack) do
    {top, %{stack | items: rest}}
  end
end
s = %Stack{} |> Stack.push(1) |> Stack.push(2)
Stack.pop(s)
# ---
defmodule Greeter do
  @doc """
  Greets someone.

      iex> Greeter.hello("x")
      "Hello, x"
  """
  def hello(name) when is_binary(name) do
    "Hello, " <> name
  end
end
Greeter.hello("world")
# ---
defmodule Shape do
  @callback area(term) :: number
end

defprotocol Describe do
  def describe(value)
end

defimpl Describe, for: Integer do
  def describe(n), do: "the integer #{n}"
end
# ---
defmodule Recursion do
  def sum([]), do: 0
  def sum([h | t]), do: h + sum(t)

  def count_down(0), do: :done

  def count_down(n) when n > 0 do
    count_down(n - 1)
  end
end
Recursion.sum([1, 2, 3]); Recursion.count_down(3)
# ---
defmodule Parser do
  import String, only: [trim: 1]
  alias Enum, as: E

  def parse(text) do
    text
    |> trim()
    |> String.split(",")
    |> E.map(&String.to_integer/1)
  end
end
Parser.parse(" 1,2,3 ")
# ---
defmodule Temp do
  @type celsius :: float
  @spec to_f(celsius) :: float
  def to_f(c), do: c * 9 / 5 + 32
end
# ---
defmodule Outer do
  defmodule Inner do
    def value, do: :inner
  end

  def value, do: Inner.value()
end
Outer.value()
