"""Group 1: the reference VM agrees with real Elixir (values, error kinds)."""

from __future__ import annotations

import pytest

from .helpers import ProgramGen, elixir_sessions, outcome, vm_session

HAND_WRITTEN: list[list[str]] = [
    ["1 + 2 * 3", "10 - 25", "-7", "+4", "-(3 - 10)"],
    ["div(7, 2)", "div(-7, 2)", "div(7, -2)", "div(-7, -2)", "div(0, -3)"],
    ["rem(7, 2)", "rem(-7, 2)", "rem(7, -2)", "rem(-7, -2)", "rem(0, 5)"],
    ["div(1, 0)", "rem(5, 0)", "div(-2147483648, 1)"],
    ["1 < 2", "2 <= 2", "3 > 4", "4 >= 5", "1 == 1", "1 != 1", "2 === 2", "2 !== 3"],
    ["true and false", "true or false", "not true", "false < true", "true == true"],
    ["x = 5", "y = x * x", "x = x + y", "x", "y"],
    ["a = 2", "a = a * 3\nb = a + 1\nb", "a + b"],
    ["x = 1", "div(x, 0)", "x", "x = 9", "x"],
    ["if 1 > 2 do 10 else 20 end", "if true do if false do 1 else 2 end else 3 end"],
    ["if 0 do 1 else 2 end", "if 3 > 2 and 4 > 3 do 7 else 8 end"],
    ["Enum.reduce(1..10, 0, fn i, acc -> acc + i end)"],
    ["Enum.reduce(5..1, 0, fn i, acc -> acc * 10 + i end)"],
    [
        "Enum.reduce(3..3, 7, fn i, acc -> acc - i end)",
        "Enum.reduce(1..0, 100, fn i, acc -> acc - i end)",
    ],
    [
        "Enum.reduce(-3..2, 1, fn i, acc -> if rem(i, 2) == 0 do acc * 2 else acc + i end end)"
    ],
    ["n = 4", "Enum.reduce(1..n, 1, fn i, acc -> acc * i end)", "n"],
    ["x = 1", "Enum.reduce(1..3, 0, fn i, acc -> x = x + i\nacc + x end)", "x"],
    ["x = 10\nif x > 5 do\n  x = x * 2\n  x + 1\nelse\n  0\nend", "x"],
    ["2147483647", "-2147483648", "2147483647 - 1", "-2147483647 - 1"],
    ["Enum.reduce(1..4, true, fn i, acc -> acc and i < 4 end)"],
]


def _compare(sessions: list[list[str]]) -> list[str]:
    expected = elixir_sessions(sessions)
    failures = []
    for fragments, want in zip(sessions, expected):
        session = vm_session()
        for fragment, oracle in zip(fragments, want):
            got = outcome(session.run(fragment))
            if got != oracle:
                failures.append(f"{fragment!r}: vm {got!r}, elixir {oracle!r}")
    return failures


def test_vm_matches_elixir_on_hand_written_sessions() -> None:
    """Hand-written sessions, bindings carried across fragments, agree."""
    assert _compare(HAND_WRITTEN) == []


def test_vm_matches_elixir_on_generated_programs() -> None:
    """600 generated programs give the same value or error kind as Elixir."""
    gen = ProgramGen(seed=20260311)
    programs = [gen.program() for _ in range(600)]
    expected = elixir_sessions([[p] for p in programs])
    overflow, failures, errors = 0, [], 0
    for program, (oracle,) in zip(programs, expected):
        result = vm_session().run(program)
        if not result.ok and "32-bit" in result.error["message"]:
            # Elixir continues with a bignum; only the width limit differs.
            overflow += 1
            assert oracle.startswith(("ok", "error ArithmeticError", "error Timeout"))
            continue
        errors += not result.ok
        if outcome(result) != oracle:
            failures.append(f"{program!r}: vm {outcome(result)!r}, elixir {oracle!r}")
    assert failures == []
    assert overflow < 60
    assert errors > 5  # the generator does reach division by zero


@pytest.mark.parametrize(
    ("fragment", "construct"),
    [
        ("[1, 2]", "list literal"),
        ("1.5 + 1", "float literal"),
        ('"hi"', "string literal"),
        (":ok", "atom :ok"),
        ("Enum.map(1..3, fn x -> x end)", "Enum.map/2"),
        ("if true do 1 end", "if without an else"),
        ("1 + true", "+ on a bool"),
        ("1 == true", "between an int and a bool"),
        ("x = 1 / 2", "//2"),
        ("5000000000", "32-bit"),
        ("Enum.reduce(1..3//1, 0, fn i, a -> a + i end)", "literal a..b range"),
    ],
)
def test_unsupported_constructs_are_named_before_running(
    fragment: str, construct: str
) -> None:
    """Constructs outside the subset fail with a message naming them."""
    result = vm_session().run(fragment)
    assert not result.ok and result.error["kind"] == "unsupported"
    assert construct in result.error["message"]
    assert result.trace_tokens == 0
