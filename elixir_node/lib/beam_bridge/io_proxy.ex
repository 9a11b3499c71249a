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
  """

  @flush_ms 5
  @flush_bytes 16 * 1024
  @max_event_bytes 64 * 1024

  @doc "Starts a proxy for the evaluation `ref` reporting to `session`."
  @spec start(pid, reference, pos_integer) :: pid
  def start(session, ref, max_output_bytes) do
    spawn(fn ->
      loop(%{
        session: session,
        ref: ref,
        buffer: [],
        size: 0,
        total: 0,
        limit: max_output_bytes,
        timer: nil,
        over: false
      })
    end)
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
        {reply, state} = io_request(request, state)
        send(from, {:io_reply, reply_as, reply})
        loop(state)

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

  defp io_request({:put_chars, chars}, state), do: put_chars(:unicode, chars, state)
  defp io_request({:put_chars, encoding, chars}, state), do: put_chars(encoding, chars, state)

  defp io_request({:put_chars, encoding, mod, fun, args}, state) do
    put_chars(encoding, apply(mod, fun, args), state)
  catch
    _, _ -> {{:error, :put_chars}, state}
  end

  defp io_request({:requests, requests}, state) do
    Enum.reduce_while(requests, {:ok, state}, fn request, {_, state} ->
      case io_request(request, state) do
        {:ok, state} -> {:cont, {:ok, state}}
        other -> {:halt, other}
      end
    end)
  end

  defp io_request({:get_geometry, _}, state), do: {{:error, :enotsup}, state}
  defp io_request({:setopts, _}, state), do: {:ok, state}
  defp io_request(:getopts, state), do: {[binary: true, encoding: :unicode], state}

  # Fragments have no standard input: reads see end of file.
  defp io_request(request, state) when elem(request, 0) in [:get_chars, :get_line, :get_until],
    do: {:eof, state}

  defp io_request(_request, state), do: {{:error, :request}, state}

  defp put_chars(encoding, chars, state) do
    case :unicode.characters_to_binary(chars, encoding) do
      text when is_binary(text) -> {:ok, buffer(text, state)}
      _ -> {{:error, :put_chars}, state}
    end
  catch
    _, _ -> {{:error, :put_chars}, state}
  end

  defp buffer(_text, %{over: true} = state), do: state

  defp buffer(text, state) do
    room = state.limit - state.total

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

  # The largest cut at or below `at` that does not split a UTF-8 code point
  # (whose continuation bytes are 0b10xxxxxx). Text that is not UTF-8 has
  # no code points to keep whole: it is cut at `at`.
  defp code_point_cut(text, at) when at >= byte_size(text), do: byte_size(text)
  defp code_point_cut(text, at), do: back_to_boundary(text, at, at)

  defp back_to_boundary(_text, at, cut) when at - cut >= 4 or cut == 0, do: at

  defp back_to_boundary(text, at, cut) do
    case :binary.at(text, cut) do
      byte when Bitwise.band(byte, 0xC0) == 0x80 -> back_to_boundary(text, at, cut - 1)
      _ -> cut
    end
  end
end
