defmodule BeamBridge.Policy.Rules do
  @moduledoc """
  The allowlist: which remote functions a fragment may call, which calls are
  rewritten into a `BeamBridge.Policy.Guard` call that checks their
  arguments when they run, and why everything else is denied.

  A module is either allowed whole, allowed except some functions, or
  allowed only for some functions. Everything not listed is denied; the
  reasons below only make the message clearer. Both the static check and
  the guards of dynamic calls (`mod.fun()`, `apply/3`) ask `rule/3`.
  """

  # Modules allowed whole. Each was read function by function
  # (`__info__(:functions)`, `module_info(:exports)`, Elixir 1.14 on OTP 25)
  # for two things: turning data into atoms, and writing state that outlives
  # the evaluation (application env, :persistent_term, ETS, registered
  # names, the code server, the logger). The reflective functions every
  # module has (`__info__/1`, `module_info/1`, `__protocol__/1`, `impl_for/1`,
  # `blame`, ...) are denied for all of them by `@reflective` below.
  @whole [
    # Collections, pure functions of their arguments. The random functions
    # (Enum.random, shuffle, take_random) seed :rand in the evaluation's own
    # process dictionary; Stream.interval/timer wait in the evaluation.
    Enum,
    Stream,
    Map,
    MapSet,
    Keyword,
    Range,
    # Calendar types: pure except reading the clock. They call the module in
    # a struct's `calendar` field and the time zone database passed in, so
    # they reach only modules a fragment holds (see `@reflective`).
    Date,
    Date.Range,
    Time,
    NaiveDateTime,
    DateTime,
    Calendar.ISO,
    # Regex compiles with :re, which keeps no state; Version compiles
    # requirements to match specs, which are values; Base and Float are
    # arithmetic on their arguments.
    Regex,
    Version,
    Base,
    Float,
    # Access calls `fetch/2`, `get_and_update/3` or `pop/2` of a struct's
    # module, which are pure in every module a fragment can hold.
    Access,
    # Protocols dispatch on the struct's name, so they reach the impls of
    # modules a fragment can hold; their reflective functions are denied.
    String.Chars,
    List.Chars,
    Inspect,
    Enumerable,
    Collectable,
    # Building documents and escape codes; IO.ANSI only reads the
    # :ansi_enabled setting.
    Inspect.Algebra,
    IO.ANSI,
    # Exceptions: `exception/1` and `message/1` build and describe values,
    # Exception formats them and stacktraces as text; `blame` and
    # `blame_mfa` (which read compiled code from disk) are in `@reflective`.
    Exception,
    ArgumentError,
    ArithmeticError,
    BadArityError,
    BadBooleanError,
    BadFunctionError,
    BadMapError,
    BadStructError,
    CaseClauseError,
    CondClauseError,
    Enum.EmptyError,
    Enum.OutOfBoundsError,
    ErlangError,
    FunctionClauseError,
    KeyError,
    MatchError,
    Protocol.UndefinedError,
    RuntimeError,
    SystemLimitError,
    TryClauseError,
    UndefinedFunctionError,
    UnicodeConversionError,
    WithClauseError,
    # Erlang data structures and maths: pure. :rand keeps its state in the
    # process dictionary (`seed/1`, `uniform/0`) of the evaluation.
    :math,
    :maps,
    :queue,
    :gb_trees,
    :gb_sets,
    :sets,
    :ordsets,
    :orddict,
    :proplists,
    :rand
  ]

  @atoms "makes atoms at run time"
  @module_atoms "finds existing atoms, module names among them, at run time"

  # Modules allowed except some functions, each with why it is denied. The
  # rest of each was reviewed like the modules allowed whole: String, List,
  # Integer, Tuple, Bitwise, :lists and :binary are pure (their allocating
  # functions are guarded below); Calendar keeps `strftime`, `truncate` and
  # reading the time zone database; URI parses and encodes strings (it
  # reads the default ports itself); Inspect.Opts keeps `new/1`.
  @except %{
    String => [to_atom: @atoms, to_existing_atom: @module_atoms],
    List => [to_atom: @atoms, to_existing_atom: @module_atoms],
    Calendar => [
      put_time_zone_database: "sets the time zone database of the whole node (application env)"
    ],
    URI => [default_port: "reads or sets a scheme's default port for the whole node"],
    Inspect.Opts => [
      default_inspect_fun: "reads or sets how every session inspects values (a :persistent_term)"
    ],
    Integer => [],
    Tuple => [],
    Bitwise => [],
    :lists => [],
    :binary => []
  }

  # Functions denied on every module but the session's own: they reflect on
  # compiled modules, so what they return can name any module (the impls of
  # a protocol include File.Stream), or they read compiled code from disk.
  @reflective_reason "reflects on compiled modules; its result can name modules the sandbox denies"
  @blame_reason "reads modules' compiled code from disk to explain an error"
  @reflective %{
    module_info: @reflective_reason,
    behaviour_info: @reflective_reason,
    impl_for: @reflective_reason,
    impl_for!: @reflective_reason,
    blame: @blame_reason,
    blame_mfa: @blame_reason,
    hint_for_loaded_module: @blame_reason
  }

  @only %{
    Kernel => ~w(! != !== * + - / < <= == === > >= ++ -- abs binary_part binary_slice
      bit_size byte_size ceil div elem floor get_and_update_in get_in hd inspect
      is_atom is_binary is_bitstring is_boolean is_exception is_float is_function
      is_integer is_list is_map is_map_key is_number is_pid is_port is_reference
      is_struct is_tuple length make_ref map_size max min node not pop_in put_elem
      put_in rem round self struct struct! tl trunc tuple_size update_in throw exit
      to_string to_charlist apply send ** if unless && || |> .. <> =~ in and or raise
      reraise match? then tap is_nil destructure binding sigil_c sigil_s sigil_S sigil_r
      sigil_R sigil_D sigil_T sigil_N sigil_U sigil_C)a,
    :erlang => ~w(+ - * / div rem band bor bxor bnot bsr bsl abs == /= =:= =/= < > =< >=
      not and or xor andalso orelse ++ -- error throw raise hd tl length element
      setelement tuple_size map_size byte_size bit_size is_atom is_binary is_bitstring
      is_boolean is_float is_function is_integer is_list is_map is_map_key is_number
      is_pid is_port is_record is_reference is_tuple map_get min max round trunc ceil
      floor float integer_to_binary integer_to_list binary_to_integer binary_to_list
      bitstring_to_list list_to_integer float_to_binary float_to_list binary_to_float
      list_to_float atom_to_binary atom_to_list tuple_to_list list_to_tuple binary_part
      make_ref self monotonic_time system_time unique_integer convert_time_unit
      append_element delete_element insert_element exit make_tuple iolist_to_binary
      list_to_binary iolist_size send apply)a,
    IO => ~w(puts write inspect iodata_to_binary chardata_to_string iodata_length)a,
    Process => [:sleep],
    System => ~w(monotonic_time system_time os_time unique_integer convert_time_unit)a,
    Function => [:identity],
    # Splitting a command line and building one make no atoms; parsing one
    # turns its switches into atoms.
    OptionParser => [:split, :to_argv],
    # Step events: `BeamBridge.Trace.instrument/1` wraps traced expressions
    # in this call before the check; it only reports the value to the
    # evaluation's own IO proxy.
    BeamBridge.Trace => [:step]
  }

  # Calls rewritten into a guard: `{:replace, fun}` calls `Guard.fun` with the
  # same arguments (`{:replace_ns, fun}` adds the session's namespace);
  # `{:args, [{index, fun}]}` passes argument `index` through `Guard.fun`.
  @guarded %{
    {String, :duplicate, 2} => {:replace, :string_duplicate},
    {:binary, :copy, 2} => {:replace, :binary_copy},
    {List, :duplicate, 2} => {:replace, :list_duplicate},
    {:lists, :duplicate, 2} => {:replace, :lists_duplicate},
    {Tuple, :duplicate, 2} => {:replace, :tuple_duplicate},
    {:erlang, :make_tuple, 2} => {:replace, :make_tuple},
    {:erlang, :make_tuple, 3} => {:deny, "allocates a tuple of any size"},
    {Integer, :pow, 2} => {:replace, :int_pow},
    {Kernel, :**, 2} => {:replace, :pow},
    {:erlang, :bsl, 2} => {:replace, :bsl},
    {Bitwise, :bsl, 2} => {:replace, :bsl},
    {Bitwise, :<<<, 2} => {:replace, :bsl},
    {String, :pad_leading, 2} => {:replace, :pad_leading},
    {String, :pad_leading, 3} => {:replace, :pad_leading},
    {String, :pad_trailing, 2} => {:replace, :pad_trailing},
    {String, :pad_trailing, 3} => {:replace, :pad_trailing},
    {Kernel, :send, 2} => {:replace, :send},
    {:erlang, :send, 2} => {:replace, :send},
    {:erlang, :send, 3} => {:deny, "sends messages to other processes"},
    {Kernel, :apply, 2} => {:replace, :apply},
    {:erlang, :apply, 2} => {:replace, :apply},
    {Kernel, :apply, 3} => {:replace_ns, :apply},
    {:erlang, :apply, 3} => {:replace_ns, :apply},
    {Kernel, :inspect, 1} => {:replace, :inspect},
    {Kernel, :inspect, 2} => {:replace, :inspect},
    {IO, :inspect, 1} => {:replace, :io_inspect},
    {IO, :inspect, 2} => {:replace, :io_inspect},
    {IO, :inspect, 3} => {:deny, "writes to an IO device other than the fragment's output"},
    {IO, :puts, 1} => {:args, [{0, :chardata}]},
    {IO, :write, 1} => {:args, [{0, :chardata}]},
    {IO, :puts, 2} => {:replace, :puts},
    {IO, :write, 2} => {:replace, :write},
    {IO, :iodata_to_binary, 1} => {:args, [{0, :chardata}]},
    {IO, :chardata_to_string, 1} => {:args, [{0, :chardata}]},
    {IO, :iodata_length, 1} => {:args, [{0, :chardata}]},
    {List, :to_string, 1} => {:args, [{0, :chardata}]},
    {String.Chars, :to_string, 1} => {:args, [{0, :chardata}]},
    {Kernel, :to_string, 1} => {:args, [{0, :chardata}]},
    {Enum, :join, 1} => {:args, [{0, :chardata}]},
    {Enum, :join, 2} => {:args, [{0, :chardata}]},
    {:erlang, :iolist_to_binary, 1} => {:args, [{0, :chardata}]},
    {:erlang, :list_to_binary, 1} => {:args, [{0, :chardata}]},
    {:erlang, :iolist_size, 1} => {:args, [{0, :chardata}]},
    {:erlang, :exit, 2} => {:deny, "sends exit signals to other processes"},
    {Kernel, :node, 1} => {:deny, "reads the node of a process"},
    {Kernel, :struct, 1} => {:replace_ns, :struct},
    {Kernel, :struct, 2} => {:replace_ns, :struct},
    {Kernel, :struct!, 1} => {:replace_ns, :struct!},
    {Kernel, :struct!, 2} => {:replace_ns, :struct!}
  }

  @reasons %{
    File => "reaches the file system",
    Path => "reaches the file system",
    IO => "reads or writes IO devices other than the fragment's output",
    System => "reaches the operating system",
    Port => "starts operating system processes",
    Node => "reaches other nodes",
    Code => "loads or evaluates code",
    Module => "changes modules at run time",
    Macro => "expands or escapes code at run time",
    Process => "reaches processes (only Process.sleep/1 is allowed)",
    Agent => "starts processes",
    Task => "starts processes",
    GenServer => "starts or calls processes",
    Supervisor => "starts processes",
    DynamicSupervisor => "starts processes",
    Registry => "reaches registered processes",
    Application => "reads or changes the node's configuration",
    Function => "builds or inspects functions from names",
    Kernel => "starts, signals or inspects processes, or reaches the node",
    Logger => "writes the node's log",
    OptionParser =>
      "turns text into atoms: existing ones, module names among them, or new ones " <>
        "(only split/1 and to_argv/1,2 are allowed)",
    :erlang => "reaches the VM (only a small part of :erlang is allowed)",
    :os => "reaches the operating system",
    :file => "reaches the file system",
    :prim_file => "reaches the file system",
    :code => "loads code",
    :init => "stops or restarts the node",
    :ets => "reaches tables shared between processes",
    :dets => "reaches the file system",
    :persistent_term => "reaches storage shared by the whole node",
    :counters => "allocates shared memory",
    :atomics => "allocates shared memory",
    :sys => "inspects or changes other processes",
    :dbg => "traces processes",
    :erts_debug => "inspects the VM",
    :erl_eval => "evaluates code",
    :gen_tcp => "reaches the network",
    :gen_udp => "reaches the network",
    :inet => "reaches the network",
    :socket => "reaches the network",
    :httpc => "reaches the network",
    :ssl => "reaches the network",
    :global => "reaches processes of the cluster",
    :pg => "reaches process groups",
    :timer => "starts timers that run code",
    :unicode => "converts unbounded character data",
    :string => "allocates strings of any size",
    :crypto => "allocates random data of any size"
  }

  @whole_set MapSet.new(@whole)
  @only_sets Map.new(@only, fn {m, names} -> {m, MapSet.new(names)} end)

  @type rule :: :allow | {:replace | :replace_ns, atom} | {:args, list} | {:deny, binary}

  @doc """
  What the policy does with a call to `module.fun/arity`. Calls into the
  session's own modules are not asked about.
  """
  @spec rule(atom, atom, arity) :: rule
  def rule(module, fun, arity) do
    case @guarded do
      %{{^module, ^fun, ^arity} => guarded} -> guarded
      _ -> reflective(fun) || listed(module, fun)
    end
  end

  # `__info__/1`, `__protocol__/1`, `__struct__/0` and the other hooks the
  # compiler adds, and the names in `@reflective`.
  defp reflective(fun) do
    case @reflective do
      %{^fun => reason} ->
        {:deny, reason}

      _ ->
        name = Atom.to_string(fun)

        if String.starts_with?(name, "__") and String.ends_with?(name, "__"),
          do: {:deny, @reflective_reason}
    end
  end

  defp listed(module, fun) do
    cond do
      MapSet.member?(@whole_set, module) ->
        :allow

      denied = @except[module] ->
        case Keyword.fetch(denied, fun) do
          {:ok, reason} -> {:deny, reason}
          :error -> :allow
        end

      set = @only_sets[module] ->
        if MapSet.member?(set, fun), do: :allow, else: {:deny, reason(module)}

      true ->
        {:deny, reason(module)}
    end
  end

  @doc "Why calls into `module` are denied."
  @spec reason(atom) :: binary
  def reason(module), do: Map.get(@reasons, module, "is not on the sandbox's allowlist")

  @doc "Whether `module` may appear in a fragment as a value (a struct name, an argument)."
  @spec known?(atom) :: boolean
  def known?(module) do
    MapSet.member?(@whole_set, module) or is_map_key(@except, module) or
      is_map_key(@only_sets, module)
  end
end
