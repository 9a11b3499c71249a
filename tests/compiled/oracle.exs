# Test oracle: evaluates fragments with the real Elixir. Input lines are
# "R" (new session) or "F <base64 code>"; output per F line is
# "ok <base64 inspect>", "error <exception module>" or "error Timeout". Bindings carry
# across F lines until the next R, and change only on success.
defmodule Oracle do
  # Bignum blow-ups (acc * acc in a loop) would run for minutes; a budget
  # of two seconds per fragment reports them as "error Timeout".
  def eval(code, binding) do
    {value, binding} = Code.eval_string(code, binding)
    {:ok, value, binding}
  rescue
    e -> {:error, e.__struct__}
  end

  def loop(binding) do
    case IO.read(:stdio, :line) do
      :eof ->
        :ok

      "R\n" ->
        loop([])

      "F " <> rest ->
        code = rest |> String.trim() |> Base.decode64!()

        task = Task.async(fn -> eval(code, binding) end)

        case Task.yield(task, 2000) || Task.shutdown(task, :brutal_kill) do
          {:ok, {:ok, value, binding}} ->
            IO.write("ok " <> Base.encode64(inspect(value)) <> "\n")
            loop(binding)

          {:ok, {:error, module}} ->
            IO.write("error " <> inspect(module) <> "\n")
            loop(binding)

          nil ->
            IO.write("error Timeout\n")
            loop(binding)
        end
    end
  end
end

Code.put_compiler_option(:ignore_module_conflict, true)
Oracle.loop([])
