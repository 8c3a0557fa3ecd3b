"""Nothing waits on a dead network: with HF_HUB_OFFLINE unset and every request sent to a proxy
that refuses connections, `siren` commands that need absent weights end within seconds with one
clear message naming the file to place."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from siren_lightning.offline import hub_offline

ROOT = Path(__file__).resolve().parents[1]
DEAD = "http://127.0.0.1:9"  # the discard port: connection refused


def _siren(
    args: list[str], home: Path, timeout: float
) -> tuple[subprocess.CompletedProcess, float]:
    env = {
        k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    }
    env.update(
        HOME=str(home),
        HF_HOME=str(home / "hf"),
        HTTPS_PROXY=DEAD,
        HTTP_PROXY=DEAD,
        https_proxy=DEAD,
        http_proxy=DEAD,
        PYTHONPATH=str(ROOT / "src"),
    )
    start = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "siren_lightning.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=home,
    )
    return result, time.monotonic() - start


def _wav(path: Path) -> None:
    import torch

    from siren_lightning.data.audio import write_audio

    write_audio(path, torch.sin(torch.arange(16000) * 0.05) * 0.3, 16000)


@pytest.mark.slow
def test_official_dac_weights_missing_is_a_fast_clear_error(tmp_path):
    _wav(tmp_path / "a.wav")
    (tmp_path / "m.jsonl").write_text('{"id": "a", "audio": "a.wav", "caption": "a tone"}\n')
    args = ["tokenize", "--manifest", "m.jsonl", "--codec", "dac:16khz", "--out", "codes"]
    result, seconds = _siren(args, tmp_path, timeout=120)
    assert result.returncode != 0 and seconds < 60
    assert "Official DAC 16 kHz weights are not available offline" in result.stderr
    assert "weights_16khz_8kbps_0.0.5.pth" in result.stderr


def test_hub_offline_switches_on_inside_and_restores_after(monkeypatch):
    from huggingface_hub import constants

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "0")
    before = constants.HF_HUB_OFFLINE
    with hub_offline():
        assert os.environ["HF_HUB_OFFLINE"] == "1" and os.environ["TRANSFORMERS_OFFLINE"] == "1"
        assert constants.HF_HUB_OFFLINE is True
    assert "HF_HUB_OFFLINE" not in os.environ and os.environ["TRANSFORMERS_OFFLINE"] == "0"
    assert before == constants.HF_HUB_OFFLINE


@pytest.mark.slow
def test_import_offline_keeps_laion_clap_from_waiting_in_library_code(tmp_path):
    env = {
        k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    }
    env.update(HOME=str(tmp_path), HTTPS_PROXY=DEAD, https_proxy=DEAD, PYTHONPATH=str(ROOT / "src"))
    code = (
        "import huggingface_hub, transformers\n"  # already imported: its constants are fixed
        "from siren_lightning.offline import import_offline\n"
        "import_offline('frechet_audio_distance')\n"
        "import os; print('imported', os.environ.get('HF_HUB_OFFLINE'))\n"
    )
    start = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=150
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "imported None"  # the switch is restored afterwards
    assert time.monotonic() - start < 90  # without it: over 200 s of retries
