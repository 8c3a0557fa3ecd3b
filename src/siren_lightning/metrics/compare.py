"""Side-by-side comparison of results JSONs, refused when their protocols differ.

Two numbers are comparable only when they were made the same way. Before printing, every run's
protocol record is checked against the first run's, field by field, in this order: the backbone
of each role (FD, classifier, FAD, CLAP), its weights' SHA-256, its sample rate, the FD rule
(clip embeddings or pooled frames), the crop/pad (input) rules,
the pairing rule, the KL variant, the other metric rules (IS splits and seed, KAD, CLAP score),
and the clip counts. The first difference is named in one message; with
``allow_mismatch=True`` the table is printed with each differing run marked and its differences
listed under it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from siren_lightning.metrics.intervals import INTERVAL_METRICS

ROLES = ("fd", "classifier", "fad", "clap")


class ProtocolMismatchError(ValueError):
    """Results made with different protocols were asked to be compared."""


def protocol_fields(results: Mapping[str, Any]) -> list[tuple[str, Any]]:
    """(field, value) pairs that must agree for two results to be comparable, in check order."""
    backbones = results.get("backbones", {})
    protocol = results.get("protocol", {})
    counts = results.get("counts", {})

    def backbone(role: str, key: str) -> Any:
        described = backbones.get(role)
        return None if described is None else described.get(key)

    fields: list[tuple[str, Any]] = []
    for key, label in (("name", "backbone"), ("weights_sha256", "weights SHA-256")):
        fields += [(f"{role} {label}", backbone(role, key)) for role in ROLES]
    fields += [(f"{role} sample rate", backbone(role, "sample_rate")) for role in ROLES]
    fields += [
        ("FD rule", protocol.get("fd_rule")),
        ("crop/pad rule (fd)", protocol.get("input_rule")),
        ("crop/pad rule (classifier: KL, IS)", protocol.get("classifier_input_rule")),
        ("crop/pad rule (fad)", protocol.get("fad_input_rule")),
        ("crop/pad rule (clap)", protocol.get("clap_input_rule")),
        ("pairing rule", protocol.get("pairing_rule")),
        ("KL variant", protocol.get("kl_variant")),
        ("IS splits", protocol.get("is_splits")),
        ("IS shuffle seed", protocol.get("is_seed")),
        ("KAD rule", protocol.get("kad_rule")),
        ("CLAP score rule", protocol.get("clap_score_rule")),
    ]
    for key in ("generated", "reference", "paired", "clap_scored"):
        fields.append((f"clip count ({key})", counts.get(key)))
    return fields


def differences(a: Mapping[str, Any], b: Mapping[str, Any]) -> list[str]:
    """Every protocol field where b differs from a, as ``field: a-value vs b-value``."""
    out = []
    for (name, va), (_, vb) in zip(protocol_fields(a), protocol_fields(b), strict=True):
        if va != vb:
            out.append(f"{name}: {_short(va)} vs {_short(vb)}")
    return out


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 70 else text[:67] + "..."


def check_comparable(runs: Sequence[Mapping[str, Any]], labels: Sequence[str]) -> None:
    """Raise `ProtocolMismatchError` naming the first protocol difference from the first run."""
    for label, run in zip(labels[1:], runs[1:], strict=True):
        diff = differences(runs[0], run)
        if diff:
            raise ProtocolMismatchError(
                f"{label} was not scored with the protocol of {labels[0]}: {diff[0]}"
                + (f" (and {len(diff) - 1} more)" if len(diff) > 1 else "")
                + "; its numbers are not comparable (--allow-protocol-mismatch prints the table "
                "with the differences marked)"
            )


def compare_table(
    runs: Sequence[Mapping[str, Any]],
    labels: Sequence[str],
    allow_mismatch: bool = False,
) -> str:
    """One row per run, each metric as value ± half its bootstrap interval.

    Raises:
        ProtocolMismatchError: when the protocols differ and ``allow_mismatch`` is False.
    """
    if len(runs) != len(labels) or not runs:
        raise ValueError(f"{len(runs)} runs for {len(labels)} labels")
    if not allow_mismatch:
        check_comparable(runs, labels)
    marks = [differences(runs[0], run) for run in runs]
    name_width = max(len(label) for label in labels) + 2

    def cell(run: Mapping[str, Any], metric: str) -> str:
        value = run.get("metrics", {}).get(metric)
        if value is None:
            return "-"
        interval = run.get("intervals", {}).get(metric)
        if interval is None:
            return f"{value:.4f}"
        return f"{value:.4f} ± {(interval[1] - interval[0]) / 2:.4f}"

    lines = [f"{'run':<{name_width}}" + "".join(f"{m:>20}" for m in INTERVAL_METRICS)]
    for label, run, diff in zip(labels, runs, marks, strict=True):
        name = label + (" *" if diff else "")
        cells = "".join(f"{cell(run, m):>20}" for m in INTERVAL_METRICS)
        lines.append(f"{name:<{name_width}}" + cells)
    for label, diff in zip(labels, marks, strict=True):
        if diff:
            lines.append(f"* {label} differs from {labels[0]} in:")
            lines += [f"    {d}" for d in diff]
    return "\n".join(lines)


def main_compare(paths: Sequence[str], allow_mismatch: bool = False) -> int:
    """`siren evaluate --compare a.json b.json ...`: print the table (1 when refused)."""
    runs = []
    for path in paths:
        try:
            runs.append(json.loads(Path(path).read_text()))
        except (OSError, json.JSONDecodeError) as err:
            print(f"siren evaluate --compare: cannot read results {path}: {err}")
            return 1
    try:
        print(compare_table(runs, [str(p) for p in paths], allow_mismatch))
    except ProtocolMismatchError as err:
        print(f"siren evaluate --compare: {err}")
        return 1
    return 0
