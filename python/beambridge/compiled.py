"""The compiled executor beside the BEAM: every fragment of a session opened
with ``executors: ["beam", "compiled"]`` also runs on ``compiled_model``.

The compiled sessions live in one worker process, so that decoding (the
numba kernels of ``compiled_model.fast`` and the Python around them) never
delays the gateway's event loop or the BEAM's results. The worker keeps,
per session, the compiled context after every fragment: rewind and fork
work on the compiled side from its own history, never from the BEAM's
state.

:class:`Shadow` is the gateway's per-session half. It submits each
``fragment`` as it is announced, and emits the compiled ``result`` of
fragment *i* once both that result and the BEAM's result of *i* are known,
with ``agrees`` comparing the two ``data`` values (``None`` when the compiled
executor does not support the fragment). Compiled results keep index order,
and a block's ``done`` is held until its compiled results are out.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
from collections.abc import Callable
from concurrent.futures import Future, ProcessPoolExecutor
from typing import Any

__all__ = ["Shadow", "shutdown"]

logger = logging.getLogger("beambridge.compiled")

_pool: ProcessPoolExecutor | None = None


def _executor() -> ProcessPoolExecutor:
    """The worker process, started on first use (it loads the weights and
    the decode kernels)."""
    global _pool
    if _pool is None:
        context = multiprocessing.get_context("spawn")
        _pool = ProcessPoolExecutor(max_workers=1, mp_context=context)
    return _pool


def shutdown() -> None:
    """Stop the worker process, if one was started."""
    global _pool
    if _pool is not None:
        _pool.shutdown(wait=False, cancel_futures=True)
        _pool = None


# -- the worker process's side: plain functions over module state ------------

_sessions: dict[str, dict[int, Any]] = {}


def _open(sid: str, parent: str | None, at: int) -> None:
    from compiled_model import CompiledSession

    base = _sessions[parent][at] if parent is not None else CompiledSession()
    _sessions[sid] = {0: base.fork()}


def _run(sid: str, index: int, code: str, line: int) -> dict[str, Any]:
    history = _sessions[sid]
    session = history[max(history)].fork()
    result = session.run(code, line)
    history[index] = session
    return {
        "ok": result.ok,
        "value": result.value,
        "data": result.data,
        "error": result.error,
        "elapsed_us": result.elapsed_us,
        "trace_tokens": result.trace_tokens,
    }


def _rewind(sid: str, to: int) -> None:
    history = _sessions[sid]
    for index in [i for i in history if i > to]:
        del history[index]


def _close(sid: str) -> None:
    _sessions.pop(sid, None)


# -- the gateway's side ------------------------------------------------------


class Shadow:
    """The compiled executor of one session, driven by its BEAM events.

    ``emit`` receives each event to send to the client, in order. Methods
    are called from the event loop's thread only.
    """

    def __init__(
        self,
        sid: str,
        emit: Callable[[dict[str, Any]], None],
        *,
        parent: str | None = None,
        at: int = 0,
    ) -> None:
        self.sid = sid
        self._emit = emit
        self._order: list[int] = []
        self._compiled: dict[int, dict[str, Any]] = {}
        self._beam: dict[int, dict[str, Any]] = {}
        self._held: list[dict[str, Any]] = []
        self._submit(_open, sid, parent, at).add_done_callback(self._opened)

    def _opened(self, future: Future[None]) -> None:
        if (exc := future.exception()) is not None:
            logger.error("compiled executor could not open %s: %r", self.sid, exc)

    def fragment(self, event: dict[str, Any]) -> None:
        index = event["index"]
        self._order.append(index)
        future = self._submit(_run, self.sid, index, event["code"], event["line"])
        loop = asyncio.get_running_loop()
        future.add_done_callback(
            lambda f: loop.call_soon_threadsafe(self._compiled_done, index, f)
        )

    def beam_result(self, event: dict[str, Any]) -> None:
        self._beam[event["index"]] = event
        self._flush()

    def done(self, event: dict[str, Any]) -> bool:
        """Whether ``done`` may go now; otherwise it is held and sent later."""
        if not self._order:
            return True
        self._held.append(event)
        return False

    def rewound(self, to: int) -> None:
        self._submit(_rewind, self.sid, to)

    def close(self) -> None:
        self._submit(_close, self.sid)

    def abandon(self) -> None:
        """The BEAM side is gone: send what is held, drop what is pending."""
        self._order.clear()
        self._compiled.clear()
        self._beam.clear()
        self._flush()
        self.close()

    def _submit(self, fn: Callable[..., Any], *args: Any) -> Future[Any]:
        return _executor().submit(fn, *args)

    def _compiled_done(self, index: int, future: Future[dict[str, Any]]) -> None:
        try:
            self._compiled[index] = future.result()
        except Exception as exc:  # noqa: BLE001 - a dead worker or a model failure alike
            logger.error("compiled executor failed on fragment %d: %s", index, exc)
            error = {"kind": "internal", "message": str(exc), "line": None}
            self._compiled[index] = {"ok": False, "error": error, "elapsed_us": 0}
        self._flush()

    def _flush(self) -> None:
        while self._order:
            index = self._order[0]
            if index not in self._compiled or index not in self._beam:
                return
            self._order.pop(0)
            self._emit(
                self._result(index, self._compiled.pop(index), self._beam.pop(index))
            )
        held, self._held = self._held, []
        for event in held:
            self._emit(event)

    def _result(
        self, index: int, compiled: dict[str, Any], beam: dict[str, Any]
    ) -> dict[str, Any]:
        event: dict[str, Any] = {
            "type": "result",
            "session": self.sid,
            "index": index,
            "executor": "compiled",
            "ok": compiled["ok"],
            "elapsed_us": compiled["elapsed_us"],
            "trace_tokens": compiled.get("trace_tokens", 0),
        }
        if compiled["ok"]:
            event["value"] = compiled["value"]
            event["data"] = compiled["data"]
        else:
            event["error"] = compiled["error"]
        event["agrees"] = _agrees(compiled, beam)
        return event


def _agrees(compiled: dict[str, Any], beam: dict[str, Any]) -> bool | None:
    """Compare the two executors' outcomes; None when compiled cannot say."""
    if not compiled["ok"]:
        kind = (compiled.get("error") or {}).get("kind")
        if kind in ("unsupported", "internal"):
            return None
        beam_kind = None if beam.get("ok") else (beam.get("error") or {}).get("kind")
        return kind == beam_kind
    if not beam.get("ok"):
        return False
    data = beam.get("data")
    # JSON has one number type; Elixir's `true` must not equal 1.
    return type(data) is type(compiled["data"]) and data == compiled["data"]
