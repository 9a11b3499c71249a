"""The compiled decode path (`fast.py`) against the numpy reference.

test_model.py runs its trace, garbage and perturbation checks on both
engines; these tests pin down what is particular to the fast path: the
same hulls vertex for vertex, the same tokens as `Model.step` one step at
a time, no knowledge of the VM, and a cache directory that may be missing.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from compiled_model import engine, fast, vm
from compiled_model.kvcache import HullCache, NaiveCache, _UpperHull
from compiled_model.model import Model
from compiled_model.vocab import encode_program

from .helpers import imported_modules
from .test_model import PROGRAMS, STRESS, _program, first_divergence

STOPS = np.array(sorted(engine._END_IDS), dtype=np.int64)


@pytest.fixture(scope="module")
def model() -> Model:
    return engine.load_model()


@pytest.mark.parametrize("src", PROGRAMS + [STRESS])
def test_fast_trace_equals_numpy_trace_with_hull_cache(model: Model, src: str) -> None:
    """On every corpus program the kernels emit `Model.step`'s tokens."""
    program = _program(src)
    prompt = encode_program(program)
    n = len(vm.run(program).trace) + 10
    want = engine.decode(model, prompt, n, "hull", "numpy")
    got = engine.decode(model, prompt, n, "hull", "fast")
    assert got == want, first_divergence(got, want)


def _numpy_run(model: Model, prompt: list[int], cache) -> list[int]:
    out = [model.step(tok, pos, cache) for pos, tok in enumerate(prompt)]
    return out


def test_fast_caches_hold_the_numpy_caches_keys_values_and_hulls(
    model: Model,
) -> None:
    """After the stress program both engines hold the same keys, values and
    hull vertices (x, y, row) for every head, and agree at every position."""
    program = _program(STRESS)
    tokens = encode_program(program) + vm.run(program).trace[:-1]
    ref = HullCache(model.config)
    want = _numpy_run(model, tokens, ref)
    kv = fast.Cache(model, "hull")
    got = [fast.step(tok, pos, kv) for pos, tok in enumerate(tokens)]
    assert got == want, first_divergence(got, want)

    c, g, vcol = model.config, 0, 0
    for layer, (heads, dv) in enumerate(zip(c.n_heads, c.d_value)):
        if not heads:
            continue
        t = ref.n[layer]
        assert t == kv.rows
        keys = kv.keys[:t, 2 * g : 2 * (g + heads)].reshape(t, heads, 2)
        values = kv.values[:t, vcol : vcol + heads * dv].reshape(t, heads, dv)
        assert np.array_equal(keys, ref.keys[layer][:t])
        assert np.array_equal(values, ref.values[layer][:t])
        for h in range(heads):
            for hull, fast_g in ((ref.upper, 2 * g), (ref.lower, 2 * g + 1)):
                want_hull = hull[layer][h]
                assert kv.hull(fast_g) == (want_hull.xs, want_hull.ys, want_hull.ids)
            g += 1
        vcol += heads * dv


def test_fast_hull_matches_python_hull_for_keys_in_any_order() -> None:
    """Random integer keys (repeated x, inserts in the middle, points that
    evict neighbours on both sides) give the same hull and the same best
    vertex for every query direction as `kvcache._UpperHull`."""
    rng = random.Random(3)
    cap = 600
    hx, hy = np.zeros(cap), np.zeros(cap)
    hid = np.zeros(cap, dtype=np.int64)
    hstart, hlen = np.zeros(1, dtype=np.int64), np.zeros(1, dtype=np.int64)
    ref = _UpperHull()
    evicted_middle = False
    for row in range(500):
        x, y = float(rng.randint(-40, 40)), float(rng.randint(-60, 60))
        before = len(ref.xs)
        ref.insert(x, y, row)
        fast._insert(hx, hy, hid, hstart, hlen, 0, x, y, row)
        n = int(hlen[0])
        assert (hx[:n].tolist(), hy[:n].tolist(), hid[:n].tolist()) == (
            ref.xs,
            ref.ys,
            ref.ids,
        )
        evicted_middle |= len(ref.xs) < before and 0 < ref.xs.index(x) < n - 1
        qx = rng.uniform(-100, 100)
        assert fast._best(hx, hy, hid, 0, n, qx) == ref.best(qx, 1.0)
    assert evicted_middle


