defmodule BeamBridge.Splitter do
  @moduledoc """
  Cuts the text of a block into fragments, one per top-level expression,
  as soon as each is certain to be complete.

  The session feeds every chunk of a block into its splitter and queues
  the fragments that come back for evaluation; `finish/1` ends the block.
  The splitter is a plain data structure: it holds only text that is not
  committed yet, never a process.

  ## How fragments are found

  Decisions are taken only when a line is complete, so a chunk that ends
  in the middle of a token can never commit anything early. Every
  decision asks Elixir's parser (`Code.string_to_quoted/2`), never a
  pattern over the text:

    * a line with code after a complete expression begins a new one when
      it can begin one on its own, which is the parser's own rule after a
      newline: only a binary operator (`|>`, `*`, `==`, `and`, `.`,
      `when`, …) continues an expression there, and none of those can
      begin one, while `+`, `-`, `!`, `&`, `@` and `not` are unary at the
      start of a line. The one operator that is both, `..`, continues.
      Whatever the line leaves open is closed before asking, because the
      tokenizer reports a missing terminator before the parser sees that
      `|> foo(` starts with an operator;
    * blank and comment-only lines after a complete expression are held
      back: they are kept inside it when a continuation follows and left
      out otherwise;
    * while the pending expression is unfinished, each new line is
      appended, and is looked at only when it contains what closes the
      innermost open construct (`end`, `)`, `\"""`, the sigil's
      delimiter, …, taken from the tokenizer's message) or, after a
      trailing operator, at every line. Then only the text since the last
      checkpoint is parsed, behind a stand-in for the constructs open
      there (see "Cost"); the whole pending text is parsed again only when
      that shows everything may be closed;
    * expressions separated by `;` become separate fragments with the
      same line; they are committed together with the last one.

  Fragment text is the exact source of the expression, with surrounding
  whitespace, separating `;` and the blank and comment-only lines between
  fragments left out. Lines are counted from 1 in each block.

  ## Text that can never parse

  A parse error that is not "the input ends too early" makes the pending
  text a broken fragment, reported with the parser's message and line:

    * a line that cannot begin an expression (a stray `)`, `end` or
      `|> )`) belongs to the expression before it, so that expression is
      reported broken with it rather than run without its tail;
    * otherwise the broken fragment starts at the first line of the
      expression and runs up to the next line that is indented no deeper
      than that first line and that starts an expression on its own; the
      lines in between (the rest of a broken `do` block, for instance) are
      part of it;
    * at `finish/1`, unfinished pending text is a broken fragment too.

  The tokenizer reports a missing terminator before any parse error, so
  an error inside an open `do … end` or bracket is found only when it
  closes; an open construct that never closes takes the rest of the block
  into one broken fragment, as the parse of the whole block would.

  ## Cost

  Committed text is dropped, so the cost is linear in the stream: a
  one-line fragment is parsed once, a pipeline once per stage line plus
  once whole, and an unfinished expression that spans lines is not parsed
  whole again at each line that closes something inside it.

  While an expression is unfinished, the splitter keeps a checkpoint: the
  constructs still open at the end of some earlier line (brackets, `do`
  and `fn` blocks), written as a short stand-in text (`[`, `x do`, `fn`,
  …), and the lines since. Whether a new line closes them is asked of the
  tokenizer on the stand-in plus those lines, which the tokenizer sees
  with the same open constructs as the whole text; when only brackets and
  blocks stay open, the checkpoint moves to the end of the line. The open
  constructs come from the tokenizer's "missing terminator" message, one
  at a time, by closing the innermost and asking again. A line costs
  about `d` small parses for `d` open constructs, and the whole text is
  parsed once more only when the stand-in shows that everything may be
  closed, which the whole parse then decides.

  Strings, heredocs and sigils are not stood in for: while one is open
  the checkpoint stays before it, so its lines are parsed again at each
  line that holds its delimiter, as the whole pending text was before.

  ## Atoms

  Parsing never creates atoms: names unknown to the VM reach the syntax
  tree as `{:unknown_name, binary}` through `:static_atoms_encoder`, which
  the parser calls for identifiers, aliases, keyword keys and atom
  literals alike. The trees stay inside the splitter; the evaluator parses
  each fragment's text again under its own rules.
  """

  # Nesting deeper than this in one line is taken to begin an expression.
  @max_closers 32

  # Open constructs a stand-in text can reopen, by the tokenizer's name
  # for them, and the stand-in.
  @reopen %{
    ~s("(") => "(",
    ~s("[") => "[",
    ~s("{") => "{",
    ~s("<<") => "<<",
    ~s("do") => "x do",
    ~s("fn") => "fn"
  }

  defstruct partial: "",
            line: 1,
            pending: "",
            pending_line: 1,
            status: :empty,
            checkpoint: {[], ""}

  @typedoc "A fragment: its exact source, first line in the block and parse error, if any."
  @type fragment :: %{
          code: binary,
          line: pos_integer,
          error: nil | %{message: binary, line: pos_integer}
        }

  @typedoc """
  Splitter state. `status` describes `pending`, the complete lines not yet
  committed:

    * `:empty` - nothing pending;
    * `{:complete, size, exprs}` - the first `size` bytes parse as
      `exprs`; the rest is blank and comment-only lines;
    * `{:continued, size}` - a complete expression and continuation lines
      not parsed together yet; the first `size` bytes end with code;
    * `{:incomplete, closer}` - an expression that is not finished yet;
      only a line containing `closer` (when not nil) can finish it.
      `checkpoint` is then `{open, since}`: tokenized, a stand-in for
      the constructs in `open` followed by `since` leaves the same
      constructs open as `pending`;
    * `{:broken, error, indent}` - text that can never parse, held until a
      line indented at most `indent` starts an expression.
  """
  @opaque t :: %__MODULE__{
            partial: binary,
            line: pos_integer,
            pending: binary,
            pending_line: pos_integer,
            status:
              :empty
              | {:continued, non_neg_integer}
              | {:incomplete, binary | nil}
              | {:complete, non_neg_integer, list}
              | {:broken, map, non_neg_integer},
            checkpoint: {[{binary, binary}], binary}
          }

  @doc """
  Returns a splitter for a new block.

  No options are used yet; unknown ones are ignored.
  """
  @spec new(keyword) :: t
  def new(opts \\ []) when is_list(opts), do: %__MODULE__{}

  @doc """
  Appends `chunk` to the block and returns the fragments it commits, in
  order.
  """
  @spec feed(t, binary) :: {[fragment], t}
  def feed(%__MODULE__{} = splitter, chunk) when is_binary(chunk) do
    splitter |> take_chunk(chunk) |> commit_early()
  end

  defp take_chunk(splitter, chunk) do
    case :binary.match(chunk, "\n") do
      :nomatch ->
        {[], %{splitter | partial: splitter.partial <> chunk}}

      _newline ->
        [first | rest] = :binary.split(chunk, "\n", [:global])
        {complete, [partial]} = Enum.split(rest, -1)
        lines = [splitter.partial <> first | complete]
        splitter = %{splitter | partial: partial}

        {fragments, splitter} =
          Enum.reduce(lines, {[], splitter}, fn line, {fragments, splitter} ->
            {new, splitter} = take_line(splitter, line <> "\n")
            {Enum.reverse(new, fragments), splitter}
          end)

        {Enum.reverse(fragments), splitter}
    end
  end

  @doc """
  Ends the block: commits everything pending, unfinished text as a broken
  fragment, and returns a splitter ready for the next block.
  """
  @spec finish(t) :: {[fragment], t}
  def finish(%__MODULE__{} = splitter) do
    {last, splitter} =
      case splitter.partial do
        "" -> {[], splitter}
        partial -> take_line(%{splitter | partial: ""}, partial)
      end

    {last ++ flush(splitter), new()}
  end

  @doc """
  The expression that is complete but not committed yet, because the next
  line may still continue it; `nil` when there is none. A session may run
  it speculatively: it is committed with exactly this code and line unless
  a continuation arrives.
  """
  @spec speculative(t) :: %{code: binary, line: pos_integer} | nil
  def speculative(%__MODULE__{status: {:complete, size, [_one]}} = splitter) do
    splitter.pending
    |> binary_part(0, size)
    |> fragment(splitter.pending_line)
    |> Map.delete(:error)
  end

  def speculative(%__MODULE__{}), do: nil

  @doc "Returns the text received in this block and not committed yet."
  @spec pending(t) :: binary
  def pending(%__MODULE__{pending: pending, partial: partial}), do: pending <> partial

  # Lines

  defp take_line(splitter, line) do
    n = splitter.line
    dispatch(%{splitter | line: n + 1}, line, n)
  end

  defp dispatch(splitter, line, n) do
    case {splitter.status, kind(line)} do
      {:empty, :code} ->
        {[], start(splitter, line, n, parse(line, n))}

      {:empty, _blank_or_comment} ->
        {[], splitter}

      {{:complete, _size, _exprs}, :code} ->
        parsed = parse(line, n)

        if continues?(line, n, parsed),
          do: {[], continue(splitter, line)},
          else: {commit(splitter), start(splitter, line, n, parsed)}

      {{:complete, _size, _exprs}, _blank_or_comment} ->
        {[], append(splitter, line)}

      {{:continued, _size}, :code} ->
        parsed = parse(line, n)

        if continues?(line, n, parsed),
          do: {[], continue(splitter, line)},
          else: begin_after_continued(splitter, line, n, parsed)

      {{:continued, _size}, _blank_or_comment} ->
        {[], append(splitter, line)}

      {{:incomplete, closer}, _kind} ->
        if closer == nil or :binary.match(line, closer) != :nomatch,
          do: {[], grow(splitter, line)},
          else: {[], append_open(splitter, line)}

      {{:broken, error, indent}, :code} ->
        resync(splitter, line, n, error, indent)

      {{:broken, _error, _indent}, _blank_or_comment} ->
        {[], append(splitter, line)}
    end
  end

  defp append(splitter, line), do: %{splitter | pending: splitter.pending <> line}

  defp start(splitter, text, n, parsed) do
    splitter = %{splitter | pending: text, pending_line: n}

    case parsed do
      {:ok, exprs} ->
        %{splitter | status: {:complete, byte_size(text), exprs}}

      {:incomplete, error} ->
        %{splitter | status: {:incomplete, closer(error)}, checkpoint: {[], text}}

      {:error, error} ->
        %{splitter | status: {:broken, error, indent(text)}}
    end
  end

  # `line` is the next line with code after a complete expression. After
  # a newline the parser continues an expression only with a binary
  # operator, and none of those can begin an expression, except `..` (a
  # full range alone, the range operator after an operand).
  defp continues?(line, n, parsed) do
    range_operator?(line) or not starts_expression?(line, n, parsed)
  end

  defp continue(splitter, line) do
    continued = append(splitter, line)
    %{continued | status: {:continued, byte_size(continued.pending)}}
  end

  defp begin_after_continued(splitter, line, n, parsed) do
    case settle(splitter) do
      %{status: {:complete, _size, _exprs}} = settled ->
        {commit(settled), start(settled, line, n, parsed)}

      # The continued expression is unfinished, so `line` is inside it.
      settled ->
        dispatch(settled, line, n)
    end
  end

  # Continuation lines are parsed with the pending text only when a line
  # that can begin an expression arrives, so a pipeline is parsed once, not
  # once per stage.
  # The first `size` bytes end with code; what follows looks like blank and
  # comment lines, and is, unless the code before it is unfinished.
  defp settle(splitter) do
    {:continued, size} = splitter.status
    code = binary_part(splitter.pending, 0, size)

    case parse(code, splitter.pending_line) do
      {:ok, exprs} ->
        %{splitter | status: {:complete, size, exprs}}

      {:incomplete, _error} when size < byte_size(splitter.pending) ->
        pending = splitter.pending
        start(splitter, pending, splitter.pending_line, parse(pending, splitter.pending_line))

      parsed ->
        start(splitter, splitter.pending, splitter.pending_line, parsed)
    end
  end

  defp append_open(splitter, line) do
    {stack, since} = splitter.checkpoint
    %{append(splitter, line) | checkpoint: {stack, since <> line}}
  end

  # `line` may close what is open. The stand-in and the lines since the
  # checkpoint answer whether it can; the whole text is parsed only then.
  defp grow(splitter, line) do
    {stack, since} = splitter.checkpoint
    since = since <> line
    joint = splitter.pending <> line

    case open_constructs(stack, since) do
      {:reopenable, open} ->
        {closer, _opener} = List.last(open)
        %{splitter | pending: joint, status: {:incomplete, closer}, checkpoint: {open, ""}}

      {:other, closer} ->
        checkpoint = {stack, since}
        %{splitter | pending: joint, status: {:incomplete, closer}, checkpoint: checkpoint}

      :closed ->
        start(splitter, joint, splitter.pending_line, parse(joint, splitter.pending_line))
    end
  end

  # What the stand-in for `stack` followed by `since` leaves open:
  # `{:reopenable, open}` when a stand-in can reopen all of it,
  # `{:other, closer}` when something else is open (a string, a heredoc,
  # a sigil, nesting deeper than @max_closers), `:closed` when nothing is.
  # Stacks list `{closer, opener}` pairs, outermost first.
  #
  # The stand-in opens one construct per line, so when the innermost open
  # construct starts on stand-in line `k`, `since` closed what it opened
  # and the first `k` constructs stay open: one parse for the common line.
  # Otherwise `since` opened more, and closing the innermost shows the next.
  defp open_constructs(stack, since), do: probe(stand_in(stack) <> since, stack, [])

  defp probe(text, stack, found) do
    with {:incomplete, error} <- parse(text, 1),
         closer when is_binary(closer) <- closer(error),
         {opener, line} <- opener(error) do
      cond do
        line <= length(stack) and elem(Enum.at(stack, line - 1), 1) == opener ->
          {:reopenable, Enum.take(stack, line) ++ found}

        line > length(stack) and is_map_key(@reopen, opener) and length(found) < @max_closers ->
          probe(text <> "\n" <> closer, stack, [{closer, opener} | found])

        true ->
          {:other, if(found == [], do: closer, else: found |> List.last() |> elem(0))}
      end
    else
      _closed when found == [] -> :closed
      _closed -> {:reopenable, found}
    end
  end

  defp stand_in(stack),
    do: Enum.map_join(stack, fn {_closer, opener} -> @reopen[opener] <> "\n" end)

  defp resync(splitter, line, n, error, indent) do
    parsed = if indent(line) <= indent, do: parse(line, n), else: {:error, error}

    case parsed do
      {:error, _} ->
        {[], append(splitter, line)}

      _ok_or_incomplete ->
        {[broken(splitter, error)], start(splitter, line, n, parsed)}
    end
  end

  # Whether `line`, parsed alone as `parsed`, can begin an expression. The
  # tokenizer reports a missing terminator before the parser sees the
  # tokens, so whatever `line` leaves open is closed first (`|> foo(`
  # cannot begin one: `|> foo()` fails at its first token). When the line
  # is broken alone, only the text before the error counts: `y = )` can
  # begin one (`y = ` is merely unfinished), `|> )` cannot.
  defp starts_expression?(line, n, parsed, closed \\ 0) do
    case parsed do
      {:ok, _exprs} ->
        true

      {:incomplete, error} ->
        case closer(error) do
          closer when is_binary(closer) and closed < @max_closers ->
            closed_line = line <> "\n" <> closer
            starts_expression?(closed_line, n, parse(closed_line, n), closed + 1)

          # A trailing operator: the parser got past the first token.
          _other ->
            true
        end

      {:error, %{line: ^n, column: column}} ->
        if column > indent(line) + 1 do
          before = take_columns(line, column - 1)
          starts_expression?(before, n, parse(before, n), closed)
        else
          false
        end

      {:error, _later_line} ->
        true
    end
  end

  defp range_operator?(line) do
    case trim_indent(line) do
      "..." <> _ -> false
      ".." <> _ -> true
      _other -> false
    end
  end

  # The text that closes the innermost open construct, from the
  # tokenizer's message; nil when the input ends in some other way (a
  # trailing operator or backslash).
  defp closer(%{message: "missing terminator: " <> rest}), do: closer_text(rest)

  defp closer(%{message: "missing interpolation terminator: " <> rest}),
    do: rest |> closer_text() |> String.trim("\"")

  defp closer(_error), do: nil

  # The tokenizer's name for the construct a missing terminator closes,
  # quoted as in its message (`"do"`, `"["`), or its word for one that
  # has no token of its own (`string`, `heredoc`, `sigil ~s(`),
  # and the line it starts on.
  defp opener(%{message: "missing terminator: " <> rest}) do
    with [_closer, what] <- String.split(rest, " (for ", parts: 2),
         [opener, line] <- String.split(what, " starting at line ", parts: 2),
         {line, ")" <> _hint} <- Integer.parse(line) do
      {opener, line}
    else
      _unknown -> nil
    end
  end

  defp opener(_error), do: nil

  defp closer_text(rest) do
    case String.split(rest, " (for ", parts: 2) do
      [closer, _what] when closer != "" -> closer
      _unknown -> nil
    end
  end

  # Commits

  # The first token of the next line already settles whether the pending
  # expression goes on: a complete word there that could not continue it
  # commits it before the rest of that line arrives, so a fragment's
  # result does not wait for the model to finish writing the next line.
  defp commit_early({fragments, %{status: {tag, _, _}} = splitter}) when tag == :complete,
    do: commit_before_partial(fragments, splitter)

  defp commit_early({fragments, %{status: {:continued, _}} = splitter}),
    do: commit_before_partial(fragments, splitter)

  defp commit_early(done), do: done

  defp commit_before_partial(fragments, splitter) do
    n = splitter.line

    with {:ok, word} <- first_word(splitter.partial),
         false <- continues?(word, n, parse(word, n)),
         %{status: {:complete, _size, _exprs}} = settled <- settled(splitter) do
      {fragments ++ commit(settled), %{settled | status: :empty, pending: ""}}
    else
      _wait -> {fragments, splitter}
    end
  end

  defp settled(%{status: {:continued, _size}} = splitter), do: settle(splitter)
  defp settled(splitter), do: splitter

  # The line's first word when something after it shows the word is whole:
  # white space or an opening parenthesis. `not` waits for the next word,
  # since `not in` continues an expression.
  defp first_word(partial) do
    text = trim_indent(partial)

    case :binary.match(text, [" ", "\t", "\r", "("]) do
      {at, _} when at > 0 ->
        case binary_part(text, 0, at) do
          "#" <> _comment -> :error
          "not" -> :error
          word -> {:ok, word}
        end

      _none ->
        :error
    end
  end

  defp flush(splitter) do
    case splitter.status do
      :empty ->
        []

      {:continued, _size} ->
        flush(settle(splitter))

      {:complete, _size, _exprs} ->
        commit(splitter)

      # Lines without the closer were not parsed, and one of them may hold
      # an error that only the whole parse shows.
      {:incomplete, _closer} ->
        case parse(splitter.pending, splitter.pending_line) do
          {:ok, _exprs} = parsed ->
            flush(start(splitter, splitter.pending, splitter.pending_line, parsed))

          {_incomplete_or_error, error} ->
            [broken(splitter, error)]
        end

      {:broken, error, _indent} ->
        [broken(splitter, error)]
    end
  end

  defp commit(splitter) do
    {:complete, size, exprs} = splitter.status
    text = binary_part(splitter.pending, 0, size)
    split_semicolons(text, splitter.pending_line, 1, exprs)
  end

  defp broken(splitter, error) do
    {code, line} = trim(splitter.pending, splitter.pending_line)
    %{code: code, line: line, error: Map.take(error, [:message, :line])}
  end

  # `text` parses as `exprs`, more than one only when `;` separates them.
  # A `;` is a boundary when the text up to it parses, at its original
  # position, as the next expression; a `;` inside a string or a comment
  # never does.
  defp split_semicolons(text, line, _column, [_one]), do: [fragment(text, line)]

  defp split_semicolons(text, line, column, [expr | rest]) do
    case find_boundary(text, line, column, expr, :binary.matches(text, ";")) do
      {:ok, size} ->
        head = binary_part(text, 0, size)
        tail = binary_part(text, size + 1, byte_size(text) - size - 1)
        {tail_line, tail_column} = advance(head <> ";", line, column)
        [fragment(head, line) | split_semicolons(tail, tail_line, tail_column, rest)]

      :error ->
        # Unreachable while the parser agrees with itself; keeping the text
        # whole still evaluates it correctly.
        [fragment(text, line)]
    end
  end

  defp find_boundary(_text, _line, _column, _expr, []), do: :error

  defp find_boundary(text, line, column, expr, [{at, 1} | more]) do
    case parse(binary_part(text, 0, at), line, column) do
      {:ok, [^expr]} -> {:ok, at}
      _other -> find_boundary(text, line, column, expr, more)
    end
  end

  defp fragment(text, line) do
    {code, line} = trim(text, line)
    %{code: code, line: line, error: nil}
  end

  # Parsing

  defp parse(text, line, column \\ 1) do
    opts = [
      line: line,
      column: column,
      columns: true,
      emit_warnings: false,
      static_atoms_encoder: &encode_name/2
    ]

    case Code.string_to_quoted(text, opts) do
      # `()` reads the same as no expression; only text with code is parsed.
      {:ok, {:__block__, [], []} = empty} -> {:ok, [empty]}
      {:ok, {:__block__, [], exprs}} -> {:ok, exprs}
      {:ok, expr} -> {:ok, [expr]}
      {:error, {meta, message, ""}} -> {:incomplete, error(meta, message, "")}
      {:error, {meta, message, token}} -> {:error, error(meta, message, token)}
    end
  end

  # Catching the bare badarg skips building an ArgumentError for each
  # unknown name.
  defp encode_name(name, _meta) do
    {:ok, :erlang.binary_to_existing_atom(name, :utf8)}
  catch
    :error, :badarg -> {:ok, {:unknown_name, name}}
  end

  defp error(meta, message, token) do
    text =
      case {message, token} do
        {{prefix, suffix}, token} -> prefix <> token <> suffix
        {"syntax error before: ", ""} -> "syntax error: the expression is not finished"
        {message, token} -> message <> token
      end

    %{message: text, line: meta[:line], column: meta[:column]}
  end

  # Text

  defp kind(<<c, rest::binary>>) when c in [?\s, ?\t, ?\r, ?\f, ?\v], do: kind(rest)
  defp kind(<<?\n, _rest::binary>>), do: :blank
  defp kind(""), do: :blank
  defp kind("#" <> _comment), do: :comment
  defp kind(_code), do: :code

  defp indent(line), do: byte_size(line) - byte_size(trim_indent(line))

  defp trim_indent(<<c, rest::binary>>) when c in [?\s, ?\t], do: trim_indent(rest)
  defp trim_indent(rest), do: rest

  # Drops surrounding whitespace and leading `;`, keeping count of the
  # lines dropped in front.
  defp trim(text, line) do
    body = trim_front(text)
    dropped = binary_part(text, 0, byte_size(text) - byte_size(body))
    {String.trim_trailing(body), line + count_newlines(dropped)}
  end

  defp trim_front(<<c, rest::binary>>) when c in [?\s, ?\t, ?\r, ?\n, ?\f, ?\v, ?;],
    do: trim_front(rest)

  defp trim_front(rest), do: rest

  defp count_newlines(text), do: length(:binary.matches(text, "\n"))

  # The parser counts columns in code points.
  defp advance(text, line, column) do
    case :binary.matches(text, "\n") do
      [] ->
        {line, column + code_points(text)}

      newlines ->
        {at, 1} = List.last(newlines)
        after_last = binary_part(text, at + 1, byte_size(text) - at - 1)
        {line + length(newlines), 1 + code_points(after_last)}
    end
  end

  defp code_points(text), do: text |> String.to_charlist() |> length()

  defp take_columns(line, count) do
    line |> String.to_charlist() |> Enum.take(count) |> List.to_string()
  end
end
