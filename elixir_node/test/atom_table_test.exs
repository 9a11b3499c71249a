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

  describe "module names joined from parts that are atoms already" do
    # Every part is an existing atom; the joined names are not, and Elixir's
    # own alias expansion would make one atom per new combination.
    @parts ~w(Enum Map List Kernel String Stream Keyword Tuple Range MapSet Regex Access)

    defp combinations(count) do
      for(a <- @parts, b <- @parts, c <- @parts, a != b, b != c, do: "#{a}.#{b}.#{c}")
      |> Enum.take(count)
    end

    test "are refused as modules that do not exist, and make no atoms" do
      context = Evaluator.new_context("joined")
      # Warm up the code paths, which load modules (and their atoms) once.
      Evaluator.run("Enum.Map.Kernel.x()", 1, context)
      before = :erlang.system_info(:atom_count)

      for name <- combinations(1_200),
          form <- ["#{name}.f(1)", "%#{name}{}", "&#{name}.f/1", name] do
        assert {:error, %{kind: "denied", message: message}, _scope} =
                 Evaluator.run(form, 1, context)

        assert message =~ "is not a module that exists"
      end

      assert :erlang.system_info(:atom_count) - before < 100
    end

    test "names of modules that exist still work, also through an alias" do
      context = Evaluator.new_context("existing")
      {"\"1\"", context} = run("String.Chars.to_string(1)", context)
      {_, context} = run("alias String.Chars", context)
      {"\"2\"", context} = run("Chars.to_string(2)", context)
      {_, context} = run("alias Enum, as: E", context)
      assert {"[2]", _} = run("E.map([1], &(&1 + 1))", context)
    end

    test "a new name after alias as: comes out of the session's atom budget" do
      prefix = "Zq#{System.unique_integer([:positive])}A"

      outcomes =
        Enum.map_reduce(1..300, Evaluator.new_context("as-budget"), fn i, context ->
          case Evaluator.run("alias Enum, as: #{prefix}#{i}", 1, context) do
            {:ok, _result, context} -> {:ok, context}
            {:error, %{message: message}, scope} -> {message, put_elem(context, 2, scope)}
          end
        end)
        |> elem(0)

      assert Enum.any?(outcomes, &(is_binary(&1) and &1 =~ "atom budget exhausted"))
      assert Enum.count(outcomes, &(&1 == :ok)) < 300
    end
  end
end
