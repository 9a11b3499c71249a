defmodule BeamBridge.IOProxy do
  @moduledoc """
  The group leader of one evaluation: it captures everything the fragment
  (and any process it starts) prints and passes it to the session as

      {:evaluation_output, ref, text}

  Bursts are coalesced: text is held until `@flush_ms` passes or
  `@flush_bytes` accumulate, so a loop printing one character at a time does
  not become one event per character.

  The evaluation's result also travels through the proxy (`finish/2`), which
  flushes what it holds before forwarding `{:evaluation_result, ref, result}`.
  Because the output and the result then come from one sender, the session
  always receives a fragment's output before its result.

  One message carries at most `@max_event_bytes` of text: a larger print
  is split, between UTF-8 code points, into several messages in order, so
  that no single output event is unbounded.

  When the printed total passes `max_output_bytes`, the proxy keeps only what
  fits and tells the session `{:evaluation_output_limit, ref}` once.

  What the evaluation's processes write to standard error (in practice the
  compiler's warnings) reaches the proxy too, through
  `BeamBridge.StandardError`, and becomes output like the rest. That text is
  rewritten in the session's names (`BeamBridge.Policy.humanize/2`) with
  the scope the evaluation last gave `put_scope/2`: the compiler names the
  pool variables the fragment was parsed into.
  """

  alias BeamBridge.Policy

  @flush_ms 5
  @flush_bytes 16 * 1024
  @max_event_bytes 64 * 1024

  @doc "Starts a proxy for the evaluation `ref` reporting to `session`."
  @spec start(pid, reference, pos_integer) :: pid
  def start(session, ref, max_output_bytes) do
    state = %{
      session: session,
      ref: ref,
      scope: nil,
      buffer: [],
      size: 0,
      total: 0,
      limit: max_output_bytes,
      timer: nil,
      over: false
    }

    # Spawned from a named function, so that the initial call marks the
    # process as a proxy (`initial_call/0`).
    spawn(__MODULE__, :init, [state])
  end

  @doc false
  def init(state), do: loop(state)

  @doc """
  The initial call of every proxy process, by which
  `BeamBridge.StandardError` recognises one with a single read.
  """
  @spec initial_call() :: mfa
  def initial_call, do: {__MODULE__, :init, 1}

  @doc """
  Gives the proxy the scope to rewrite standard error text with. Returns once
  the proxy has it, so a warning raised afterwards, by any process, is
  rewritten with this scope.
  """
  @spec put_scope(pid, Policy.Scope.t()) :: :ok
  def put_scope(proxy, scope) do
    ref = Process.monitor(proxy)
    send(proxy, {:put_scope, self(), ref, scope})

    receive do
      {^ref, :ok} -> Process.demonitor(ref, [:flush])
      {:DOWN, ^ref, _, _, _} -> :ok
    end

    :ok
  end

  @doc "Forwards the evaluation's result after flushing the output held so far."
  @spec finish(pid, term) :: :ok
  def finish(proxy, result) do
    send(proxy, {:finish, result})
    :ok
  end

  @doc """
  Stops the proxy of an evaluation that was killed. Returns the output it
  still held; output it had already sent is in the caller's mailbox.
  """
  @spec stop(pid) :: binary
  def stop(proxy) do
    ref = Process.monitor(proxy)
    send(proxy, {:stop, self(), ref})

    receive do
      {^ref, text} ->
        Process.demonitor(ref, [:flush])
        text

      {:DOWN, ^ref, _, _, _} ->
        ""
    end
  end

  defp loop(state) do
    receive do
      {:io_request, from, reply_as, request} ->
        {reply, state} = io_request(request, & &1, state)
        send(from, {:io_reply, reply_as, reply})
        loop(state)

      # Sent by `BeamBridge.StandardError` on behalf of one of the
      # evaluation's processes.
      {:standard_error_request, from, reply_as, request} ->
        {reply, state} = io_request(request, &humanize(&1, state.scope), state)
        send(from, {:io_reply, reply_as, reply})
        loop(state)

      {:put_scope, from, ref, scope} ->
        send(from, {ref, :ok})
        loop(%{state | scope: scope})

      # A step of a traced evaluation: output printed before it goes first.
      {:evaluation_step, line, text} ->
        state = flush(state)
        send(state.session, {:evaluation_step, state.ref, line, text})
        loop(state)

      :flush ->
        loop(flush(%{state | timer: nil}))

      {:finish, result} ->
        state = flush(state)
        send(state.session, {:evaluation_result, state.ref, result})

      {:stop, from, ref} ->
        send(from, {ref, IO.iodata_to_binary(state.buffer)})
    end
  end

  # -- the Erlang I/O protocol, output side only

  # `shown` rewrites the text before it is buffered (standard error's) or
  # keeps it as printed.

  defp io_request({:put_chars, chars}, shown, state),
    do: put_chars(:unicode, chars, shown, state)

  defp io_request({:put_chars, encoding, chars}, shown, state),
    do: put_chars(encoding, chars, shown, state)

  defp io_request({:put_chars, encoding, mod, fun, args}, shown, state) do
    put_chars(encoding, apply(mod, fun, args), shown, state)
  catch
    _, _ -> {{:error, :put_chars}, state}
  end

  defp io_request({:requests, requests}, shown, state) do
    Enum.reduce_while(requests, {:ok, state}, fn request, {_, state} ->
      case io_request(request, shown, state) do
        {:ok, state} -> {:cont, {:ok, state}}
        other -> {:halt, other}
      end
    end)
  end

  defp io_request({:get_geometry, _}, _shown, state), do: {{:error, :enotsup}, state}
  defp io_request({:setopts, _}, _shown, state), do: {:ok, state}
  defp io_request(:getopts, _shown, state), do: {[binary: true, encoding: :unicode], state}

  # Fragments have no standard input: reads see end of file.
  defp io_request(request, _shown, state)
       when elem(request, 0) in [:get_chars, :get_line, :get_until],
       do: {:eof, state}

  defp io_request(_request, _shown, state), do: {{:error, :request}, state}

  defp put_chars(encoding, chars, shown, state) do
    case :unicode.characters_to_binary(chars, encoding) do
      text when is_binary(text) -> {:ok, buffer(shown.(text), state)}
      _ -> {{:error, :put_chars}, state}
    end
  catch
    _, _ -> {{:error, :put_chars}, state}
  end

  defp humanize(text, nil), do: text
  defp humanize(text, scope), do: Policy.humanize(text, scope)

  defp buffer(_text, %{over: true} = state), do: state

  defp buffer(text, state) do
    # With no limit (`:infinity`), any text fits.
    room = if state.limit == :infinity, do: :infinity, else: state.limit - state.total

    if byte_size(text) > room do
      kept = binary_part(text, 0, code_point_cut(text, max(room, 0)))
      state = %{state | buffer: [state.buffer | kept], over: true}
      state = flush(state)
      send(state.session, {:evaluation_output_limit, state.ref})
      state
    else
      state = %{
        state
        | buffer: [state.buffer | text],
          size: state.size + byte_size(text),
          total: state.total + byte_size(text)
      }

      cond do
        state.size >= @flush_bytes -> flush(state)
        state.timer == nil -> %{state | timer: Process.send_after(self(), :flush, @flush_ms)}
        true -> state
      end
    end
  end

  defp flush(%{buffer: []} = state), do: state

  defp flush(state) do
    if state.timer, do: Process.cancel_timer(state.timer)

    send_pieces(state, IO.iodata_to_binary(state.buffer))
    %{state | buffer: [], size: 0, timer: nil}
  end

  defp send_pieces(_state, ""), do: :ok

  defp send_pieces(state, text) when byte_size(text) <= @max_event_bytes,
    do: send(state.session, {:evaluation_output, state.ref, text})

  defp send_pieces(state, text) do
    cut = code_point_cut(text, @max_event_bytes)
    <<piece::binary-size(cut), rest::binary>> = text
    send(state.session, {:evaluation_output, state.ref, piece})
    send_pieces(state, rest)
  end

  @doc """
  The largest cut at or below `at` bytes that does not split a UTF-8 code
  point (whose continuation bytes are 0b10xxxxxx). Text that is not UTF-8
  has no code points to keep whole: it is cut at `at`.
  """
  @spec code_point_cut(binary, non_neg_integer) :: non_neg_integer
  def code_point_cut(text, at) when at >= byte_size(text), do: byte_size(text)
  def code_point_cut(text, at), do: back_to_boundary(text, at, at)

  @doc "`text` cut to at most `max_bytes` between code points, ending in `…` when cut."
  @spec truncate(binary, non_neg_integer) :: binary
  def truncate(text, max_bytes) when byte_size(text) <= max_bytes, do: text
  def truncate(text, max_bytes), do: binary_part(text, 0, code_point_cut(text, max_bytes)) <> "…"

  defp back_to_boundary(_text, at, cut) when at - cut >= 4 or cut == 0, do: at

  defp back_to_boundary(text, at, cut) do
    case :binary.at(text, cut) do
      byte when Bitwise.band(byte, 0xC0) == 0x80 -> back_to_boundary(text, at, cut - 1)
      _ -> cut
    end
  end
end
