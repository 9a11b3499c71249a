"""Shared test helpers: the real-Elixir oracle and a program generator."""

from __future__ import annotations

import ast
import base64
import random
import subprocess
from pathlib import Path

from compiled_model import vm
from compiled_model.session import CompiledSession

ORACLE = Path(__file__).with_name("oracle.exs")


def imported_modules(path: Path) -> set[str]:
    """Every module a Python file imports, relative ones with their dots."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            found.add("." * node.level + (node.module or ""))
    return found


def elixir_sessions(sessions: list[list[str]]) -> list[list[str]]:
    """Evaluate fragment sessions with real Elixir in one process.

    Returns, per fragment, "ok <inspect text>" or "error <Module>".
    """
    lines = []
    for fragments in sessions:
        lines.append("R")
        lines += ["F " + base64.b64encode(f.encode()).decode() for f in fragments]
    out = subprocess.run(
        ["elixir", str(ORACLE)],
        input="\n".join(lines) + "\n",
        capture_output=True,
        text=True,
        timeout=600,
        check=True,
    ).stdout.splitlines()
    replies = []
    for fragments in sessions:
        replies.append(out[: len(fragments)])
        out = out[len(fragments) :]
    for group in replies:
        for i, reply in enumerate(group):
            status, _, rest = reply.partition(" ")
            if status == "ok":
                group[i] = "ok " + base64.b64decode(rest).decode()
    return replies


def vm_session() -> CompiledSession:
    return CompiledSession(runner=lambda prog, n: vm.run(prog, n).trace)


def outcome(result) -> str:
    """A session result in the oracle's vocabulary."""
    if result.ok:
        return "ok " + result.value
    kind = result.error["kind"]
    return "error " + kind


class ProgramGen:
    """Random well-typed fragments inside the compiled subset."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)

    def literal(self) -> str:
        r = self.rng.random()
        if r < 0.7:
            n = self.rng.randint(-20, 20)
        elif r < 0.9:
            n = self.rng.randint(-5000, 5000)
        else:
            n = self.rng.choice([2**31 - 1, -(2**31), 65535, -65536, 46340])
        return f"({n})" if n < 0 else str(n)

    def int_expr(self, depth: int, names: list[str]) -> str:
        rng = self.rng
        if depth <= 0 or rng.random() < 0.25:
            if names and rng.random() < 0.5:
                return rng.choice(names)
            return self.literal()
        kind = rng.choice(["+", "-", "*", "div", "rem", "neg", "if", "block", "reduce"])
        sub = lambda: self.int_expr(depth - 1, names)  # noqa: E731
        if kind in ("+", "-", "*"):
            return f"({sub()} {kind} {sub()})"
        if kind in ("div", "rem"):
            return f"{kind}({sub()}, {sub()})"
        if kind == "neg":
            return f"-({sub()})"
        if kind == "if":
            cond = self.bool_expr(depth - 1, names)
            return f"(if {cond} do {sub()} else {sub()} end)"
        if kind == "block":
            name = f"v{rng.randint(0, 3)}"
            first = sub()
            rest = self.int_expr(depth - 1, names + [name])
            return f"(\n{name} = {first}\n{rest}\n)"
        lo, hi = rng.randint(-4, 6), rng.randint(-4, 6)
        body = self.int_expr(depth - 1, names + ["i", "acc"])
        init = sub()
        return f"Enum.reduce({lo}..{hi}, {init}, fn i, acc -> {body} end)"

    def bool_expr(self, depth: int, names: list[str]) -> str:
        rng = self.rng
        if depth <= 0 or rng.random() < 0.2:
            return rng.choice(["true", "false"])
        kind = rng.choice(["cmp", "cmp", "and", "or", "not"])
        if kind == "cmp":
            op = rng.choice(["<", "<=", ">", ">=", "==", "!=", "===", "!=="])
            a = self.int_expr(depth - 1, names)
            b = self.int_expr(depth - 1, names)
            return f"({a} {op} {b})"
        if kind == "not":
            return f"not({self.bool_expr(depth - 1, names)})"
        a, b = self.bool_expr(depth - 1, names), self.bool_expr(depth - 1, names)
        return f"({a} {kind} {b})"

    def program(self) -> str:
        if self.rng.random() < 0.2:
            return self.bool_expr(3, [])
        return self.int_expr(self.rng.randint(1, 4), [])
