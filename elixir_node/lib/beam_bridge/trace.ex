defmodule BeamBridge.Trace do
  @moduledoc """
  Step events: the value of each expression of a fragment's top-level block
  and of each stage of a pipeline, for sessions opened with `trace: true`.

  `instrument/1` rewrites the fragment's syntax tree so that each of those
  expressions passes its value through `step/2`, which returns it unchanged
  and reports `{:evaluation_step, line, text}` to the evaluation's IO proxy.
  Going through the proxy keeps steps and output in the order they happened.

  Special forms that shape the lexical scope (`alias`, `import`, `require`,
  `defmodule`, …) are left as they are: moved into a call's argument they
  would no longer affect the code after them. Fragments without `trace` are
  not rewritten at all, so tracing costs nothing when it is off.

  At most `@max_steps` steps per evaluation are sent; later ones are only
  counted (`dropped/0`).
  """

  @max_steps 1_000
  @max_value_bytes 2_048
  @untraced [
    :alias,
    :import,
    :require,
    :use,
    :defmodule,
    :def,
    :defp,
    :defmacro,
    :defmacrop,
    :@,
    :__block__
  ]

  @doc "Rewrites `quoted` so that its top-level expressions and pipeline stages report steps."
  @spec instrument(Macro.t()) :: Macro.t()
  def instrument({:__block__, meta, exprs}),
    do: {:__block__, meta, Enum.map(exprs, &expression/1)}

  def instrument(expr), do: expression(expr)

  @doc "Prepares the calling process (an evaluation) to send steps to `proxy`."
  @spec start(pid) :: :ok
  def start(proxy) do
    Process.put(__MODULE__, {proxy, 0})
    :ok
  end

  @doc "How many steps were counted but not sent."
  @spec dropped() :: non_neg_integer
  def dropped do
    case Process.get(__MODULE__) do
      {_proxy, count} -> max(count - @max_steps, 0)
      nil -> 0
    end
  end

  @doc false
  # Called by instrumented code; returns `value` unchanged.
  def step(value, line) do
    case Process.get(__MODULE__) do
      {proxy, count} when count < @max_steps ->
        send(proxy, {:evaluation_step, line, value_text(value)})
        Process.put(__MODULE__, {proxy, count + 1})

      {proxy, count} ->
        Process.put(__MODULE__, {proxy, count + 1})

      nil ->
        :ok
    end

    value
  end

  defp expression({:|>, meta, [left, right]}) do
    traced({:|>, meta, [expression(left), right]}, meta)
  end

  defp expression({form, _meta, _args} = expr) when form in @untraced, do: expr

  defp expression({_, meta, _} = expr), do: traced(expr, meta)
  defp expression(literal), do: traced(literal, [])

  defp traced(expr, meta) do
    quote do: unquote(__MODULE__).step(unquote(expr), unquote(meta[:line]))
  end

  defp value_text(value) do
    text = inspect(value, limit: 20, printable_limit: 256)

    if byte_size(text) > @max_value_bytes,
      do: binary_part(text, 0, @max_value_bytes) <> "…",
      else: text
  end
end
