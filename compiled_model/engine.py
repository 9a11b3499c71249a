"""Weights on disk and the decode loop that runs programs on the model.

The weights are built once (deterministically) and cached under
`~/.cache/beambridge/compiled/<version>/` (override with
`BEAMBRIDGE_COMPILED_CACHE`) with their config and vocabulary; the sha256 of
the weights file is recorded next to them. The decode loop feeds back
nothing but the argmax token ids. It runs compiled (`fast.py`) unless asked
for the numpy reference (`Model.step`, `kvcache.py`); both give the same
trace.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
from pathlib import Path

from . import fast
from .isa import Program
from .kvcache import HullCache, NaiveCache
from .model import Model
from .vocab import ENDS, encode_program, token_id, write_vocab

__all__ = ["decode", "load_model", "model_runner", "weights_dir", "weights_hash"]

log = logging.getLogger(__name__)

VERSION = "v1"
_lock = threading.Lock()
_model: Model | None = None
_END_IDS = frozenset(token_id(t) for t in ENDS)


def weights_dir() -> Path:
    root = os.environ.get("BEAMBRIDGE_COMPILED_CACHE")
    base = Path(root) if root else Path.home() / ".cache" / "beambridge" / "compiled"
    return base / VERSION


def weights_hash(folder: Path) -> str:
    return hashlib.sha256((folder / "weights.safetensors").read_bytes()).hexdigest()


def load_model() -> Model:
    """The compiled model, built on first use and cached on disk and here."""
    global _model
    with _lock:
        if _model is None:
            folder = weights_dir()
            if not (folder / "weights.safetensors").exists():
                from .compiler import compile_model

                log.info("building compiled weights in %s", folder)
                model = compile_model()
                model.save(folder)
                write_vocab(folder / "vocab.json")
                (folder / "weights.sha256").write_text(weights_hash(folder) + "\n")
            _model = Model.load(folder)
        return _model


def decode(
    model: Model,
    prompt: list[int],
    max_tokens: int,
    cache: str = "hull",
    engine: str = "fast",
) -> list[int]:
    """Greedy decoding: returns the generated ids, ending at an end token.

    `cache` is "hull" or "naive"; `engine` is "fast" (the compiled kernels)
    or "numpy" (the reference loop over `model.step`).
    """
    if engine == "fast":
        return fast.decode(model, prompt, max_tokens, _END_IDS, cache)
    if engine != "numpy":
        raise ValueError(f"unknown engine {engine!r}")
    kv = HullCache(model.config) if cache == "hull" else NaiveCache(model.config)
    nxt = 0
    for pos, tok in enumerate(prompt):
        nxt = model.step(tok, pos, kv)
    out: list[int] = []
    pos = len(prompt)
    while len(out) < max_tokens:
        out.append(nxt)
        if nxt in _END_IDS:
            break
        nxt = model.step(nxt, pos, kv)
        pos += 1
    return out


def model_runner(cache: str = "hull", engine: str = "fast"):
    model = load_model()

    def run(program: Program, max_tokens: int) -> list[int]:
        return decode(model, encode_program(program), max_tokens, cache, engine)

    return run