def test_fast_naive_cache_matches_numpy_naive_cache(model: Model) -> None:
    """The naive kernels score every key and pick what `NaiveCache` picks."""
    program = _program(PROGRAMS[-1])
    tokens = encode_program(program) + vm.run(program).trace[:-1]
    want = _numpy_run(model, tokens, NaiveCache(model.config))
    kv = fast.Cache(model, "naive")
    assert [fast.step(tok, pos, kv) for pos, tok in enumerate(tokens)] == want


def test_fast_decode_feeds_back_only_argmax_ids(model: Model) -> None:
    """Continuing from any point of the trace with the trace so far as the
    prompt gives the rest of it: the only state carried from one token to
    the next is the token ids fed."""
    program = _program(PROGRAMS[1])
    prompt = encode_program(program)
    out = fast.decode(model, prompt, 500, engine._END_IDS)
    assert out == vm.run(program).trace
    for k in (1, 7, len(out) // 2, len(out) - 1):
        assert fast.decode(model, prompt + out[:k], 500, engine._END_IDS) == out[k:]
    kv = fast.Cache(model)
    fed = [fast.step(tok, pos, kv) for pos, tok in enumerate(prompt)]
    assert fast.generate(kv, 500, STOPS) == out
    assert fed[-1] == out[0]


def test_fast_decode_survives_buffer_growth_mid_trace(model: Model) -> None:
    """Decoding in windows smaller than and across the buffers' growth
    gives one trace, the reference's."""
    program = _program(
        "Enum.reduce(1..60, 0, fn i, acc -> if rem(i, 3) == 0 do acc - i else acc + 2 * i end end)"
    )
    want = vm.run(program).trace
    kv = fast.Cache(model)
    got = fast.decode(model, encode_program(program), 333, engine._END_IDS, kv)
    while got[-1] not in engine._END_IDS:
        got += fast.generate(kv, 1 + len(got) % 977, STOPS)
    assert got == want, first_divergence(got, want)
    assert len(kv.keys) > fast.ROOM


def test_fast_module_imports_only_numpy_numba_and_the_model() -> None:
    """fast.py imports only numpy, numba, stdlib and model.py."""
    allowed = {"__future__", "weakref", "dataclasses", "numba", "numpy", ".model"}
    assert imported_modules(Path(fast.__file__)) <= allowed


_FRESH = r"""
import json, sys
for blocked in ("compiled_model.compiler", "compiled_model.vm", "compiled_model.lower",
                "compiled_model.isa", "compiled_model.vocab", "compiled_model.session",
                "compiled_model.engine", "compiled_model.parse",
                "compiled_model.kvcache"):
    sys.modules[blocked] = None
from pathlib import Path
from compiled_model import fast
from compiled_model.model import Model
model = Model.load(Path(sys.argv[1]))
prompt, n, stops = json.loads(sys.stdin.read())
print(json.dumps(fast.decode(model, prompt, n, set(stops))))
"""


def test_fast_path_decodes_with_compiler_vm_and_front_end_blocked(
    model: Model,
) -> None:
    """A new interpreter that cannot import compiler, VM, front end or the
    numpy caches decodes the VM's trace with the kernels."""
    program = _program(STRESS)
    want = vm.run(program).trace
    proc = subprocess.run(
        [sys.executable, "-c", _FRESH, str(engine.weights_dir())],
        input=json.dumps([encode_program(program), len(want), sorted(engine._END_IDS)]),
        capture_output=True,
        text=True,
        check=True,
    )
    got = json.loads(proc.stdout)
    assert got == want, first_divergence(got, want)


def test_fast_module_imports_where_no_cache_directory_is_usable() -> None:
    """With no usable place for numba's on-disk cache the module still
    imports, its kernels compiled per process instead."""
    env = dict(os.environ, NUMBA_CACHE_LOCATOR_CLASSES="ZipCacheLocator")
    code = (
        "from numba.core.caching import NullCache\n"
        "from compiled_model import fast\n"
        "print(type(fast._run._cache) is NullCache)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["True"]
