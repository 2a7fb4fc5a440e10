"""The Go tools that check the deployment artefacts, and what the checks share.

``helm`` (lint and render the chart), ``promtool`` (check and unit-test the alert rules) and
``actionlint`` (lint the workflows) are built with ``go install <package>@<version>`` by
:func:`deploy.local.gotools.ensure_go_tool` into ``$LEDGER_CACHE_DIR/go-bin``, once per
machine; :func:`run_tool` runs one and fails with its whole output.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from prometheus_client import Counter, Gauge, Histogram
from prometheus_client.metrics import MetricWrapperBase

from deploy.local.base import default_cache_dir
from deploy.local.gotools import GoTool, ensure_go_tool
from shared.telemetry import Metrics

__all__ = [
    "ACTIONLINT",
    "HELM",
    "PROMTOOL",
    "dashboard_expressions",
    "exported_metrics",
    "expression_problems",
    "run_tool",
    "tool",
]

HELM = GoTool("helm", "helm.sh/helm/v3/cmd/helm", "v3.22.0")
#: Prometheus' module carries its 3.x releases as v0.3xx.y (v0.316.0 is Prometheus 3.16.0)
PROMTOOL = GoTool("promtool", "github.com/prometheus/prometheus/cmd/promtool", "v0.316.0")
ACTIONLINT = GoTool("actionlint", "github.com/rhysd/actionlint/cmd/actionlint", "v1.7.12")


def tool(spec: GoTool) -> Path:
    """The tool's binary, built first if this machine has not built this version yet."""
    return ensure_go_tool(spec, default_cache_dir(), print)


def run_tool(argv: Sequence[str | Path], *, cwd: Path | None = None,
             expect_ok: bool = True, timeout_s: float = 300) -> subprocess.CompletedProcess[str]:
    """Run a tool; with ``expect_ok`` a non-zero exit fails with everything it printed."""
    result = subprocess.run(
        [str(a) for a in argv], cwd=cwd, capture_output=True, text=True, check=False,
        timeout=timeout_s, stdin=subprocess.DEVNULL,
    )
    if expect_ok and result.returncode != 0:
        raise AssertionError(
            f"`{' '.join(str(a) for a in argv)}` exited {result.returncode}:\n"
            f"{result.stdout}\n{result.stderr}"
        )
    return result


# --- metric names ---------------------------------------------------------------------------

_SUFFIXES: dict[type[MetricWrapperBase], tuple[str, ...]] = {
    Counter: ("_total", "_created"),
    Gauge: ("",),
    Histogram: ("_bucket", "_sum", "_count", "_created"),
}
#: labels Prometheus adds to every scraped series (and ``le`` of histogram buckets)
_TARGET_LABELS = frozenset({"job", "instance", "namespace", "pod", "service", "container",
                            "endpoint"})


def exported_metrics() -> dict[str, frozenset[str]]:
    """Every series name the processes export (as Prometheus scrapes it) → its label names,
    read from :class:`shared.telemetry.Metrics` itself."""
    found: dict[str, frozenset[str]] = {}
    for metric in vars(Metrics()).values():
        if not isinstance(metric, MetricWrapperBase):
            continue
        kind = next(k for k in _SUFFIXES if isinstance(metric, k))
        labels = frozenset(metric._labelnames)
        for suffix in _SUFFIXES[kind]:
            extra = {"le"} if suffix == "_bucket" else set()
            found[metric._name + suffix] = labels | extra
    return found


_IDENT = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
_SELECTOR = re.compile(r"([a-zA-Z_:][a-zA-Z0-9_:]*)\s*\{([^}]*)\}")
_MATCHER = re.compile(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)\s*\"")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring)\s*\(([^)]*)\)")
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')


def _names(expr: str) -> Iterator[str]:
    without_strings = _STRING.sub('""', expr)
    for match in _IDENT.finditer(without_strings):
        if match.group().startswith("ledger_"):
            yield match.group()


def expression_problems(expr: str, exported: dict[str, frozenset[str]],
                        *, allowed: frozenset[str] = frozenset({"up"})) -> list[str]:
    """What in a PromQL expression names a series or label the processes do not export.

    Every ``ledger_*`` name must be exported; every label in a ``name{...}`` selector must
    be one of that series' labels; every grouping label (``by``, ``on``...) one of a series'
    in the expression or a target label. Other series names only from ``allowed``.
    """
    problems: list[str] = []
    names = set(_names(expr))
    if not names and not any(re.search(rf"\b{a}\b", expr) for a in allowed):
        problems.append(f"names no series: {expr}")
    for name in sorted(names - exported.keys()):
        problems.append(f"{name} is not exported")
    labels_in_use: set[str] = set(_TARGET_LABELS)
    for name, body in _SELECTOR.findall(expr):
        known = exported.get(name, _TARGET_LABELS if name in allowed else frozenset())
        labels_in_use |= known
        for label in _MATCHER.findall(body):
            if label not in known:
                problems.append(f"{name} has no label {label!r}")
    for name in names & exported.keys():
        labels_in_use |= exported[name]
    for group in _GROUPING.findall(expr):
        for label in (g.strip() for g in group.split(",") if g.strip()):
            if label not in labels_in_use:
                problems.append(f"grouping by {label!r}, a label of no series here")
    return problems


def dashboard_expressions(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    """(panel title, expression) of every query of a Grafana dashboard, rows included."""
    found: list[tuple[str, str]] = []

    def walk(panels: list[dict[str, Any]]) -> None:
        for panel in panels:
            for target in panel.get("targets", []):
                found.append((str(panel.get("title", "")), str(target["expr"])))
            walk(panel.get("panels", []))

    walk(dashboard.get("panels", []))
    return found
