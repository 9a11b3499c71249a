defmodule BeamBridge.AtomTableTest do
  # Not async: it reads the node-wide atom count, which tests running
  # beside it would move.
  use ExUnit.Case, async: false

  alias BeamBridge.Evaluator

  defp run(code, context) do
    assert {:ok, result, context} = Evaluator.run(code, 1, context)
    {result.value, context}
  end

  test "rebinding a variable again and again in fragments makes no new atoms" do
    # Each binding of `x` in one evaluation is an Erlang variable `_x@n`,
    # an atom; the sandbox caps `n`, and the same `n` is the same atom.
    rebinds = "(" <> Enum.map_join(1..30, "; ", &"x = #{&1}") <> ")"
    {"30", context} = run(rebinds, Evaluator.new_context("atoms"))
    before = :erlang.system_info(:atom_count)

    Enum.reduce(1..50, context, fn _, context ->
      {"30", context} = run(rebinds, context)
      context
    end)

    assert :erlang.system_info(:atom_count) == before
  end
end
