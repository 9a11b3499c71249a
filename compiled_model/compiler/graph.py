"""Pass 1 vocabulary: a graph of residual slots, heads and ReGLU units.

Every quantity is a `Lin`, a linear form over residual slots. New slots come
from three node kinds: embedding features (a value per token), hard-max
attention heads (2-D query and key, values copied into new slots) and ReGLU
units (`gate * relu(up)`, summed into a new slot). Each slot records the
stage at which it is ready: 0 for embeddings and position features, 2L-1
after the attention of layer L, 2L after its MLP. Building a node places it
in the earliest layer whose inputs are ready, so scheduling happens here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

__all__ = ["Graph", "Head", "Lin", "Unit"]


class Lin:
    """A linear form: {slot: coefficient}."""

    __slots__ = ("terms",)

    def __init__(self, terms: dict[int, float] | None = None) -> None:
        self.terms = {k: v for k, v in (terms or {}).items() if v != 0}

    def __add__(self, other: Lin) -> Lin:
        out = dict(self.terms)
        for k, v in other.terms.items():
            out[k] = out.get(k, 0.0) + v
        return Lin(out)

    def __neg__(self) -> Lin:
        return Lin({k: -v for k, v in self.terms.items()})

    def __sub__(self, other: Lin) -> Lin:
        return self + (-other)

    def __mul__(self, c: float) -> Lin:
        return Lin({k: v * c for k, v in self.terms.items()})

    __rmul__ = __mul__


@dataclass(frozen=True)
class Head:
    layer: int
    name: str
    query: tuple[Lin, Lin]
    key: tuple[Lin, Lin]
    values: tuple[tuple[Lin, int], ...]  # (what to copy, destination slot)


@dataclass(frozen=True)
class Unit:
    layer: int
    gate: Lin
    up: Lin
    out: int
    coef: float


@dataclass
class Graph:
    vocab: tuple[str, ...]
    labels: list[str] = field(default_factory=list)
    stages: list[int] = field(default_factory=list)
    features: dict[int, Callable[[str], float]] = field(default_factory=dict)
    heads: list[Head] = field(default_factory=list)
    units: list[Unit] = field(default_factory=list)
    pos_slot: int = -1
    pos2_slot: int = -1
    out: Lin = field(default_factory=Lin)  # the next token's id
    one: Lin = field(default_factory=Lin)

    def _slot(self, label: str, stage: int) -> int:
        self.labels.append(label)
        self.stages.append(stage)
        return len(self.labels) - 1

    def stage(self, *forms: Lin) -> int:
        return max((self.stages[k] for f in forms for k in f.terms), default=0)

    def embed(self, label: str, fn: Callable[[str], float]) -> Lin:
        slot = self._slot(label, 0)
        self.features[slot] = fn
        return Lin({slot: 1.0})

    def positions(self) -> tuple[Lin, Lin]:
        self.pos_slot = self._slot("pos", 0)
        self.pos2_slot = self._slot("pos^2", 0)
        return Lin({self.pos_slot: 1.0}), Lin({self.pos2_slot: 1.0})

    def attend(
        self,
        name: str,
        query: tuple[Lin, Lin],
        key: tuple[Lin, Lin],
        values: list[tuple[str, Lin]],
    ) -> list[Lin]:
        ready = self.stage(*query, *key, *(v for _, v in values))
        layer = ready // 2 + 1
        outs = [self._slot(f"{name}.{label}", 2 * layer - 1) for label, _ in values]
        copies = tuple((v, o) for (_, v), o in zip(values, outs))
        self.heads.append(Head(layer, name, query, key, copies))
        return [Lin({o: 1.0}) for o in outs]

    def reglu(self, label: str, terms: list[tuple[float, Lin, Lin]]) -> Lin:
        """A new slot holding sum(coef * gate * relu(up))."""
        ready = self.stage(*(g for _, g, _ in terms), *(u for _, _, u in terms))
        layer = ready // 2 + 1
        out = self._slot(label, 2 * layer)
        for coef, gate, up in terms:
            self.units.append(Unit(layer, gate, up, out, coef))
        return Lin({out: 1.0})

    @property
    def n_layers(self) -> int:
        return max([h.layer for h in self.heads] + [u.layer for u in self.units])
