"""The ``beambridge`` command: ``serve``, ``run FILE``, ``demo`` and ``compare FILE``.

``serve`` runs a gateway until SIGINT/SIGTERM. ``run`` streams a file the way
a model writes (token-sized chunks at a steady rate) and prints events as they
come (``--trace``: step events too); without ``--url`` it starts its own
embedded stack. ``demo`` streams ``examples/demo.exs`` through an embedded
stack, printing each code line as it is sent and each result as it arrives,
then ``examples/change_of_mind.exs`` in the same session, whose ``#!`` cue
lines make the demo cancel a fragment that never ends and rewind past a bad
binding; then a latency summary.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ipaddress
import logging
import os
import re
import secrets
import signal
import statistics
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from .client import Session, connect
from .errors import BeambridgeError
from .gateway import Gateway, GatewayConfig
from .link import parse_address
from .messages import Done, Event, Fragment, Output, Result, Step

__all__ = ["main", "tokens"]

DEFAULT_RATE = 40.0
# Like a BPE tokenizer: leading whitespace sticks to the next word or symbol.
_TOKEN = re.compile(r"\s*(?:\w{1,6}|[^\w\s]{1,2})|\s+")


def tokens(text: str) -> list[str]:
    """Cut text into model-token-sized chunks that join back to it."""
    return _TOKEN.findall(text)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the console script."""
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=getattr(logging, args.log_level.upper()),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    if getattr(args, "debug_frames", False):
        logging.getLogger("beambridge").setLevel(logging.DEBUG)
    try:
        return _run_loop(args.func(args))
    except KeyboardInterrupt:
        return 130
    except BeambridgeError as exc:
        print(f"beambridge: {exc}", file=sys.stderr)
        return 1


