"""Prometheus text exposition of the gateway's counters, kept dependency-free.

Only what ``GET /metrics`` shows: gauges, labelled counters and one
histogram, rendered in the text format version 0.0.4.
"""

from __future__ import annotations

import bisect
from collections import defaultdict

__all__ = ["Metrics"]

# Seconds; a fragment's latency is from its ``fragment`` event to its result,
# as seen by the gateway.
LATENCY_BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01,
    0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip


NODE_GAUGES = (
    ("atoms", "Atoms in the node's atom table (never collected)."),
    ("atom_limit", "Size of the node's atom table; the VM stops at it."),
    ("processes", "Processes on the node."),
    ("memory_bytes", "Memory the node's VM has allocated."),
    ("sessions", "Sessions open on the node."),
)


class Metrics:
    """The gateway's metrics; every method is cheap enough for the hot path."""

    def __init__(self) -> None:
        self.connections = 0
        self.sessions = 0
        self.nodes_connected = 0
        self.messages_total = 0
        self.fragments_total = 0
        self.errors_total: dict[str, int] = defaultdict(int)
        self.protocol_errors_total: dict[str, int] = defaultdict(int)
        self._buckets = [0] * len(LATENCY_BUCKETS)
        self._latency_sum = 0.0
        self._latency_count = 0

    def observe_latency(self, seconds: float) -> None:
        """Record one fragment's latency."""
        i = bisect.bisect_left(LATENCY_BUCKETS, seconds)
        if i < len(self._buckets):
            self._buckets[i] += 1
        self._latency_sum += seconds
        self._latency_count += 1

    def render(self, nodes: dict[str, dict[str, int]] | None = None) -> str:
        """The Prometheus text format of every metric.

        ``nodes`` maps each connected node's address to the statistics of its
        last pong (``atoms``, ``atom_limit``, ``processes``, ``memory_bytes``,
        ``sessions``), shown as gauges labelled ``node="HOST:PORT"``.
        """
        lines = []
        gauges = (
            ("connections", "Open websocket connections.", self.connections),
            ("sessions", "Open sessions.", self.sessions),
            ("nodes_connected", "BEAM nodes with a live bridge.", self.nodes_connected),
        )
        for name, help_, value in gauges:
            lines += _header(name, help_, "gauge") + [f"beambridge_{name} {value}"]

        lines += _header("messages_total", "Client messages received.", "counter")
        lines.append(f"beambridge_messages_total {self.messages_total}")
        lines += _header("fragments_total", "Fragments committed.", "counter")
        lines.append(f"beambridge_fragments_total {self.fragments_total}")

        lines += _header("errors_total", "Failed results by error kind.", "counter")
        for kind, count in sorted(self.errors_total.items()):
            lines.append(f'beambridge_errors_total{{kind="{_escape(kind)}"}} {count}')
        lines += _header("protocol_errors_total", "Error events by code.", "counter")
        for code, count in sorted(self.protocol_errors_total.items()):
            lines.append(
                f'beambridge_protocol_errors_total{{code="{_escape(code)}"}} {count}'
            )

        for stat, help_ in NODE_GAUGES:
            lines += _header(f"node_{stat}", help_, "gauge")
            for node, stats in sorted((nodes or {}).items()):
                if stat in stats:
                    label = _escape(node)
                    lines.append(
                        f'beambridge_node_{stat}{{node="{label}"}} {stats[stat]}'
                    )

        name = "beambridge_fragment_latency_seconds"
        lines += _header(
            "fragment_latency_seconds",
            "From a fragment's commit to its result, at the gateway.",
            "histogram",
        )
        cumulative = 0
        for bound, count in zip(LATENCY_BUCKETS, self._buckets):
            cumulative += count
            lines.append(f'{name}_bucket{{le="{bound}"}} {cumulative}')
        lines.append(f'{name}_bucket{{le="+Inf"}} {self._latency_count}')
        lines.append(f"{name}_sum {self._latency_sum}")
        lines.append(f"{name}_count {self._latency_count}")
        return "\n".join(lines) + "\n"


def _header(name: str, help_: str, kind: str) -> list[str]:
    return [f"# HELP beambridge_{name} {help_}", f"# TYPE beambridge_{name} {kind}"]


def _escape(label: str) -> str:
    return label.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
