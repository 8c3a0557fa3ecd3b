"""notebooks/evaluate.ipynb runs top to bottom (nbclient) on tiny data, as a user would run it."""

import json
import math
from pathlib import Path

import nbformat
import numpy as np
import pytest
import soundfile as sf
from nbclient import NotebookClient

from siren_lightning.data.manifest import read_manifest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_notebook_runs_and_writes_the_three_rows(tmp_path, synthcaps_small, monkeypatch):
    # "Generations": each reference with a 440 Hz hum added, named by clip id, as
    # `siren generate --manifest` writes them (with generations.jsonl).
    clips = read_manifest(synthcaps_small["test"])[:12]
    generated = tmp_path / "generated"
    generated.mkdir()
    with open(generated / "generations.jsonl", "w") as f:
        for clip in clips:
            audio, sr = sf.read(clip.audio, dtype="float32")
            hum = 0.3 * np.sin(2 * math.pi * 440 * np.arange(len(audio)) / sr)
            sf.write(generated / f"{clip.id}.wav", (0.5 * audio + hum).astype(np.float32), sr)
            f.write(json.dumps({"id": clip.id, "caption": clip.captions[0]}) + "\n")
    out = tmp_path / "results.json"
    for key, value in {
        "MANIFEST": synthcaps_small["test"],
        "GENERATED": generated,
        "CODEC": ROOT / "assets" / "codec_tiny",
        # A judge of noisy SynthCaps (this data) that is neither the notebook's default nor the
        # library's, so the test sees the variable reach the evaluator.
        "TINY_CLAP": "tiny-clap-reward",
        "NUM_CLIPS": 12,
        "OUT": out,
        "SHOW": 1,
        "BOOTSTRAP": 50,
        "MODEL": tmp_path / "no-model",  # not needed: the generations exist
    }.items():
        monkeypatch.setenv(f"SIREN_EVAL_{key}", str(value))
    monkeypatch.setenv("PYTHONPATH", str(ROOT / "src"))
    notebook = nbformat.read(ROOT / "notebooks" / "evaluate.ipynb", as_version=4)
    NotebookClient(
        notebook, timeout=300, kernel_name="python3", resources={"metadata": {"path": ROOT}}
    ).execute()

    results = json.loads(out.read_text())
    assert results["counts"]["paired"] == 12 and results["preset"] == "tiny"
    from siren_lightning.metrics.tiny_clap import TinyCLAPBackbone

    judge = results["backbones"]["clap"]["weights_sha256"]
    assert judge == TinyCLAPBackbone.from_pretrained("tiny-clap-reward").weights_sha256
    assert results["metrics"]["fad"] is None
    ceiling, truth = results["codec_ceiling"]["metrics"], results["ground_truth"]["metrics"]
    # The hum makes the "model" worse than the codec round trip of the references.
    assert ceiling["fd"] < results["metrics"]["fd"]
    assert ceiling["clap_score"] > results["metrics"]["clap_score"]
    assert truth["clap_score"] > results["metrics"]["clap_score"]
    text = "".join(
        o.get("text", "") + json.dumps(o.get("data", {}))
        for cell in notebook.cells
        if cell.cell_type == "code"
        for o in cell.outputs
    )
    assert "codec ceiling" in text and "ground truth" in text
    assert "image/png" in text and "audio/wav" in text  # spectrograms and players
    # The worst ten clips: the ten lowest CLAP cosines of the per-clip rows, each with a player.
    rows = [json.loads(x) for x in (tmp_path / "per_clip.jsonl").read_text().splitlines()]
    assert len(rows) == 12 and all("adherence" in r for r in rows)
    last = notebook.cells[-1].outputs
    shown = [o["data"]["text/markdown"] for o in last if "text/markdown" in o.get("data", {})]
    expected = sorted(rows, key=lambda r: r["clap_cosine"])[:10]
    assert [m.split("**")[1] for m in shown] == [r["id"] for r in expected]
    assert sum("<audio" in o.get("data", {}).get("text/html", "") for o in last) == 10
