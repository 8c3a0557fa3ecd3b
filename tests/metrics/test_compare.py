"""`siren evaluate --compare`: the table, and the refusal naming the first protocol difference."""

from __future__ import annotations

import copy
import json
from types import SimpleNamespace

import pytest

from siren_lightning.metrics.compare import ProtocolMismatchError, compare_table
from siren_lightning.metrics.protocol import PRESETS, main, results_dict


def _run(fd: float, fd_interval: tuple[float, float]) -> dict:
    backbone = SimpleNamespace(
        name="tiny-clap-eval",
        weights_sha256="a" * 64,
        sample_rate=16000,
        embedding_dim=128,
        num_classes=40,
    )
    evaluator = SimpleNamespace(fd_backbone=backbone, fad_backbone=None, clap_backbone=backbone)
    metrics = {"fd": fd, "kad": 1.5, "fad": None, "kl": 2.0, "is_mean": 1.5, "clap_score": 30.0}
    counts = {"generated": 16, "reference": 16, "paired": 16, "clap_scored": 16}
    results = json.loads(json.dumps(results_dict(PRESETS["tiny"], evaluator, metrics, counts)))
    results["intervals"] = {"fd": list(fd_interval), "kl": [1.5, 2.7]}
    return results


# (what is changed, how, the field the refusal must name)
CHANGES = [
    ("backbone", lambda r: r["backbones"]["fd"].update(name="panns-cnn14-16k"), "fd backbone"),
    (
        "weights",
        lambda r: r["backbones"]["clap"].update(weights_sha256="b" * 64),
        "clap weights SHA-256",
    ),
    ("sample rate", lambda r: r["backbones"]["fd"].update(sample_rate=48000), "fd sample rate"),
    (
        "crop/pad",
        lambda r: r["protocol"].update(input_rule="first 10 s"),
        "crop/pad rule (fd)",
    ),
    ("pairing", lambda r: r["protocol"].update(pairing_rule="by order"), "pairing rule"),
    ("kl variant", lambda r: r["protocol"].update(kl_variant="sigmoid"), "KL variant"),
    ("clip count", lambda r: r["counts"].update(generated=15, paired=15), "clip count (generated)"),
]


def test_same_protocol_prints_values_with_half_intervals():
    a, b = _run(0.5, (0.4, 0.7)), _run(0.25, (0.2, 0.3))
    table = compare_table([a, b], ["a.json", "b.json"])
    lines = table.splitlines()
    assert lines[1].startswith("a.json") and "0.5000 ± 0.1500" in lines[1]
    assert lines[2].startswith("b.json") and "0.2500 ± 0.0500" in lines[2]
    assert "2.0000 ± 0.6000" in lines[1]  # KL
    assert "1.5000" in lines[1] and "*" not in table  # KAD without an interval; nothing marked


@pytest.mark.parametrize("what, change, field", CHANGES, ids=[c[0] for c in CHANGES])
def test_each_protocol_difference_is_refused_by_name(what, change, field):
    a, b = _run(0.5, (0.4, 0.7)), _run(0.5, (0.4, 0.7))
    change(b)
    with pytest.raises(ProtocolMismatchError) as err:
        compare_table([a, b], ["a.json", "b.json"])
    message = str(err.value)
    assert f"b.json was not scored with the protocol of a.json: {field}:" in message, message
    assert "--allow-protocol-mismatch" in message


def test_the_first_difference_is_named_and_the_rest_counted():
    a = _run(0.5, (0.4, 0.7))
    b = copy.deepcopy(a)
    b["counts"]["reference"] = 20  # checked last
    b["protocol"]["kl_variant"] = "sigmoid"  # checked before the counts
    with pytest.raises(
        ProtocolMismatchError, match=r"KL variant: 'softmax' vs 'sigmoid' \(and 1 more\)"
    ):
        compare_table([a, a, b], ["a", "a2", "b"])


def test_allowed_mismatch_marks_the_run_and_lists_its_differences(tmp_path, capsys):
    a, b = _run(0.5, (0.4, 0.7)), _run(0.6, (0.5, 0.9))
    b["backbones"]["fd"]["sample_rate"] = 48000
    paths = []
    for name, run in (("a.json", a), ("b.json", b)):
        paths.append(str(tmp_path / name))
        (tmp_path / name).write_text(json.dumps(run))
    assert main(["--compare", *paths]) == 1
    out = capsys.readouterr().out
    assert "fd sample rate: 16000 vs 48000" in out and "0.6000" not in out
    assert main(["--compare", *paths, "--allow-protocol-mismatch"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[1].startswith(paths[0] + " ") and "*" not in lines[1]
    assert lines[2].startswith(paths[1] + " *") and "0.6000 ± 0.2000" in lines[2]
    assert lines[3] == f"* {paths[1]} differs from {paths[0]} in:"
    assert lines[4].strip() == "fd sample rate: 16000 vs 48000"
