"""Negative controls with the committed tiny-clap-eval backbone (the `tiny` preset): silence and
white noise must score clearly worse than audio that matches the reference clips' captions."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import soundfile as sf

from siren_lightning.data.manifest import read_manifest
from siren_lightning.data.synthcaps import synthesize
from siren_lightning.metrics.protocol import build_evaluator
from siren_lightning.metrics.tiny_clap import assets_dir
from siren_lightning.metrics.weights import sha256_file

SR = 16000


@pytest.fixture(scope="module")
def folders(synthcaps_small, tmp_path_factory):
    """Matched, silent and white-noise clips named after the small SynthCaps test clips."""
    clips = read_manifest(synthcaps_small["test"])
    root = tmp_path_factory.mktemp("controls")
    rng = np.random.default_rng(7)
    folders = {name: root / name for name in ("matched", "silence", "noise")}
    for folder in folders.values():
        folder.mkdir()
    for clip in clips:
        n = sf.info(str(clip.audio)).frames
        attrs = {k: clip.attributes[k] for k in ("source", "pitch", "count", "envelope")}
        # Same attributes, fresh randomness (frequency, timing, level): audio that fits the caption.
        matched, _ = synthesize(attrs, n / SR, rng, sample_rate=SR, background=0.003)
        sf.write(folders["matched"] / f"{clip.id}.wav", matched, SR)
        sf.write(folders["silence"] / f"{clip.id}.wav", np.zeros(n, np.float32), SR)
        noise = (0.2 * rng.standard_normal(n)).astype(np.float32)
        sf.write(folders["noise"] / f"{clip.id}.wav", noise, SR)
    return clips, folders


@pytest.fixture(scope="module")
def scores(folders):
    clips, folders = folders
    evaluator = build_evaluator("tiny")
    reference = {c.id: c.audio for c in clips}
    captions = {c.id: c.captions[0] for c in clips}
    out = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # 16 clips for 128 dimensions: rank-deficient warnings
        for name, folder in folders.items():
            generated = {c.id: folder / f"{c.id}.wav" for c in clips}
            out[name] = evaluator.evaluate(generated, reference, captions)["metrics"]
    return out


@pytest.mark.slow
@pytest.mark.parametrize("control", ["silence", "noise"])
def test_controls_score_clearly_worse_than_matched_audio(scores, control):
    good, bad = scores["matched"], scores[control]
    print(
        control,
        {k: round(v, 3) for k, v in bad.items() if v is not None},
        "matched",
        {k: round(v, 3) for k, v in good.items() if v is not None},
    )
    assert bad["fd"] > 2 * good["fd"], (control, good, bad)
    assert bad["kl_softmax"] > good["kl_softmax"] + 0.5, (control, good, bad)
    assert bad["clap_score"] < good["clap_score"] - 10, (control, good, bad)
    assert bad["is_mean"] < good["is_mean"], (control, good, bad)


@pytest.mark.slow
def test_siren_evaluate_tool_writes_results(folders, synthcaps_small, tmp_path, capsys):
    from siren_lightning.metrics.protocol import main

    _, dirs = folders
    out = tmp_path / "results.json"
    argv = [
        "--generated",
        str(dirs["matched"]),
        "--reference",
        str(synthcaps_small["test"]),
        "--preset",
        "tiny",
        "--out",
        str(out),
        "--cache",
        str(tmp_path / "cache"),
        "--per-clip",
        str(tmp_path / "per_clip.jsonl"),
        "--bootstrap",
        "50",
    ]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert main(argv) == 0
    results = json.loads(out.read_text())
    assert results["preset"] == "tiny" and results["counts"]["paired"] == 16
    assert results["backbones"]["fd"]["weights_sha256"] == sha256_file(
        assets_dir() / "tiny-clap-eval" / "model.safetensors"
    )
    printed = capsys.readouterr().out
    assert "clap_score" in printed and "±" in printed
    assert set(results["intervals"]) == {"fd", "kad", "kl", "is_mean", "clap_score"}
    rows = [json.loads(line) for line in (tmp_path / "per_clip.jsonl").read_text().splitlines()]
    assert len(rows) == 16 and all(
        set(r["adherence"]) == {"pitch", "count", "envelope", "all"} for r in rows
    )
    clap = 100 * sum(r["clap_cosine"] for r in rows) / 16
    assert clap == pytest.approx(results["metrics"]["clap_score"], rel=1e-9)
    # The matched clips were synthesized with their captions' attributes: most agree.
    assert sum(r["adherence"]["all"] for r in rows) >= 12
