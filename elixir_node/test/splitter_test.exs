defmodule BeamBridge.SplitterTest do
  # Not async: the atom-safety test reads the node-wide atom count, which
  # concurrently running tests would move.
  use ExUnit.Case, async: false

  alias BeamBridge.Splitter

  @corpus_dir Path.expand("../../protocol/vectors/splitter_corpus", __DIR__)

  # Each case is {name, block, number of fragments the parse of the block has}.
  @constructs [
    {"one expression per line", "x = 1\ny = x + 1\nz = y * 2\n", 3},
    {"pipeline across blank and comment lines",
     "[3, 1, 2]\n\n# sort first\n|> Enum.sort()\n  # then double\n|> Enum.map(&(&1 * 2))\nlength([])\n",
     2},
    {"line starting with *", "x = 2\n* 3\ny = 1\n", 2},
    {"line starting with ==", "1 + 1\n== 2\n", 1},
    {"line starting with ++", "[1]\n++ [2]\n", 1},
    {"line starting with <>", "\"a\"\n<> \"b\"\n", 1},
    {"line starting with and", "true\nand false\n", 1},
    {"line starting with ||", "nil\n|| :default\n", 1},
    {"line starting with .", "String\n.upcase(\"x\")\n", 1},
    {"line starting with when", "x\nwhen is_integer(x)\n", 1},
    {"line starting with = and in", "x\n= 1\ny\nin [1]\n", 2},
    {"unary + and - lines begin expressions", "x = 1\n-x\n+x\n- 2\n", 4},
    {"semicolons", "a = 1; b = 2\nc = a + b; d = c\n", 4},
    {"semicolon before a multi-line expression", "a = 1; b = [\n  2,\n  3\n]\nb\n", 3},
    {"multi-line do/end", "if true do\n  :yes\nelse\n  :no\nend\n:after\n", 2},
    {"fn/end", "f = fn x ->\n  y = x * 2\n  y + 1\nend\nf.(1)\n", 2},
    {"heredoc with double quotes", "s = \"\"\"\nline # not a comment\n\nend\n\"\"\"\ns\n", 2},
    {"heredoc with single quotes", "c = '''\n  do\n  '''\nc\n", 2},
    {"multi-line ~S heredoc", "raw = ~S\"\"\"\n\#{not interpolated}\n\"\"\"\nraw\n", 2},
    {"sigils", "r = ~r/a;b/\nw = ~w(do end)\n", 2},
    {"string with newlines", "s = \"first\nsecond\n\nthird\"\nString.length(s)\n", 2},
    {"comments with do and end", "# do\nx = 1 # do\n# end\ny = 2\n", 2},
    {"strings containing #", "a = \"# not a comment\"\nb = \"\#{a}#\"\n", 2},
    {"multi-line map", "m = %{\n  a: 1,\n\n  b: 2\n}\nm.a\n", 2},
    {"multi-line list", "l = [\n  1,\n  # two\n  2\n]\nhd(l)\n", 2},
    {"multi-line tuple", "t = {\n  :ok,\n  1\n}\nelem(t, 1)\n", 2},
    {"keyword do: syntax", "if true, do: 1, else: 2\ndef_like = [do: 1]\n", 2},
    {"case", "case {:ok, 1} do\n  {:ok, n} ->\n    n\n\n  _ ->\n    0\nend\n", 1},
    {"cond", "cond do\n  1 > 2 -> :a\n  true -> :b\nend\n", 1},
    {"with", "with {:ok, a} <- {:ok, 1},\n     b = a + 1 do\n  b\nelse\n  _ -> :error\nend\n", 1},
    {"for", "for x <- 1..3,\n    rem(x, 2) == 1,\n    into: [] do\n  x\nend\n", 1},
    {"defmodule with nested defs",
     "defmodule M do\n  @moduledoc false\n  def a, do: b()\n\n  defp b do\n    :b\n  end\nend\nM.a()\n",
     2},
    {"module attributes", "@doc \"x\"\n@tag :slow\n", 2},
    {"trailing comments", "x = 1 # one\ny = 2 # two\n# end of block\n", 2},
    {"CRLF line endings", "x = 1\r\n|> Kernel.+(2)\r\n\r\ny = [\r\n  1\r\n]\r\n", 2},
    {"no trailing newline", "x = 1\ny = 2", 2},
    {"pipeline stages with arguments over several lines",
     "x = [1]\n|> Enum.map(fn y ->\n  y\nend)\n|> Enum.zip(\n  [2]\n)\nx\n", 2},
    {"stage with a string whose line looks like a comment",
     "x = \"a\"\n|> Kernel.<>(\"b\n# not a comment\")\n\n# a comment\ny = x\n", 2},
    {"do on its own line", "if true\ndo\n  :a\nend\n:b\n", 2},
    {"range operator at the start of a line", "1\n..5\nr = 1\n..\n5\n...\n", 3},
    {"interpolation across lines", "s = \"a \#{\n  1 + 1\n} b\"\ns\n", 2},
    {"empty parentheses", "()\nx = ()\n", 2},
    {"nested brackets closed on many lines",
     "rows = [\n  [1, %{a: [2]}],\n  {3, <<4>>},\n  [fn x -> x end, (1 + 2)]\n]\nrows\n", 2},
    {"nested do blocks and fns closed on many lines",
     "defmodule N do\n  def a(x) do\n    f = fn y ->\n      if y do\n        [y]\n      end\n" <>
       "    end\n    f.(x)\n  end\n\n  def b, do: (1)\nend\nN.a(1)\n", 2},
    {"string opened inside an open list",
     "l = [\n  \"a]\n  b\",\n  ~s(c]),\n  \"\"\"\n  ]\n  \"\"\",\n  4\n]\nl\n", 2},
    {"blank lines only", "\n\n  \n# only a comment\n", 0}
  ]

  describe "feed/2 and finish/1 on each construct" do
    for {name, block, count} <- @constructs do
      @block block
      @count count

      test "#{name}: fed whole, by character and in random chunks" do
        fragments = split_everywhere(@block, 1..8)
        assert length(fragments) == @count
        assert_same_as_parse(@block, fragments)
      end
    end
  end

  describe "feed/2 on a line starting with an operator" do
    # Every operator, with an operand after it so that it parses either
    # as unary or as binary; `->`, `=>` and `//` cannot follow a newline.
    @operators ~w(|> <<< >>> <<~ ~>> <~ ~> <~> <|> ++ -- +++ --- .. <> ... + - * / ** == != === !==
                  =~ < > <= >= && &&& || ||| and or not in when :: | <- \\\\ = ! ^ ^^^ ~~~ & @ .)

    test "agrees with the parse of the whole block for every operator" do
      for op <- @operators ++ ["not in"] do
        block = "x = 1\n#{op} y\nz\n"
        assert_same_as_parse(block, split_everywhere(block, 1..2), op)
      end
    end

    test "agrees when the operator's line is unfinished on its own" do
      for op <- ["|>", "++", "and", "when", ".", "-", "+", "&"] do
        block = "x = 1\n#{op} f(\n  1\n)\nz\n"
        assert_same_as_parse(block, split_everywhere(block, 1..2), op)
      end
    end
  end

  describe "feed/2 on the corpus" do
    test "every block gives the parse of the whole block in many chunkings" do
      blocks = corpus_blocks()
      assert length(blocks) >= 40

      for {name, block} <- blocks do
        fragments = split_everywhere(block, 1..25)
        assert fragments != [], name
        assert_same_as_parse(block, fragments, name)
      end
    end

    test "each corpus file fed whole as one block gives the parse of the file" do
      for path <- corpus_files() do
        block = File.read!(path)
        assert_same_as_parse(block, split_everywhere(block, 1..3), path)
      end
    end
  end

  describe "speculative/1" do
    test "names the complete expression that waits for the next line" do
      {[], splitter} = Splitter.feed(Splitter.new(), "\n  x = 1 + 2\n")
      assert %{code: "x = 1 + 2", line: 2} = Splitter.speculative(splitter)
      {[], splitter} = Splitter.feed(splitter, "|> Kernel.*(3)\n")
      assert Splitter.speculative(splitter) == nil
    end

    test "is nil while the expression is unfinished or after two on one line" do
      {[], open} = Splitter.feed(Splitter.new(), "if x do\n")
      assert Splitter.speculative(open) == nil
      {[], two} = Splitter.feed(Splitter.new(), "a = 1; b = 2\n")
      assert Splitter.speculative(two) == nil
    end
  end

  describe "feed/2 timing" do
    test "commits a fragment once the next line's first word shows it begins an expression" do
      splitter = Splitter.new()

      assert {[], splitter} = Splitter.feed(splitter, "x = 1\n")
      assert {[], splitter} = Splitter.feed(splitter, "\n# comment\n")
      assert {[], splitter} = Splitter.feed(splitter, "y")
      assert {[%{code: "x = 1", line: 1}], splitter} = Splitter.feed(splitter, " = ")
      assert {[], splitter} = Splitter.feed(splitter, "2\n")
      assert {[%{code: "y = 2", line: 4}], _} = Splitter.finish(splitter)
    end

    test "a first word that may still grow into an operator does not commit" do
      for {head, rest} <- [{"an", "d true"}, {"o", "r y"}, {"not", " in [1]"}, {"|", "> f()"}] do
        {[], splitter} = Splitter.feed(Splitter.new(), "x\n" <> head)
        assert {[], splitter} = Splitter.feed(splitter, rest)
        assert {[%{code: code, line: 1}], _} = Splitter.finish(splitter)
        assert code == "x\n" <> head <> rest
      end
    end

    test "a call's opening parenthesis shows its name is whole" do
      {[], splitter} = Splitter.feed(Splitter.new(), "x = 1\nIO.puts")
      assert {[%{code: "x = 1"}], _} = Splitter.feed(splitter, "(")
    end

    test "holds a fragment while the next line may still continue it" do
      {[], splitter} = Splitter.feed(Splitter.new(), "x = 1\n|")
      assert {[], splitter} = Splitter.feed(splitter, "> Kernel.+(1)\n")
      assert {[%{code: "x = 1\n|> Kernel.+(1)"}], _} = Splitter.feed(splitter, "x\n")
    end

    test "a chunk ending inside a token never commits early" do
      assert [%{code: "x = 10"}] = split(["x = 1", "0\n"])
      assert [%{code: "foobar"}, %{code: "baz"}] = split(["foo", "bar\nbaz"])
      assert [%{code: "a", line: 1}, %{code: "bc", line: 1}] = split(["a; b", "c"])
    end

    test "comment lines after a pipeline's last stage are left out of it" do
      assert [%{code: "[1]\n# kept\n|> hd()", line: 1}, %{code: "y", line: 6}] =
               split(["[1]\n# kept\n|> hd()\n# dropped\n\ny\n"])
    end

    test "pending/1 returns the text not committed yet" do
      {_, splitter} = Splitter.feed(Splitter.new(), "x = 1\ny = [\n  1,")
      assert Splitter.pending(splitter) == "y = [\n  1,"
    end

    test "finish/1 starts the next block at line 1" do
      {_, splitter} = Splitter.feed(Splitter.new(), "a = 1\nb = 2\n")
      {[%{line: 2}], splitter} = Splitter.finish(splitter)
      {_, splitter} = Splitter.feed(splitter, "c = 3\n")
      assert {[%{code: "c = 3", line: 1}], _} = Splitter.finish(splitter)
    end

    test "new/1 ignores unknown options" do
      assert [%{code: "1"}] = split(["1"], Splitter.new(unknown: true))
    end
  end

  describe "syntax errors" do
    test "a bad line in the middle is one broken fragment and the rest still splits" do
      block = "x = 1\ny = )\nz = x + 1\nz\n"

      assert [
               %{code: "x = 1", line: 1, error: nil},
               %{code: "y = )", line: 2, error: %{line: 2, message: message}},
               %{code: "z = x + 1", line: 3, error: nil},
               %{code: "z", line: 4, error: nil}
             ] = split_everywhere(block, 1..10)

      assert message =~ "unexpected token"
    end

    test "a line that cannot begin an expression breaks the expression before it" do
      block = "x = [1]\n|> )\ny = 2\nend\nz = 3\n"

      assert [
               %{code: "x = [1]\n|> )", line: 1, error: %{line: 2}},
               %{code: "y = 2\nend", line: 3, error: %{line: 4}},
               %{code: "z = 3", line: 5, error: nil}
             ] = split_everywhere(block, 1..10)
    end

    test "a broken do block is one fragment up to the next expression at its indentation" do
      block = """
      defmodule Bad do
        def f(x) do
          x +* 2
        end

        def g, do: 1
      end
      ok = Bad
      """

      assert [
               %{line: 1, error: %{line: 3, message: message}, code: code},
               %{code: "ok = Bad", line: 8, error: nil}
             ] = split_everywhere(block, 1..10)

      assert message =~ "syntax error"
      assert code == block |> String.split("\nok = Bad") |> hd()
    end

    test "an error on the first line of an indented body ends at a line with less indentation" do
      block = "x = )\n  :still_part\n:next\n"

      assert [%{code: "x = )\n  :still_part", error: %{line: 1}}, %{code: ":next", line: 3}] =
               split_everywhere(block, 1..6)
    end

    test "an unterminated string at finish is a broken fragment" do
      block = "x = 1\ny = \"never closed\nz = 2\n"

      assert [
               %{code: "x = 1", error: nil},
               %{
                 code: "y = \"never closed\nz = 2",
                 line: 2,
                 error: %{line: line, message: message}
               }
             ] = split_everywhere(block, 1..10)

      assert message =~ "missing terminator"
      assert line in 2..4
    end

    test "an unterminated heredoc or do block at finish is a broken fragment" do
      assert [%{code: "s = \"\"\"\nabc", error: %{message: "missing terminator" <> _}}] =
               split_everywhere("s = \"\"\"\nabc\n", 1..4)

      assert [%{code: "if x do\n  1", error: %{message: _}}] =
               split_everywhere("if x do\n  1", 1..4)
    end

    test "an error on a line that closes nothing is found at finish" do
      assert [%{code: "x = 1", error: nil}, %{code: "y = [\n  1, :", line: 2, error: %{line: 3}}] =
               split_everywhere("x = 1\ny = [\n  1, :", 1..6)
    end

    test "an error on a line that closes nothing breaks the expression once it closes" do
      fragments = split_everywhere("y = [\n  1, :\n]\nz = 2\n", 1..6)
      assert [%{error: %{line: 2}}, %{code: "z = 2", error: nil}] = fragments
    end

    test "a trailing binary operator at finish is a broken fragment" do
      assert [%{code: "x = 1", error: nil}, %{code: "y = 1 +", line: 2, error: %{line: 2}}] =
               split_everywhere("x = 1\ny = 1 +\n\n", 1..4)
    end
  end

  describe "atom safety" do
    test "splitting thousands of unique names creates no atoms" do
      prefix = "zq#{System.unique_integer([:positive])}"
      count = 2_000

      block =
        Enum.map_join(1..count, fn i ->
          name = "#{prefix}_#{i}"
          alias_name = "Zq#{prefix}N#{i}"

          """
          #{name} = :#{name}_atom
          %{#{name}_key: 1, "#{name}": 2}
          #{alias_name}.#{name}_fun(#{name}) |> #{name}_local()
          @#{name}_attr [#{name}_kw: :"#{name} quoted"]
          """
        end)

      before = :erlang.system_info(:atom_count)
      fragments = split(chunks(block, {:random, 7, 1..64}))
      growth = :erlang.system_info(:atom_count) - before

      assert length(fragments) == 4 * count
      assert Enum.all?(fragments, &is_nil(&1.error))

      # The stream names 16,000 distinct ones.
      assert growth < 200

      for i <- [1, div(count, 2), count],
          suffix <- ["", "_atom", "_key", "_fun", "_local", "_attr", "_kw", " quoted"] do
        refute existing_atom?("#{prefix}_#{i}#{suffix}")
      end

      refute existing_atom?("Zq#{prefix}N#{count}")
    end
  end

  # Helpers

  defp split(chunks, splitter \\ Splitter.new()) do
    {fed, splitter} =
      Enum.reduce(chunks, {[], splitter}, fn chunk, {acc, splitter} ->
        {fragments, splitter} = Splitter.feed(splitter, chunk)
        {acc ++ fragments, splitter}
      end)

    {rest, _} = Splitter.finish(splitter)
    fed ++ rest
  end

  # Splits `block` whole, by character and in random chunkings, asserts
  # they all agree and returns the fragments.
  defp split_everywhere(block, seeds) do
    expected = split([block])
    assert split(chunks(block, :chars)) == expected

    for seed <- seeds, sizes <- [1..5, 1..40] do
      assert split(chunks(block, {:random, seed, sizes})) == expected,
             "seed #{seed}, chunk sizes #{inspect(sizes)}"
    end

    expected
  end

  defp chunks(block, :chars), do: String.codepoints(block)

  defp chunks(block, {:random, seed, sizes}) do
    state = :rand.seed_s(:exsss, {seed, 17, 31})
    random_chunks(block, sizes, state, [])
  end

  # Cuts at bytes, so chunks may end inside a multi-byte character too.
  defp random_chunks("", _sizes, _state, acc), do: Enum.reverse(acc)

  defp random_chunks(block, first..last, state, acc) do
    {size, state} = :rand.uniform_s(last - first + 1, state)
    size = min(size + first - 1, byte_size(block))
    <<chunk::binary-size(size), rest::binary>> = block
    random_chunks(rest, first..last, state, [chunk | acc])
  end

  # The oracle: the fragments are the top-level expressions of the whole
  # block, each fragment's text parsed at its own line giving the same
  # tree, and each text taken from the block in order.
  defp assert_same_as_parse(block, fragments, label \\ "") do
    expected =
      case Code.string_to_quoted!(block, emit_warnings: false) do
        {:__block__, [], exprs} -> exprs
        # A block of comments only; `()` alone would read the same.
        {:__block__, _meta, []} -> []
        expr -> [expr]
      end

    assert length(fragments) == length(expected), "#{label}: #{inspect(fragments)}"

    Enum.reduce(Enum.zip(fragments, expected), 0, fn {fragment, expr}, from ->
      assert fragment.error == nil, label

      assert parse_fragment(fragment) == expr, label

      haystack = binary_part(block, from, byte_size(block) - from)
      assert {at, size} = :binary.match(haystack, fragment.code), label
      from + at + size
    end)
  end

  # `not y` alone parses as a block of one expression.
  defp parse_fragment(fragment) do
    case Code.string_to_quoted!(fragment.code, line: fragment.line, emit_warnings: false) do
      {:__block__, [], [expr]} -> expr
      expr -> expr
    end
  end

  defp corpus_files, do: Path.wildcard(Path.join(@corpus_dir, "*.exs"))

  defp corpus_blocks do
    for path <- corpus_files(),
        {block, i} <- path |> File.read!() |> String.split("\n# ---\n") |> Enum.with_index() do
      {"#{Path.basename(path)} block #{i + 1}", block}
    end
  end

  defp existing_atom?(name) do
    _ = String.to_existing_atom(name)
    true
  rescue
    ArgumentError -> false
  end
end
