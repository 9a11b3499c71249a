defmodule BeamBridge.Policy.Bound do
  @moduledoc """
  Bounded measures of terms that may share structure.

  `Enum.reduce(1..40, "x", fn _, a -> {a, a} end)` is a few hundred bytes on
  the heap, but anything that flattens it (a message send, `inspect`,
  `term_to_binary`, a JSON conversion) sees 2^40 nodes. These functions
  visit at most a given number of nodes and stop there, so their cost is
  bounded by the budget, never by the flattened size.
  """

  @doc "Whether `term` flattens to at most `max_nodes` nodes (closures' captured values included)."
  @spec within?(term, non_neg_integer) :: boolean
  def within?(term, max_nodes), do: count(term, max_nodes) >= 0

  # Returns the budget left, negative once it is exhausted.
  defp count(_term, budget) when budget < 0, do: budget

  defp count(term, budget) when is_tuple(term),
    do: count_tuple(term, 1, tuple_size(term), budget - 1)

  defp count([head | tail], budget), do: count(tail, count(head, budget - 1))

  defp count(term, budget) when is_map(term) do
    :maps.fold(fn k, v, b -> count(v, count(k, b)) end, budget - 1, term)
  end

  defp count(term, budget) when is_binary(term), do: budget - 1 - div(min(byte_size(term), 64), 8)

  defp count(term, budget) when is_function(term) do
    {:env, env} = :erlang.fun_info(term, :env)
    count(env, budget - 1)
  end

  defp count(_term, budget), do: budget - 1

  defp count_tuple(_tuple, i, size, budget) when i > size or budget < 0, do: budget

  defp count_tuple(tuple, i, size, budget),
    do: count_tuple(tuple, i + 1, size, count(elem(tuple, i - 1), budget))

  @doc """
  `term` itself when it is within `budget` nodes, otherwise a copy cut
  after `budget` nodes, the rest replaced by `:...`. For showing a value.
  """
  @spec prune(term, non_neg_integer) :: term
  def prune(term, budget) do
    if within?(term, budget), do: term, else: elem(cut(term, budget), 0)
  end

  defp cut(_term, budget) when budget <= 0, do: {:..., budget}

  defp cut(term, budget) when is_tuple(term) do
    {items, budget} = cut_list(Tuple.to_list(term), budget - 1)
    {List.to_tuple(items), budget}
  end

  defp cut(term, budget) when is_list(term), do: cut_list(term, budget - 1)

  defp cut(term, budget) when is_map(term) and not is_struct(term) do
    {pairs, budget} =
      Enum.reduce(term, {[], budget - 1}, fn {k, v}, {acc, budget} ->
        {k, budget} = cut(k, budget)
        {v, budget} = cut(v, budget)
        {[{k, v} | acc], budget}
      end)

    {Map.new(pairs), budget}
  end

  defp cut(term, budget) when is_map(term) do
    {map, budget} = cut(Map.from_struct(term), budget)
    {Map.put(map, :__struct__, term.__struct__), budget}
  end

  defp cut(term, budget), do: {term, budget - 1}

  defp cut_list([], budget), do: {[], budget}
  defp cut_list(_rest, budget) when budget <= 0, do: {[:...], budget}

  defp cut_list([head | tail], budget) do
    {head, budget} = cut(head, budget)
    {tail, budget} = cut_list(tail, budget)
    {[head | tail], budget}
  end

  defp cut_list(improper, budget), do: cut(improper, budget)

  @doc """
  Whether character data or iodata flattens to at most `max_nodes` list
  elements and `max_bytes` bytes: `:ok` or `:over`.
  """
  @spec chardata_size(term, non_neg_integer, non_neg_integer) :: :ok | :over
  def chardata_size(data, max_nodes, max_bytes) do
    case chars(data, {max_nodes, max_bytes}) do
      {nodes, bytes} when nodes >= 0 and bytes >= 0 -> :ok
      _over -> :over
    end
  end

  defp chars(_data, {nodes, bytes} = left) when nodes < 0 or bytes < 0, do: left
  defp chars([head | tail], {nodes, bytes}), do: chars(tail, chars(head, {nodes - 1, bytes}))
  defp chars([], left), do: left
  defp chars(bin, {nodes, bytes}) when is_binary(bin), do: {nodes, bytes - byte_size(bin)}
  defp chars(_other, {nodes, bytes}), do: {nodes - 1, bytes - 4}
end
