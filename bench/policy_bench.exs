# The policy's cost per fragment: parse (atom-safe), check (allowlist over
# the expanded tree) and their total, against a plain
# `Code.string_to_quoted/2`.
#
#     cd elixir_node && MIX_ENV=test mix run ../bench/policy_bench.exs
#
# Prints a table and writes bench/results/policy.json.

alias BeamBridge.Policy
alias BeamBridge.Policy.Scope

fragments = [
  {"arithmetic", "x = 6 * 7"},
  {"pipeline", "1..100 |> Enum.map(&(&1 * 2)) |> Enum.filter(&(rem(&1, 3) == 0)) |> Enum.sum()"},
  {"comprehension", "for x <- 1..10, y <- 1..10, x < y, into: %{}, do: {{x, y}, x * y}"},
  {"string", ~S'name = "world"; "Hello, #{String.upcase(name)}!" |> String.split(", ")'},
  {"control flow",
   "case Enum.find([1, 2, 3], &(&1 > 1)) do\n nil -> :none\n n when n > 2 -> :big\n n -> {:ok, n}\nend"},
  {"module",
   """
   defmodule Geometry do
     def area({:circle, r}), do: 3.14159 * r * r
     def area({:rect, w, h}), do: w * h
     def total(shapes), do: shapes |> Enum.map(&area/1) |> Enum.sum()
   end
   """}
]

env = Code.env_for_eval(file: "fragment")
scope = Scope.new("bench")
rounds = 2_000

measure = fn fun ->
  # Best of three runs of `rounds` calls, in microseconds per call.
  for _ <- 1..3 do
    {us, _} = :timer.tc(fn -> for _ <- 1..rounds, do: fun.() end)
    us / rounds
  end
  |> Enum.min()
end

rows =
  for {name, code} <- fragments do
    {:ok, quoted, parsed_scope} = Policy.parse(code, 1, scope)
    plain = measure.(fn -> Code.string_to_quoted!(code) end)
    parse = measure.(fn -> Policy.parse(code, 1, scope) end)
    check = measure.(fn -> {:ok, _, _, _} = Policy.check(quoted, env, parsed_scope) end)

    %{
      fragment: name,
      bytes: byte_size(code),
      plain_parse_us: plain,
      parse_us: parse,
      check_us: check,
      total_us: parse + check
    }
  end

IO.puts(
  String.pad_trailing("fragment", 16) <>
    String.pad_leading("bytes", 7) <>
    String.pad_leading("plain parse µs", 16) <>
    String.pad_leading("parse µs", 10) <>
    String.pad_leading("check µs", 10) <> String.pad_leading("total µs", 10)
)

for row <- rows do
  IO.puts(
    String.pad_trailing(row.fragment, 16) <>
      String.pad_leading(Integer.to_string(row.bytes), 7) <>
      String.pad_leading(:erlang.float_to_binary(row.plain_parse_us, decimals: 1), 16) <>
      String.pad_leading(:erlang.float_to_binary(row.parse_us, decimals: 1), 10) <>
      String.pad_leading(:erlang.float_to_binary(row.check_us, decimals: 1), 10) <>
      String.pad_leading(:erlang.float_to_binary(row.total_us, decimals: 1), 10)
  )
end

json_row = fn row ->
  fields =
    Enum.map_join(row, ", ", fn
      {k, v} when is_binary(v) -> ~s("#{k}": "#{v}")
      {k, v} when is_float(v) -> ~s("#{k}": #{Float.round(v, 2)})
      {k, v} -> ~s("#{k}": #{v})
    end)

  "    {" <> fields <> "}"
end

json = """
{
  "benchmark": "policy",
  "goal_check_us": 20,
  "rounds": #{rounds},
  "otp": "#{System.otp_release()}",
  "elixir": "#{System.version()}",
  "rows": [
#{Enum.map_join(rows, ",\n", json_row)}
  ]
}
"""

path = Path.join([__DIR__, "results", "policy.json"])
File.mkdir_p!(Path.dirname(path))
File.write!(path, json)
IO.puts("wrote #{path}")
