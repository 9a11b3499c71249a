"""Lower a fragment's AST to accumulator-machine bytecode.

Types are checked statically (every value is an int or a bool), so anything
the machine could not reproduce exactly is rejected here, before running,
with an `UnsupportedError` that names the construct. Bindings from earlier
fragments enter through a prologue of CONST/STORE pairs; the bindings this
fragment makes leave through an epilogue of LOADs whose accumulator values
the session reads back from the trace, so the model's own trace carries the
context forward.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .errors import UnsupportedError
from .isa import INT_MAX, INT_MIN, MAX_PROGRAM, MAX_SLOTS, Instr, Program
from .parse import Atom, Call, Opaque, Pair, Str

__all__ = ["Binding", "CompileError", "lower"]

_ARITH = {"+": "ADD", "-": "SUB", "*": "MUL"}
_COMPARE = {
    "<": "LT",
    "<=": "LE",
    ">": "GT",
    ">=": "GE",
    "==": "EQ",
    "!=": "NE",
    "===": "EQ",
    "!==": "NE",
}


@dataclass(frozen=True)
class Binding:
    type: str  # "int" or "bool"
    value: int


class CompileError(UnsupportedError):
    """What Elixir itself would reject at compile time (undefined names)."""


@dataclass
class _Scope:
    parent: _Scope | None
    names: dict[str, tuple[int, str]] = field(default_factory=dict)

    def find(self, name: str) -> tuple[int, str] | None:
        scope: _Scope | None = self
        while scope is not None:
            if name in scope.names:
                return scope.names[name]
            scope = scope.parent
        return None


def _describe(node: Any) -> str:
    if isinstance(node, Str):
        return "string literal"
    if isinstance(node, list):
        return "list literal"
    if isinstance(node, Atom):
        return f"atom :{node.name}"
    if isinstance(node, Pair):
        return "tuple literal"
    if isinstance(node, Opaque):
        return f"{node.kind} literal"
    if isinstance(node, Call):
        if isinstance(node.form, Atom):
            arity = len(node.args) if isinstance(node.args, list) else 0
            return f"{node.form.name}/{arity}"
        return "remote call " + _remote_name(node)
    return repr(node)


def _remote_name(node: Call) -> str:
    form = node.form
    if isinstance(form, Call) and isinstance(form.form, Atom) and form.form.name == ".":
        target, fun = (form.args + [None, None])[:2]
        if isinstance(target, Call) and isinstance(target.form, Atom):
            if target.form.name == "__aliases__":
                mod = ".".join(a.name for a in target.args if isinstance(a, Atom))
                arity = len(node.args) if isinstance(node.args, list) else 0
                name = fun.name if isinstance(fun, Atom) else "?"
                return f"{mod}.{name}/{arity}"
    return "(anonymous call)"


def _is_var(node: Any) -> bool:
    return (
        isinstance(node, Call)
        and isinstance(node.form, Atom)
        and isinstance(node.args, Atom)
    )


class _Lowerer:
    def __init__(self, env: dict[str, Binding], first_line: int) -> None:
        self.code: list[Instr] = []
        self.slots = 0
        self.env = env
        self.offset = first_line - 1
        self.line = first_line

    # helpers

    def emit(self, op: str, arg: int = 0) -> int:
        self.code.append(Instr(op, arg, self.line))
        return len(self.code) - 1

    def patch(self, at: int, target: int) -> None:
        old = self.code[at]
        self.code[at] = Instr(old.op, target, old.line)

    def slot(self) -> int:
        self.slots += 1
        return self.slots - 1

    def spill(self) -> int:
        slot = self.slot()
        self.emit("STORE", slot)
        return slot

    def unsupported(self, what: str, node: Any) -> UnsupportedError:
        line = node.line + self.offset if isinstance(node, Call) else self.line
        return UnsupportedError(f"unsupported: {what}", max(line, self.offset + 1))

    # expressions; each leaves its value in acc and returns its type

    def expr(self, node: Any, scope: _Scope) -> str:
        if isinstance(node, Call) and node.line:
            self.line = node.line + self.offset
        if isinstance(node, bool):
            raise AssertionError("the parser never yields Python bools")
        if isinstance(node, int):
            if not INT_MIN <= node <= INT_MAX:
                raise self.unsupported(
                    f"integer {node} is outside the 32-bit range this executor "
                    "supports (the BEAM would use a bignum)",
                    node,
                )
            self.emit("CONST", node)
            return "int"
        if isinstance(node, Atom) and node.name in ("true", "false"):
            self.emit("CONST", 1 if node.name == "true" else 0)
            return "bool"
        if not isinstance(node, Call):
            raise self.unsupported(_describe(node), node)
        if _is_var(node):
            return self.var(node, scope)
        if not isinstance(node.form, Atom):
            if _remote_name(node) == "Enum.reduce/3":
                return self.reduce(node, scope)
            raise self.unsupported(_describe(node), node)
        name, args = node.form.name, node.args
        arity = len(args) if isinstance(args, list) else -1
        if name == "__block__" and arity >= 1:
            kind = "int"
            for item in args:
                kind = self.expr(item, scope)
            return kind
        if name == "=" and arity == 2:
            return self.match(node, scope)
        if name in _ARITH and arity == 2:
            return self.binary(_ARITH[name], args, scope, node, ("int", "int"))
        if name in ("div", "rem") and arity == 2:
            return self.divide(name, args, scope, node)
        if name == "-" and arity == 1 and isinstance(args[0], int):
            return self.expr(-args[0], scope)
        if name == "-" and arity == 1:
            self.typed(args[0], scope, "int", node)
            self.emit("NEG")
            return "int"
        if name == "+" and arity == 1:
            return self.typed(args[0], scope, "int", node)
        if name in _COMPARE and arity == 2:
            return self.compare(_COMPARE[name], args, scope, node)
        if name in ("and", "or") and arity == 2:
            return self.logic(name, args, scope, node)
        if name == "not" and arity == 1:
            self.typed(args[0], scope, "bool", node)
            self.emit("NOT")
            return "bool"
        if name == "if" and arity == 2:
            return self.branch(node, scope)
        raise self.unsupported(_describe(node), node)

    def typed(self, node: Any, scope: _Scope, want: str, parent: Call) -> str:
        got = self.expr(node, scope)
        if got != want:
            raise self.unsupported(
                f"{parent.form.name} on a {got} operand (only {want} is compiled)",
                parent,
            )
        return got

    def var(self, node: Call, scope: _Scope) -> str:
        name = node.form.name
        found = scope.find(name)
        if found is None:
            raise CompileError(
                f"undefined function {name}/0 (there is no such import)",
                node.line + self.offset,
            )
        slot, kind = found
        self.emit("LOAD", slot)
        return kind

    def match(self, node: Call, scope: _Scope) -> str:
        target, value = node.args
        if not _is_var(target):
            raise self.unsupported(f"pattern {_describe(target)} in =", node)
        kind = self.expr(value, scope)
        if target.form.name.startswith("_"):
            return kind
        slot = self.slot()
        self.emit("STORE", slot)
        scope.names[target.form.name] = (slot, kind)
        return kind

    def operands(
        self, args: list[Any], scope: _Scope, parent: Call, kinds: tuple[str, str]
    ) -> int:
        self.typed(args[0], scope, kinds[0], parent)
        left = self.spill()
        self.typed(args[1], scope, kinds[1], parent)
        right = self.spill()
        self.emit("LOAD", left)
        return right

    def binary(
        self,
        op: str,
        args: list[Any],
        scope: _Scope,
        node: Call,
        kinds: tuple[str, str],
    ) -> str:
        right = self.operands(args, scope, node, kinds)
        self.line = node.line + self.offset
        self.emit(op, right)
        return "int"

    def divide(self, name: str, args: list[Any], scope: _Scope, node: Call) -> str:
        right = self.operands(args, scope, node, ("int", "int"))
        self.line = node.line + self.offset
        if name == "div":
            self.emit("DIV", right)
            return "int"
        # rem(a, b) = a - b * div(a, b): the sign follows the dividend. For
        # b == -1 the quotient may not fit in 32 bits, but rem is 0.
        left = self.code[-1].arg
        self.emit("CONST", -1)
        minus_one = self.spill()
        self.emit("LOAD", right)
        self.emit("EQ", minus_one)
        to_divide = self.emit("JZ")
        self.emit("CONST", 0)
        done = self.emit("JMP")
        self.patch(to_divide, len(self.code))
        self.emit("LOAD", left)
        self.emit("DIV", right)
        self.emit("MUL", right)
        product = self.spill()
        self.emit("LOAD", left)
        self.emit("SUB", product)
        self.patch(done, len(self.code))
        return "int"

    def compare(self, op: str, args: list[Any], scope: _Scope, node: Call) -> str:
        kind = self.expr(args[0], scope)
        left = self.spill()
        if self.expr(args[1], scope) != kind:
            raise self.unsupported(f"{node.form.name} between an int and a bool", node)
        right = self.spill()
        self.emit("LOAD", left)
        self.emit(op, right)
        return "bool"

    def logic(self, name: str, args: list[Any], scope: _Scope, node: Call) -> str:
        self.typed(args[0], scope, "bool", node)
        if name == "and":
            skip = self.emit("JZ")
            self.typed(args[1], _Scope(scope), "bool", node)
            self.patch(skip, len(self.code))
            return "bool"
        to_right = self.emit("JZ")
        done = self.emit("JMP")
        self.patch(to_right, len(self.code))
        self.typed(args[1], _Scope(scope), "bool", node)
        self.patch(done, len(self.code))
        return "bool"

    def branch(self, node: Call, scope: _Scope) -> str:
        cond, opts = node.args
        clauses = _keywords(opts)
        if clauses is None or set(clauses) != {"do", "else"}:
            raise self.unsupported("if without an else branch", node)
        kind = self.expr(cond, scope)
        if kind == "int":
            # Integers are always truthy: the do branch runs.
            return self.expr(clauses["do"], _Scope(scope))
        to_else = self.emit("JZ")
        then_kind = self.expr(clauses["do"], _Scope(scope))
        done = self.emit("JMP")
        self.patch(to_else, len(self.code))
        else_kind = self.expr(clauses["else"], _Scope(scope))
        self.patch(done, len(self.code))
        if then_kind != else_kind:
            raise self.unsupported("if whose branches differ in type", node)
        return then_kind

    def reduce(self, node: Call, scope: _Scope) -> str:
        if len(node.args) != 3:
            raise self.unsupported(_describe(node), node)
        rng, init, fun = node.args
        if not (
            isinstance(rng, Call)
            and isinstance(rng.form, Atom)
            and rng.form.name == ".."
            and isinstance(rng.args, list)
            and len(rng.args) == 2
        ):
            raise self.unsupported(
                "Enum.reduce/3 over anything but a literal a..b range", node
            )
        params, body = _two_arg_fn(fun)
        if params is None:
            raise self.unsupported(
                "Enum.reduce/3 with anything but fn x, acc -> ... end", node
            )
        self.typed(rng.args[0], scope, "int", rng)
        lo = self.spill()
        self.typed(rng.args[1], scope, "int", rng)
        hi = self.spill()
        kind = self.expr(init, scope)
        acc = self.spill()
        # step = 2 * (lo <= hi) - 1, since a..b counts down when a > b.
        self.emit("LOAD", lo)
        self.emit("LE", hi)
        step = self.spill()
        self.emit("ADD", step)
        self.emit("STORE", step)
        self.emit("CONST", 1)
        one = self.spill()
        self.emit("LOAD", step)
        self.emit("SUB", one)
        self.emit("STORE", step)
        self.emit("LOAD", lo)
        index = self.spill()
        top = len(self.code)
        inner = _Scope(scope)
        for param, slot, ptype in ((params[0], index, "int"), (params[1], acc, kind)):
            if not param.form.name.startswith("_"):
                inner.names[param.form.name] = (slot, ptype)
        if self.expr(body, inner) != kind:
            raise self.unsupported(
                "Enum.reduce/3 whose fn changes the accumulator's type", node
            )
        self.emit("STORE", acc)
        self.emit("LOAD", index)
        self.emit("EQ", hi)
        to_next = self.emit("JZ")
        done = self.emit("JMP")
        self.patch(to_next, len(self.code))
        self.emit("LOAD", index)
        self.emit("ADD", step)
        self.emit("STORE", index)
        self.emit("JMP", top)
        self.patch(done, len(self.code))
        self.emit("LOAD", acc)
        return kind


def _keywords(opts: Any) -> dict[str, Any] | None:
    if not isinstance(opts, list):
        return None
    out: dict[str, Any] = {}
    for item in opts:
        if not (isinstance(item, Pair) and isinstance(item.left, Atom)):
            return None
        out[item.left.name] = item.right
    return out


def _two_arg_fn(fun: Any) -> tuple[list[Call] | None, Any]:
    if not (isinstance(fun, Call) and fun.form == Atom("fn") and len(fun.args) == 1):
        return None, None
    clause = fun.args[0]
    if not (isinstance(clause, Call) and clause.form == Atom("->")):
        return None, None
    params, body = clause.args
    if len(params) != 2 or not all(_is_var(p) for p in params):
        return None, None
    return params, body


def _referenced(node: Any, out: set[str]) -> set[str]:
    if _is_var(node):
        out.add(node.form.name)
    elif isinstance(node, Call):
        _referenced(node.form, out)
        _referenced(node.args, out)
    elif isinstance(node, list):
        for item in node:
            _referenced(item, out)
    elif isinstance(node, Pair):
        _referenced(node.left, out)
        _referenced(node.right, out)
    return out


def lower(ast: Any, env: dict[str, Binding], first_line: int = 1) -> Program:
    """Compile one fragment; raises UnsupportedError before anything runs."""
    low = _Lowerer(env, first_line)
    top = _Scope(None)
    for name in sorted(_referenced(ast, set()) & set(env)):
        binding = env[name]
        low.emit("CONST", binding.value)
        top.names[name] = (low.spill(), binding.type)
    imported = dict(top.names)
    result_type = low.expr(ast, top)
    result = low.spill()
    exports = [
        (name, kind)
        for name, (slot, kind) in top.names.items()
        if imported.get(name) != (slot, kind)
    ]
    for name, _ in exports:
        low.emit("LOAD", top.names[name][0])
    low.emit("LOAD", result)
    low.emit("HALT")
    if len(low.code) > MAX_PROGRAM or low.slots > MAX_SLOTS:
        raise UnsupportedError(
            f"unsupported: fragment compiles to {len(low.code)} instructions and "
            f"{low.slots} slots (limits {MAX_PROGRAM} and {MAX_SLOTS})",
            first_line,
        )
    return Program(tuple(low.code), result_type, tuple(exports))
