# Reads fragments, one base64 line each, from stdin and writes one line per
# fragment: "ok <json>" with the quoted AST or "error <line> <base64 message>".
# OTP 25 has no JSON module, so the encoder below covers the AST's terms only.
defmodule CompiledAst do
  def encode(n) when is_integer(n), do: Integer.to_string(n)
  def encode(a) when is_atom(a), do: ~s({"a":"#{Base.encode64(Atom.to_string(a))}"})
  def encode(f) when is_float(f), do: ~s({"float":1})
  def encode(s) when is_binary(s), do: ~s({"s":"#{Base.encode64(s)}"})
  def encode(l) when is_list(l), do: "[" <> Enum.map_join(l, ",", &encode/1) <> "]"

  def encode({form, meta, args}) when is_list(meta) do
    line = Keyword.get(meta, :line, 0)
    ~s({"f":#{encode(form)},"l":#{line},"x":#{encode(args)}})
  end

  def encode({a, b}), do: ~s({"p":[#{encode(a)},#{encode(b)}]})
  def encode(t) when is_tuple(t), do: ~s({"tuple":1})
  def encode(_), do: ~s({"other":1})

  def loop do
    case IO.read(:stdio, :line) do
      :eof ->
        :ok

      line ->
        code = line |> String.trim() |> Base.decode64!()

        case Code.string_to_quoted(code, columns: false) do
          {:ok, ast} ->
            IO.write("ok " <> encode(ast) <> "\n")

          {:error, {meta, msg, token}} ->
            text = format(msg) <> format(token)
            line_no = if is_list(meta), do: Keyword.get(meta, :line, 1), else: meta
            IO.write("error #{line_no} #{Base.encode64(text)}\n")
        end

        loop()
    end
  end

  defp format({a, b}), do: format(a) <> format(b)
  defp format(s) when is_binary(s), do: s
  defp format(other), do: inspect(other)
end

CompiledAst.loop()
