"""The generic transformer: plain tensor code, no knowledge of any VM.

Every weight comes from a file; nothing here knows what the residual slots
mean. One decoding step reads top to bottom: embedding plus position
features, then per layer hard-max attention over 2-D keys (each head picks
the single best-scoring earlier position, itself included) and a ReGLU MLP,
then a linear unembedding and argmax. No LayerNorm, no biases: a constant
slot written by the embedding plays that role. Float64 throughout.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
from safetensors.numpy import load_file, save_file

__all__ = ["Cache", "Config", "Model"]


@dataclass(frozen=True)
class Config:
    vocab_size: int
    d_model: int
    n_heads: tuple[int, ...]  # per layer; 0 means the layer has no attention
    d_value: tuple[int, ...]  # value width per head, per layer
    d_mlp: tuple[int, ...]  # ReGLU hidden units per layer; 0 means no MLP

    @property
    def n_layers(self) -> int:
        return len(self.n_heads)


class Cache(Protocol):
    """Per-layer keys and values of the positions decoded so far."""

    def append(self, layer: int, keys: np.ndarray, values: np.ndarray) -> None: ...

    def attend(self, layer: int, queries: np.ndarray) -> np.ndarray: ...


class Model:
    def __init__(self, config: Config, weights: dict[str, np.ndarray]) -> None:
        self.config = config
        self.w = {
            name: np.ascontiguousarray(t, dtype=np.float64)
            for name, t in weights.items()
        }
        self._check_shapes()

    def _check_shapes(self) -> None:
        c, w = self.config, self.w
        assert w["wte"].shape == (c.vocab_size, c.d_model)
        assert w["unembed"].shape == (c.d_model, c.vocab_size)
        for i, (h, dv, f) in enumerate(zip(c.n_heads, c.d_value, c.d_mlp)):
            if h:
                assert w[f"l{i}.wq"].shape == (c.d_model, 2 * h)
                assert w[f"l{i}.wk"].shape == (c.d_model, 2 * h)
                assert w[f"l{i}.wv"].shape == (c.d_model, dv * h)
                assert w[f"l{i}.wo"].shape == (dv * h, c.d_model)
            if f:
                assert w[f"l{i}.wg"].shape == (c.d_model, f)
                assert w[f"l{i}.wu"].shape == (c.d_model, f)
                assert w[f"l{i}.wd"].shape == (f, c.d_model)

    def step(self, token: int, pos: int, cache: Cache) -> int:
        """Feed one token at position `pos`; return the argmax next token."""
        c, w = self.config, self.w

        x = w["wte"][token] + pos * w["wp1"] + float(pos) * pos * w["wp2"]  # (C,)

        for i in range(c.n_layers):
            h, dv = c.n_heads[i], c.d_value[i]
            if h:
                q = (x @ w[f"l{i}.wq"]).reshape(h, 2)
                k = (x @ w[f"l{i}.wk"]).reshape(h, 2)
                v = (x @ w[f"l{i}.wv"]).reshape(h, dv)
                cache.append(i, k, v)
                picked = cache.attend(i, q)  # (H, dv): value at each head's argmax
                x = x + picked.reshape(-1) @ w[f"l{i}.wo"]
            if c.d_mlp[i]:
                gate = x @ w[f"l{i}.wg"]
                up = x @ w[f"l{i}.wu"]
                x = x + (gate * np.maximum(up, 0.0)) @ w[f"l{i}.wd"]

        logits = x @ w["unembed"]  # (V,)
        return int(np.argmax(logits))

    def save(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "config.json").write_text(json.dumps(asdict(self.config)))
        save_file(self.w, str(folder / "weights.safetensors"))

    @classmethod
    def load(cls, folder: Path) -> Model:
        raw = json.loads((folder / "config.json").read_text())
        config = Config(
            **{k: tuple(v) if isinstance(v, list) else v for k, v in raw.items()}
        )
        return cls(config, load_file(str(folder / "weights.safetensors")))
