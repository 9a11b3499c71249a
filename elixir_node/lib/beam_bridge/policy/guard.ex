defmodule BeamBridge.Policy.DeniedError do
  @moduledoc "Raised when a fragment calls, at run time, something the policy denies."
  defexception [:message]
end

defmodule BeamBridge.Policy.LimitError do
  @moduledoc "Raised when a guarded call would allocate more than the sandbox allows."
  defexception [:message]
end

defmodule BeamBridge.Policy.Guard do
  @moduledoc """
  The run-time half of the policy. `BeamBridge.Policy.check/3` rewrites
  calls it cannot settle statically into calls of this module:

    * calls whose module or function is a value (`mod.fun()`, `apply/3`,
      `map.key`, `&mod.fun/1`), checked against `BeamBridge.Policy.Rules`
      when they run;
    * calls that allocate as much as their arguments say (`String.duplicate`,
      `Integer.pow`, a bitstring segment with a dynamic size, …), refused
      above a limit before anything is allocated;
    * calls that copy or flatten a term (output, `send/2`, `inspect`), so a
      term that shares structure cannot expand without bound.

  Only the policy's rewrites reach this module: a fragment that names it is
  denied like any module that is not on the allowlist.
  """

  import Kernel, except: [inspect: 1, inspect: 2, send: 2, apply: 2, struct: 2, struct!: 2]

  alias BeamBridge.Policy.{Bound, DeniedError, LimitError, Rules}

  @max_binary_bytes 64 * 1024 * 1024
  @max_list_length 10_000_000
  @max_tuple_size 1_000_000
  @max_integer_bits 1_000_000
  @max_chardata_nodes 10_000_000
  @max_inspect_nodes 50_000
  @max_message_nodes 1_000_000

  @doc "The limits the guards enforce."
  @spec limits() :: map
  def limits,
    do: %{
      max_binary_bytes: @max_binary_bytes,
      max_list_length: @max_list_length,
      max_tuple_size: @max_tuple_size,
      max_integer_bits: @max_integer_bits,
      max_chardata_nodes: @max_chardata_nodes,
      max_message_nodes: @max_message_nodes
    }

  # -- dynamic calls

  @typedoc """
  The session's modules as the rewritten code carries them: the prefix of
  its namespace, with, for a fork, the versions it inherited (a list fixed
  when the fork starts, see `BeamBridge.Policy.Scope.inherited/1`).
  """
  @type ns :: binary | {binary, [module]}

  @doc "`mod.fun(args…)` where `mod` is a value; `ns` names the session's modules."
  @spec call(term, atom, list, ns) :: term
  def call(module, fun, args, ns) when is_atom(module) do
    arity = length(args)

    if own?(module, ns) do
      Kernel.apply(module, fun, args)
    else
      case Rules.rule(module, fun, arity) do
        :allow -> Kernel.apply(module, fun, args)
        {:replace, guard} -> Kernel.apply(__MODULE__, guard, args)
        {:replace_ns, guard} -> Kernel.apply(__MODULE__, guard, args ++ [ns])
        {:args, guards} -> Kernel.apply(module, fun, guard_args(args, guards))
        {:deny, reason} -> deny!("#{inspect(module)}.#{fun}/#{arity} #{reason}")
      end
    end
  end

  def call(value, fun, args, _ns) do
    raise ArgumentError,
          "cannot call #{fun}/#{length(args)} on #{preview(value)}: it is not a module"
  end

  @doc "`value.key` without parentheses: a map field, or a zero-arity call on a module."
  @spec dot(term, atom, ns) :: term
  def dot(%{} = map, key, _ns) do
    case map do
      %{^key => value} -> value
      _ -> raise KeyError, key: key, term: Bound.prune(map, 1_000)
    end
  end

  def dot(module, key, ns) when is_atom(module), do: call(module, key, [], ns)

  def dot(value, key, _ns) do
    raise ArgumentError, "cannot read .#{key} of #{preview(value)}: not a map or a module"
  end

  @doc "`apply/2`: only function values."
  @spec apply(term, list) :: term
  def apply(fun, args) when is_function(fun) and is_list(args), do: Kernel.apply(fun, args)
  def apply(fun, _args), do: deny!("apply/2 with #{preview(fun)}: only functions may be applied")

  @doc "`apply/3`, checked like `call/4`."
  @spec apply(term, atom, list, ns) :: term
  def apply(module, fun, args, ns) when is_atom(fun) and is_list(args),
    do: call(module, fun, args, ns)

  def apply(_module, fun, _args, _ns),
    do: deny!("apply/3 with the function name #{preview(fun)}")

  @doc """
  `&mod.fun/arity` where `mod` is a value: a function of the session's
  modules or of a module the allowlist allows whole for that function.
  A guarded function is not captured this way, since its guard would be
  bypassed.
  """
  @spec capture(term, atom, arity, ns) :: function
  def capture(module, fun, arity, ns) when is_atom(module) do
    case own?(module, ns) or Rules.rule(module, fun, arity) do
      true -> Function.capture(module, fun, arity)
      :allow -> Function.capture(module, fun, arity)
      {:deny, reason} -> deny!("&#{inspect(module)}.#{fun}/#{arity} #{reason}")
      _guarded -> deny!("&#{inspect(module)}.#{fun}/#{arity} is guarded; call it instead")
    end
  end

  def capture(value, fun, arity, _ns) do
    raise ArgumentError, "cannot capture #{fun}/#{arity} of #{preview(value)}: it is not a module"
  end

  # -- struct names

  @doc """
  A value about to become a struct's name (`%{map | __struct__: value}`,
  `struct/2`): protocols, `Access` and the calendar functions dispatch on
  it, so it must be a module the fragment could have named.
  """
  @spec struct_name(term, ns) :: term
  def struct_name(module, ns) when is_atom(module) do
    case Atom.to_string(module) do
      "Elixir." <> _ ->
        unless Rules.known?(module) or own?(module, ns),
          do:
            deny!("a struct named #{inspect(module)}: #{inspect(module)} #{Rules.reason(module)}")

        module

      _plain ->
        module
    end
  end

  def struct_name(value, _ns), do: value

  @doc false
  def struct(module, fields \\ [], ns), do: Kernel.struct(struct_name(module, ns), fields)

  @doc false
  def struct!(module, fields \\ [], ns), do: Kernel.struct!(struct_name(module, ns), fields)

  defp guard_args(args, guards) do
    Enum.reduce(guards, args, fn {index, guard}, args ->
      List.update_at(args, index, &Kernel.apply(__MODULE__, guard, [&1]))
    end)
  end

  # As cheap for a fork as for any session: the inherited versions are a
  # short literal list, looked at only when the prefix does not match.
  defp own?(module, {ns, inherited}), do: own?(module, ns) or :lists.member(module, inherited)
  defp own?(module, ns), do: String.starts_with?(Atom.to_string(module), ns)

  # -- allocation

  @doc false
  def string_duplicate(s, n) do
    if is_binary(s) and is_integer(n) and byte_size(s) * n > @max_binary_bytes,
      do: too_big!("String.duplicate/2", byte_size(s) * n, "bytes", @max_binary_bytes)

    String.duplicate(s, n)
  end

  @doc false
  def binary_copy(b, n) do
    if is_binary(b) and is_integer(n) and byte_size(b) * n > @max_binary_bytes,
      do: too_big!(":binary.copy/2", byte_size(b) * n, "bytes", @max_binary_bytes)

    :binary.copy(b, n)
  end

  @doc false
  def list_duplicate(x, n) do
    if is_integer(n) and n > @max_list_length,
      do: too_big!("List.duplicate/2", n, "elements", @max_list_length)

    List.duplicate(x, n)
  end

  @doc false
  def lists_duplicate(n, x) do
    if is_integer(n) and n > @max_list_length,
      do: too_big!(":lists.duplicate/2", n, "elements", @max_list_length)

    :lists.duplicate(n, x)
  end

  @doc false
  def tuple_duplicate(x, n) do
    if is_integer(n) and n > @max_tuple_size,
      do: too_big!("Tuple.duplicate/2", n, "elements", @max_tuple_size)

    Tuple.duplicate(x, n)
  end

  @doc false
  def make_tuple(n, x) do
    if is_integer(n) and n > @max_tuple_size,
      do: too_big!(":erlang.make_tuple/2", n, "elements", @max_tuple_size)

    :erlang.make_tuple(n, x)
  end

  @doc false
  def pow(base, exp) do
    check_pow(base, exp, "**")
    base ** exp
  end

  @doc false
  def int_pow(base, exp) do
    check_pow(base, exp, "Integer.pow/2")
    Integer.pow(base, exp)
  end

  defp check_pow(base, exp, name) when is_integer(base) and is_integer(exp) and exp > 1 do
    bits = exp * bit_length(abs(base))

    if abs(base) > 1 and bits > @max_integer_bits,
      do: too_big!(name, bits, "bits", @max_integer_bits)
  end

  defp check_pow(_base, _exp, _name), do: :ok

  @doc false
  def bsl(a, shift) do
    if is_integer(a) and a != 0 and is_integer(shift) and
         shift + bit_length(abs(a)) > @max_integer_bits,
       do: too_big!("bsl (<<<)", shift + bit_length(abs(a)), "bits", @max_integer_bits)

    :erlang.bsl(a, shift)
  end

  defp bit_length(0), do: 0

  defp bit_length(n) when n < 1_152_921_504_606_846_976,
    do: n |> :math.log2() |> trunc() |> Kernel.+(1)

  defp bit_length(n), do: byte_size(:binary.encode_unsigned(n)) * 8

  @doc false
  def pad_leading(s, n, pad \\ " ") do
    check_pad(n, pad, "String.pad_leading")
    String.pad_leading(s, n, pad)
  end

  @doc false
  def pad_trailing(s, n, pad \\ " ") do
    check_pad(n, pad, "String.pad_trailing")
    String.pad_trailing(s, n, pad)
  end

  defp check_pad(n, pad, name) do
    width = if is_binary(pad), do: max(byte_size(pad), 1), else: 4

    if is_integer(n) and n * width > @max_binary_bytes,
      do: too_big!(name, n * width, "bytes", @max_binary_bytes)
  end

  @doc "The size of a bitstring segment with a dynamic size, checked before it is built."
  @spec bits(term, pos_integer) :: term
  def bits(n, unit) do
    if is_integer(n) and n * unit > @max_binary_bytes * 8,
      do: too_big!("a bitstring segment", div(n * unit, 8), "bytes", @max_binary_bytes)

    n
  end

  @doc "A bitstring the fragment just built, refused when it is over the limit."
  @spec binary(bitstring) :: bitstring
  def binary(bin) do
    if byte_size(bin) > @max_binary_bytes,
      do: too_big!("a binary", byte_size(bin), "bytes", @max_binary_bytes)

    bin
  end

  # -- copying and flattening

  @doc "Character data (or iodata) whose flattened size is within the limit."
  @spec chardata(term) :: term
  def chardata(data) when is_list(data) do
    case Bound.chardata_size(data, @max_chardata_nodes, @max_binary_bytes) do
      :ok -> data
      :over -> too_big!("character data", nil, "bytes", @max_binary_bytes)
    end
  end

  def chardata(data), do: data

  @doc false
  def send(dest, message) do
    cond do
      dest != self() ->
        deny!("send/2 to #{preview(dest)}: a fragment may only send messages to itself")

      not Bound.within?(message, @max_message_nodes) ->
        too_big!("a message", nil, "terms", @max_message_nodes)

      true ->
        Kernel.send(dest, message)
    end
  end

  @doc false
  def inspect(term, opts \\ []), do: Kernel.inspect(bounded(term), clamp(opts))

  @doc false
  def io_inspect(term, opts \\ []) do
    IO.inspect(bounded(term), clamp(opts))
    term
  end

  @doc false
  def puts(device, data), do: IO.puts(device!(device), chardata(data))

  @doc false
  def write(device, data), do: IO.write(device!(device), chardata(data))

  defp device!(device) when device in [:stdio, :standard_io], do: device

  defp device!(device),
    do: deny!("writing to #{preview(device)}: only the fragment's own output (:stdio) is allowed")

  defp bounded(term), do: Bound.prune(term, @max_inspect_nodes)

  defp clamp(opts) when is_list(opts) do
    opts
    |> Keyword.update(:limit, 50, &clamp_number(&1, 10_000))
    |> Keyword.update(:printable_limit, 4096, &clamp_number(&1, 1_000_000))
  end

  defp clamp(_opts), do: []

  defp clamp_number(n, max) when is_integer(n), do: min(n, max)
  defp clamp_number(_n, max), do: max

  # -- errors

  defp preview(term), do: Kernel.inspect(Bound.prune(term, 100), limit: 5, printable_limit: 40)

  defp deny!(message), do: raise(DeniedError, message)

  defp too_big!(what, nil, unit, limit),
    do: raise(LimitError, "#{what} would exceed #{limit} #{unit}; refused before allocating")

  defp too_big!(what, size, unit, limit),
    do:
      raise(
        LimitError,
        "#{what} would make #{size} #{unit} (limit #{limit}); refused before allocating"
      )
end
