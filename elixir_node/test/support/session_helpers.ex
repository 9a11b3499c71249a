defmodule BeamBridge.SessionHelpers do
  @moduledoc """
  Drives a `BeamBridge.Session` from a test: the test process owns the
  session, so its events arrive as `{:bridge_event, map}` messages.
  """

  import ExUnit.Assertions

  alias BeamBridge.Session

  @doc "Opens a session with client `options` and start `opts`; returns `{id, pid}`."
  def open_session(options \\ %{}, opts \\ []) do
    id = "test-#{System.unique_integer([:positive])}"
    {:ok, pid} = Session.start(id, [owner: self(), options: options] ++ opts)
    assert_receive {:bridge_event, %{type: :opened, session: ^id}}
    {id, pid}
  end

  @doc "Runs `code` as one block; returns its events through `done`."
  def eval(pid, code) do
    Session.request(pid, {:eval, code})
    collect(&(&1.type == :done))
  end

  @doc "Events up to and including the first for which `stop?` is true."
  def collect(stop?, acc \\ []) do
    assert_receive {:bridge_event, event}, 5_000
    if stop?.(event), do: Enum.reverse([event | acc]), else: collect(stop?, [event | acc])
  end

  @doc "The code a session is running speculatively (not committed yet), or nil."
  def speculating(pid) do
    case :sys.get_state(pid).running do
      %{index: nil, code: code} -> code
      _ -> nil
    end
  end

  @doc "The `result` events among `events`."
  def results(events), do: for(%{type: :result} = r <- events, do: r)

  @doc "The value of `code`'s one result."
  def value(pid, code), do: hd(results(eval(pid, code))).value
end
