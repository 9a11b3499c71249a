"""Step events under ``trace``, end to end."""

from __future__ import annotations

import pytest

from .conftest import Wire, by_type
from .test_contract import check_order

pytestmark = pytest.mark.asyncio(loop_scope="session")


async def test_trace_sends_step_events(wire: Wire) -> None:
    """With ``trace`` on, a pipeline reports its stages as ``step`` events."""
    session = await wire.open(trace=True)
    events = await wire.block(session, "[3, 1, 2]\n|> Enum.sort()\n|> Enum.reverse()")
    check_order(events)
    steps = by_type(events, "step")
    assert steps, "no step events with trace on"
    assert "[1, 2, 3]" in [s["value"] for s in steps]
