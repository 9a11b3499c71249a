"""Groups 2-5 and 7: the compiled model against the reference VM.

Each check runs on both engines: "numpy" (`Model.step` and `kvcache.py`,
the readable reference) and "fast" (the compiled kernels of `fast.py`).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from compiled_model import engine, vm
from compiled_model.compiler import compile_model
from compiled_model.lower import lower
from compiled_model.model import Model
from compiled_model.parse import elixir_parse
from compiled_model.vocab import VOCAB, encode_program

from .helpers import ProgramGen, imported_modules

PROGRAMS = [
    "1 + 2 * 3",
    "x = -5\nif x > 1 do 2 else 3 end",
    "rem(-7, 2) + div(7, -2) * 100",
    "div(1, 0)",
    "true and not false or 1 >= 2",
    "2147483647 + 1",
    "div(-2147483648, -1)",
    "Enum.reduce(5..1, 0, fn i, acc -> acc * 3 + i end)",
    "Enum.reduce(-3..3, 1, fn i, acc -> if i != 0 do acc * i else acc end end)",
]

# Touches every head: large magnitudes (all eight digits), negative values,
# memory written and reread in a loop, jumps and division.
STRESS = (
    "x = -2000000000\n"
    "y = Enum.reduce(1..6, x, fn i, acc -> if rem(i, 2) == 0 do div(acc, -3) else acc + 123456789 * i end end)\n"
    "if y < 0 and x != y do y - 5 else y + 5 end"
)


def _program(src: str):
    return lower(elixir_parse(src), {})


def first_divergence(got: list[int], want: list[int]) -> str:
    for i, (a, b) in enumerate(zip(got, want)):
        if a != b:
            ctx = [VOCAB[t] for t in want[max(0, i - 12) : i]]
            return f"position {i}: model {VOCAB[a]!r}, VM {VOCAB[b]!r}, after {ctx}"
    return f"lengths differ: model {len(got)}, VM {len(want)}"


ENGINES = ["numpy", "fast"]


@pytest.fixture(scope="module")
def model() -> Model:
    return engine.load_model()


def _check(model: Model, program, cache: str, how: str) -> None:
    want = vm.run(program).trace
    got = engine.decode(model, encode_program(program), len(want) + 10, cache, how)
    assert got == want, first_divergence(got, want)


@pytest.mark.parametrize("how", ENGINES)
@pytest.mark.parametrize("cache", ["naive", "hull"])
@pytest.mark.parametrize("src", PROGRAMS + [STRESS])
def test_model_trace_equals_vm_trace(
    model: Model, src: str, cache: str, how: str
) -> None:
    """Token for token, the model's trace is the reference VM's."""
    _check(model, _program(src), cache, how)


@pytest.mark.parametrize("how", ENGINES)
def test_model_trace_equals_vm_trace_on_generated_programs(
    model: Model, how: str
) -> None:
    """Forty generated programs, alternating caches, match the VM exactly."""
    gen = ProgramGen(seed=7)
    checked = 0
    for n in range(60):
        try:
            program = _program(gen.program())
        except Exception:
            continue
        if len(vm.run(program).trace) > 3000 or checked == 40:
            continue
        _check(model, program, "hull" if n % 2 else "naive", how)
        checked += 1
    assert checked == 40


def test_weights_are_deterministic_and_hashed(model: Model, tmp_path: Path) -> None:
    """Compiling again yields byte-identical weights with the recorded hash."""
    folder = engine.weights_dir()
    recorded = (folder / "weights.sha256").read_text().strip()
    assert engine.weights_hash(folder) == recorded
    compile_model().save(tmp_path)
    assert engine.weights_hash(tmp_path) == recorded


_FRESH = r"""
import json, sys
for blocked in ("compiled_model.compiler", "compiled_model.vm", "compiled_model.lower",
                "compiled_model.isa", "compiled_model.vocab", "compiled_model.session",
                "compiled_model.engine", "compiled_model.parse"):
    sys.modules[blocked] = None
import hashlib
from pathlib import Path
from compiled_model.model import Model
from compiled_model.kvcache import HullCache
folder = Path(sys.argv[1])
model = Model.load(folder)
prompt, n = json.loads(sys.stdin.read())
cache = HullCache(model.config)
for pos, tok in enumerate(prompt):
    nxt = model.step(tok, pos, cache)
out = []
for pos in range(len(prompt), len(prompt) + n):
    out.append(nxt)
    nxt = model.step(nxt, pos, cache)