def _run_loop(main: Coroutine[Any, Any, int]) -> int:
    """Run on uvloop when it is installed: it takes about a quarter off the
    Python share of a round trip (fewer, cheaper transport calls)."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    return uvloop.run(main)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="beambridge", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--log-level", default="warning", help="default: warning")
    sub = parser.add_subparsers(required=True, metavar="COMMAND")

    serve = sub.add_parser("serve", help="run the gateway")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8765, help="0 picks a free port")
    auth = serve.add_mutually_exclusive_group()
    auth.add_argument(
        "--token",
        help="clients' bearer token (default: BEAMBRIDGE_TOKEN or the file named"
        " by BEAMBRIDGE_TOKEN_FILE, else random and printed)",
    )
    auth.add_argument("--no-auth", action="store_true", help="loopback hosts only")
    serve.add_argument(
        "--node",
        action="extend",
        nargs="+",
        default=[],
        metavar="HOST:PORT",
        help="running nodes (--node A B, or --node repeated); their secret from"
        " BEAM_BRIDGE_SECRET or BEAM_BRIDGE_SECRET_FILE. Without --node: an"
        " embedded node",
    )
    _limit_flags(serve)
    serve.add_argument(
        "--debug-frames", action="store_true", help="log every frame at debug level"
    )
    serve.set_defaults(func=_serve)

    run = sub.add_parser("run", help="stream a file and print events live")
    run.add_argument("file", type=Path)
    run.add_argument("--url", help="a gateway's ws:// URL (default: embedded stack)")
    run.add_argument("--token", default=os.environ.get("BEAMBRIDGE_TOKEN"))
    run.add_argument(
        "--rate", type=float, default=DEFAULT_RATE, help="tokens per second"
    )
    run.add_argument(
        "--trace", action="store_true", help="show a step event for each value"
    )
    run.add_argument(
        "--no-speculate",
        action="store_true",
        help="run no fragment before its commit",
    )
    run.set_defaults(func=_run)

    compare = sub.add_parser(
        "compare", help="run a file on the BEAM and the compiled executor"
    )
    compare.add_argument("file", type=Path)
    compare.add_argument("--url", help="a gateway's ws:// URL (default: embedded)")
    compare.add_argument("--token", default=os.environ.get("BEAMBRIDGE_TOKEN"))
    compare.set_defaults(func=_compare)

    demo = sub.add_parser("demo", help="stream examples/demo.exs on an embedded stack")
    demo.add_argument(
        "--rate", type=float, default=DEFAULT_RATE, help="tokens per second"
    )
    demo.add_argument(
        "--file",
        type=Path,
        help="stream only this file (default: examples/demo.exs, then"
        " examples/change_of_mind.exs with its cancel and rewind)",
    )
    demo.set_defaults(func=_demo)
    return parser


# -- serve -------------------------------------------------------------------

_DEFAULTS = GatewayConfig()


def _limit_flags(serve: argparse.ArgumentParser) -> None:
    """The gateway's limits, each defaulting to :class:`GatewayConfig`'s."""
    flags: list[tuple[str, type, str]] = [
        ("--max-message-bytes", int, "bytes of one client message"),
        ("--max-messages-per-second", float, "messages per second per connection"),
        ("--max-sessions-per-connection", int, "open sessions per connection"),
        ("--max-sessions", int, "open sessions on the gateway"),
        ("--max-pending-bytes", int, "chunk text per session since its last end"),
    ]
    for flag, kind, what in flags:
        default = getattr(_DEFAULTS, flag[2:].replace("-", "_"))
        serve.add_argument(
            flag,
            type=kind,
            default=default,
            metavar="N",
            help=what + " (default: %(default)s)",
        )
    serve.add_argument(
        "--allow-origin",
        action="append",
        default=[],
        metavar="ORIGIN",
        help="accept browser handshakes only from this Origin (repeatable;"
        " default: no origin check)",
    )


async def _serve(args: argparse.Namespace) -> int:
    if args.no_auth and not _is_loopback(args.host):
        print(
            "beambridge: --no-auth is allowed only on a loopback host", file=sys.stderr
        )
        return 2
    given = args.token or _env_token()
    token = None if args.no_auth else (given or secrets.token_urlsafe(24))
    nodes = tuple(parse_address(text) for text in args.node)
    config = GatewayConfig(
        host=args.host,
        port=args.port,
        token=token,
        nodes=nodes,
        secret=_node_secret() if nodes else None,
        max_message_bytes=args.max_message_bytes,
        max_messages_per_second=args.max_messages_per_second,
        max_sessions_per_connection=args.max_sessions_per_connection,
        max_sessions=args.max_sessions,
        max_pending_bytes=args.max_pending_bytes,
        allow_origins=tuple(args.allow_origin),
        debug_frames=args.debug_frames,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    gateway = Gateway(config)
    try:
        if not await _unless_stopped(_start(gateway, bool(nodes)), stop):
            return 0
        if token is not None and not given:
            print(f"token: {token}", flush=True)
        print(f"listening on {gateway.url}", flush=True)
        await stop.wait()
    finally:
        await gateway.close()
    return 0


async def _start(gateway: Gateway, remote: bool) -> None:
    await gateway.start()
    try:
        await gateway.wait_nodes(timeout=10 if remote else 60)
    except TimeoutError:
        logging.getLogger("beambridge.cli").warning(
            "no BEAM node connected yet; /healthz answers 503 until one is"
        )


async def _unless_stopped(work: Coroutine[Any, Any, None], stop: asyncio.Event) -> bool:
    """Run ``work`` to its end (True), or cancel it once ``stop`` is set (False),
    so a signal during startup does not wait for the startup's own timeouts."""
    task = asyncio.ensure_future(work)
    stopping = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({task, stopping}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopping.cancel()
    if task.done():
        task.result()
        return True
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    return False


def _env_token() -> str | None:
    if token := os.environ.get("BEAMBRIDGE_TOKEN"):
        return token
    if path := os.environ.get("BEAMBRIDGE_TOKEN_FILE"):
        try:
            return Path(path).read_text().strip() or None
        except OSError as exc:
            raise BeambridgeError(f"cannot read BEAMBRIDGE_TOKEN_FILE: {exc}") from exc
    return None


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _node_secret() -> str:
    if secret := os.environ.get("BEAM_BRIDGE_SECRET"):
        return secret
    if path := os.environ.get("BEAM_BRIDGE_SECRET_FILE"):
        return Path(path).read_text().strip()
    raise BeambridgeError("--node needs BEAM_BRIDGE_SECRET or BEAM_BRIDGE_SECRET_FILE")


# -- run and demo ------------------------------------------------------------


async def _run(args: argparse.Namespace) -> int:
    text = args.file.read_text()
    console = Console(highlight=False)
    options = {"trace": args.trace, "speculate": not args.no_speculate}
    async with AsyncExitStack() as stack:
        url, token = await _target(stack, args.url, args.token)
        async with await connect(url, token=token) as client:
            session = await client.open(**options)
            report = await _stream(session, text, args.rate, console)
            await session.close()
    return 0 if report.done is not None else 1


async def _demo(args: argparse.Namespace) -> int:
    path = args.file or _find_example("demo.exs")
    console = Console(highlight=False)
    console.print(
        f"[bold]beambridge demo[/]: streaming {path.name} at {args.rate:g} tokens/s"
    )
    async with AsyncExitStack() as stack:
        started = time.perf_counter()
        url, token = await _target(stack, None, None)
        console.print(
            f"[dim]embedded BEAM node and gateway up in {time.perf_counter() - started:.2f}s[/]\n"
        )
        async with await connect(url, token=token) as client:
            session = await client.open()
            reports = [
                await _stream(session, path.read_text(), args.rate, console, echo=True)
            ]
            if args.file is None:
                second = _find_example("change_of_mind.exs")
                console.print(f"\n[bold]changing course[/]: streaming {second.name}")
                reports += await _change_of_mind(
                    session, second.read_text(), args.rate, console
                )
            await session.close()
    _summary(console, reports)
    return 0 if all(r.done is not None for r in reports) else 1


async def _compare(args: argparse.Namespace) -> int:
    """Exit 1 when any fragment's two results disagree (unsupported is not
    a disagreement: the compiled executor says it cannot answer)."""
    from .compare import compare, render

    code = args.file.read_text()
    async with AsyncExitStack() as stack:
        url, token = await _target(stack, args.url, args.token)
        rows = await compare(url, token, code)
    render(rows, Console(width=max(Console().width, 160)))
    return 1 if any(row.agrees is False for row in rows) else 0


async def _target(
    stack: AsyncExitStack, url: str | None, token: str | None
) -> tuple[str, str | None]:
    """The gateway to talk to; without a URL, an embedded one for this run."""
    if url is not None:
        return url, token
    token = secrets.token_urlsafe(24)
    gateway = Gateway(GatewayConfig(port=0, token=token))
    stack.push_async_callback(gateway.close)
    await gateway.start()
    await gateway.wait_nodes(timeout=60)
    return gateway.url, token


def _find_example(name: str) -> Path:
    here = Path(__file__).resolve()
    for folder in [Path.cwd(), *here.parents]:
        candidate = folder / "examples" / name
        if candidate.is_file():
            return candidate
    raise BeambridgeError(f"cannot find examples/{name}")


@dataclass
class _Report:
    """What a streamed block produced, with the client-side times of each."""

    text: str
    sent_at: list[tuple[int, float]] = field(default_factory=list)
    fragments: dict[int, tuple[Fragment, float]] = field(default_factory=dict)
    results: dict[int, tuple[Result, float]] = field(default_factory=dict)
    done: Done | None = None
    started: float = field(default_factory=time.perf_counter)

    def sent_chars(self) -> int:
        return self.sent_at[-1][0] if self.sent_at else 0

    def sent_time(self, offset: int) -> float | None:
        """When the chunk holding character ``offset`` was sent."""
        for end, at in self.sent_at:
            if end > offset:
                return at
        return None


async def _stream(
    session: Session,
    text: str,
    rate: float,
    console: Console,
    *,
    echo: bool = False,
    on_event: Callable[[Event], Awaitable[None]] | None = None,
) -> _Report:
    """Stream ``text`` as one block at ``rate`` tokens/s, showing its events."""
    report = _Report(text)
    interval = 1.0 / rate if rate > 0 else 0.0

    async def chunks() -> AsyncIterator[str]:
        line_start = 0
        loop = asyncio.get_running_loop()
        next_at = loop.time()
        for token_text in tokens(text):
            next_at += interval
            if (delay := next_at - loop.time()) > 0:
                await asyncio.sleep(delay)  # pacing the stream, not synchronising
            yield token_text
            sent = report.sent_chars() + len(token_text)
            report.sent_at.append((sent, time.perf_counter()))
            if echo:
                while (nl := text.find("\n", line_start, sent)) != -1:
                    number = text.count("\n", 0, line_start) + 1
                    console.print(
                        f"[dim]{number:4d} │ {escape(text[line_start:nl])}[/]"
                    )
                    line_start = nl + 1

    async for event in session.stream(chunks()):
        _show(console, report, event, echo)
        if on_event is not None:
            await on_event(event)
    return report


# The cues of examples/change_of_mind.exs: a line starting with "#!" begins a
# new block and says what the demo does with it (to Elixir it is a comment).
_CUE = re.compile(r"^#!(.*)$", re.MULTILINE)
CANCEL_CUE = "cancel once it prints"
REWIND_CUE = "rewind if it fails"


def cued_blocks(text: str) -> list[tuple[str, str]]:
    """Split a cued example into ``(cue, block text)`` pairs, in order."""
    cuts = list(_CUE.finditer(text))
    return [
        (cut.group(1).strip(), text[cut.end() + 1 : nxt.start() if nxt else None])
        for cut, nxt in zip(cuts, [*cuts[1:], None])
    ]


async def _change_of_mind(
    session: Session, text: str, rate: float, console: Console
) -> list[_Report]:
    """Stream each cued block, cancelling or rewinding as its cue says."""
    reports = []
    for cue, block in cued_blocks(text):
        console.print(f"\n[bold magenta]▶ {escape(cue)}[/]")
        on_event = None
        if cue == CANCEL_CUE:
            on_event = _cancel_on_output(session, console)
        report = await _stream(
            session, block, rate, console, echo=True, on_event=on_event
        )
        reports.append(report)
        failed = [r for r, _ in report.results.values() if not r.ok]
        if cue == REWIND_CUE and failed and report.fragments:
            to = min(report.fragments) - 1
            console.print(
                f"[magenta]⟲ rewind to fragment {to}: forget what this block bound[/]"
            )
            await session.rewind(to)
    return reports


def _cancel_on_output(
    session: Session, console: Console
) -> Callable[[Event], Awaitable[None]]:
    sent = False

    async def on_event(event: Event) -> None:
        nonlocal sent
        if isinstance(event, Output) and not sent:
            sent = True
            console.print(f"[magenta]✋ cancel fragment #{event.index}[/]")
            await session.cancel()

    return on_event


def _show(console: Console, report: _Report, event: Event, echo: bool) -> None:
    now = time.perf_counter()
    sent = f"{report.sent_chars():5d}/{len(report.text)}"
    where = f"[dim]+{now - report.started:5.2f}s {sent} sent[/] "
    pad = "       ⮑ " if echo else where
    if isinstance(event, Fragment):
        report.fragments[event.index] = (event, now)
        if not echo:
            first = event.code.strip().splitlines()[0] if event.code.strip() else ""
            console.print(f"{pad}[blue]#{event.index} ▸[/] {escape(first)}")
    elif isinstance(event, Output):
        for line in event.text.rstrip("\n").splitlines():
            console.print(f"{pad}[cyan]#{event.index} │ {escape(line)}[/]")
    elif isinstance(event, Step):
        line = f"L{event.line}" if event.line is not None else "L?"
        console.print(
            f"{pad}[yellow]#{event.index} · {line:>4}[/] [dim]→[/] {escape(event.value)}"
        )
    elif isinstance(event, Result):
        report.results[event.index] = (event, now)
        dropped = (
            f" [yellow]({event.steps_dropped} more steps not shown)[/]"
            if event.steps_dropped
            else ""
        )
        if event.ok:
            value = escape(event.value or "")
            console.print(
                f"{pad}[green]#{event.index} ✓ {value}[/] "
                f"[dim]({event.elapsed_us} µs)[/]{dropped}"
            )
        else:
            assert event.error is not None
            line = f" (line {event.error.line})" if event.error.line else ""
            console.print(
                f"{pad}[red]#{event.index} ✗ {escape(event.error.kind)}: "
                f"{escape(event.error.message)}{line}[/]{dropped}"
            )
    elif isinstance(event, Done):
        report.done = event
        console.print(
            f"{where}[bold]done[/]: {event.fragments} fragments, {event.errors} errors"
        )


def _summary(console: Console, reports: list[_Report]) -> None:
    """Latency per fragment: evaluation, commit → result, last char → result.

    Cancelled fragments are left out: their time is the demo's patience.
    """
    evals, commits, lags = [], [], []
    for report in reports:
        offset = 0
        for index in sorted(report.results):
            result, got = report.results[index]
            fragment, committed = report.fragments[index]
            found = report.text.find(fragment.code, offset)
            if found >= 0:
                offset = found + len(fragment.code)
            if result.error is not None and result.error.kind == "cancelled":
                continue
            evals.append(result.elapsed_us / 1000)
            commits.append((got - committed) * 1000)
            sent = report.sent_time(offset - 1) if found >= 0 else None
            if sent is not None:
                lags.append((got - sent) * 1000)
    table = Table(title="latency (ms)", title_justify="left")
    for column in ("measure", "p50", "max", "n"):
        table.add_column(column, justify="right" if column != "measure" else "left")
    rows = (
        ("evaluation on the node", evals),
        ("commit → result at client", commits),
        ("last char sent → result", lags),
    )
    for name, values in rows:
        if values:
            table.add_row(
                name,
                f"{statistics.median(values):.2f}",
                f"{max(values):.2f}",
                str(len(values)),
            )
    console.print()
    console.print(table)
    console.print(
        "[dim]'last char sent → result' includes waiting for the next token: a"
        " fragment commits once the text after it shows it cannot continue.[/]"
    )


if __name__ == "__main__":
    sys.exit(main())