digest = hashlib.sha256((folder / "weights.safetensors").read_bytes()).hexdigest()
print(json.dumps([out, digest]))
"""


def test_fresh_process_with_compiler_and_vm_blocked_reproduces_trace(
    model: Model,
) -> None:
    """A new interpreter that cannot import compiler, VM or front end
    loads config + weights and decodes the same trace; the hash matches."""
    program = _program(PROGRAMS[-1])
    want = vm.run(program).trace
    folder = engine.weights_dir()
    proc = subprocess.run(
        [sys.executable, "-c", _FRESH, str(folder)],
        input=json.dumps([encode_program(program), len(want)]),
        capture_output=True,
        text=True,
        check=True,
    )
    got, digest = json.loads(proc.stdout)
    assert got == want, first_divergence(got, want)
    assert digest == (folder / "weights.sha256").read_text().strip()
    assert json.loads((folder / "vocab.json").read_text()) == list(VOCAB)


def test_model_modules_import_nothing_from_compiler_or_vm() -> None:
    """model.py and kvcache.py import only numpy, safetensors, stdlib and each other."""
    root = Path(engine.__file__).parent
    allowed = {
        "__future__",
        "json",
        "dataclasses",
        "pathlib",
        "typing",
        "bisect",
        "numpy",
        "safetensors.numpy",
    }
    for name in ("model.py", "kvcache.py"):
        assert imported_modules(root / name) <= allowed | {".model"}, name


def test_decode_loop_feeds_back_only_argmax_ids(model: Model) -> None:
    """Every token fed to the model after the prompt is its previous output."""
    program = _program(PROGRAMS[1])
    prompt = encode_program(program)
    fed: list[int] = []
    returned: list[int] = []

    class Spy:
        config = model.config

        def step(self, tok: int, pos: int, cache) -> int:
            fed.append(tok)
            returned.append(model.step(tok, pos, cache))
            return returned[-1]

    out = engine.decode(Spy(), prompt, 500, engine="numpy")  # type: ignore[arg-type]
    assert fed[: len(prompt)] == prompt
    assert fed[len(prompt) :] == returned[len(prompt) - 1 : -1]
    assert out == returned[len(prompt) - 1 :]
    assert out == vm.run(program).trace


def _damaged(model: Model, change) -> Model:
    weights = {k: v.copy() for k, v in model.w.items()}
    change(weights)
    return Model(model.config, weights)


def _runs_correctly(model: Model, program, how: str) -> bool:
    want = vm.run(program).trace
    got = engine.decode(model, encode_program(program), len(want), "hull", how)
    return got == want


@pytest.mark.parametrize("how", ENGINES)
def test_random_weights_of_the_same_shapes_give_garbage(model: Model, how: str) -> None:
    """Same shapes, random values: nothing like the trace comes out."""
    rng = np.random.default_rng(0)
    rand = Model(
        model.config, {k: rng.normal(size=v.shape) for k, v in model.w.items()}
    )
    program = _program(PROGRAMS[0])
    want = vm.run(program).trace
    with np.errstate(all="ignore"):
        got = engine.decode(rand, encode_program(program), len(want), "naive", how)
    matches = sum(a == b for a, b in zip(got, want))
    assert matches < len(want) // 4


@pytest.mark.parametrize("how", ENGINES)
def test_weight_noise_breaks_execution(model: Model, how: str) -> None:
    """Gaussian noise on every weight derails the trace."""
    rng = np.random.default_rng(1)
    noisy = _damaged(
        model,
        lambda w: [
            v.__iadd__(rng.normal(scale=0.05, size=v.shape)) for v in w.values()
        ],
    )
    program = _program(STRESS)
    assert _runs_correctly(model, program, how)
    with np.errstate(all="ignore"):
        assert not _runs_correctly(noisy, program, how)


@pytest.mark.parametrize("how", ENGINES)
def test_ablating_any_single_head_breaks_execution(model: Model, how: str) -> None:
    """Zeroing one head's output projection breaks the stress program."""
    program = _program(STRESS)
    c = model.config
    broken = []
    for layer, (heads, dv) in enumerate(zip(c.n_heads, c.d_value)):
        for h in range(heads):

            def cut(w, layer=layer, h=h, dv=dv):
                w[f"l{layer}.wo"][h * dv : (h + 1) * dv] = 0.0

            damaged = _damaged(model, cut)
            broken.append(not _runs_correctly(damaged, program, how))
    assert len(broken) == sum(c.n_heads)
    assert all(broken), broken


@pytest.mark.slow
@pytest.mark.parametrize("how", ENGINES)
def test_long_run_matches_vm_for_over_1e5_tokens(model: Model, how: str) -> None:
    """A loop of 620 iterations (>1e5 tokens) matches the VM, hull cache."""
    program = _program(
        "Enum.reduce(1..620, 0, fn i, acc -> if rem(i, 3) == 0 do acc - i else acc + 2 * i end end)"
    )
    want = vm.run(program).trace
    assert len(want) > 100_000
    got = engine.decode(model, encode_program(program), len(want) + 10, "hull", how)
    assert got == want, first_divergence(got, want)
