"""Nothing waits on a dead network: with HF_HUB_OFFLINE unset and every request sent to a local
proxy that counts the connections it gets and drops them, `siren` commands that need absent
weights end with one clear message naming the file to place, and nothing tries the network.

The behaviour is asserted by the proxy's count, not by a time: a loaded machine may take any
time to import torch. The subprocess timeouts only guard against a hang.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from siren_lightning.offline import hub_offline

ROOT = Path(__file__).resolve().parents[1]
PROXY_VARS = ("HTTPS_PROXY", "HTTP_PROXY", "https_proxy", "http_proxy", "ALL_PROXY", "all_proxy")


@pytest.fixture
def counting_proxy() -> Iterator[tuple[str, list[str]]]:
    """A proxy URL on localhost that closes every connection at once, and the list of the
    first bytes each connection sent (e.g. `CONNECT huggingface.co:443`)."""
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(0.2)
    seen: list[str] = []
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            with conn:
                conn.settimeout(2)
                try:
                    seen.append(conn.recv(200).decode("latin-1").split("\r\n")[0])
                except OSError:
                    seen.append("(nothing sent)")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.getsockname()[1]}", seen
    stop.set()
    thread.join(5)
    server.close()


def _env(home: Path, proxy: str) -> dict[str, str]:
    drop = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "NO_PROXY", "no_proxy", *PROXY_VARS)
    env = {k: v for k, v in os.environ.items() if k not in drop}
    env.update(dict.fromkeys(PROXY_VARS, proxy))
    env.update(HOME=str(home), HF_HOME=str(home / "hf"), PYTHONPATH=str(ROOT / "src"))
    return env


def _siren(args: list[str], home: Path, proxy: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "siren_lightning.cli", *args],
        env=_env(home, proxy),
        capture_output=True,
        text=True,
        timeout=600,  # a guard against a hang only
        cwd=home,
    )


def _wav(path: Path) -> None:
    import torch

    from siren_lightning.data.audio import write_audio

    write_audio(path, torch.sin(torch.arange(16000) * 0.05) * 0.3, 16000)


@pytest.mark.slow
def test_official_dac_weights_missing_is_a_clear_error_without_network(tmp_path, counting_proxy):
    proxy, seen = counting_proxy
    _wav(tmp_path / "a.wav")
    (tmp_path / "m.jsonl").write_text('{"id": "a", "audio": "a.wav", "caption": "a tone"}\n')
    args = ["tokenize", "--manifest", "m.jsonl", "--codec", "dac:16khz", "--out", "codes"]
    result = _siren(args, tmp_path, proxy)
    assert result.returncode != 0
    assert seen == []  # it said what to place instead of trying to download it
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
def test_import_offline_keeps_laion_clap_from_reaching_for_the_hub(tmp_path, counting_proxy):
    proxy, seen = counting_proxy
    code = (
        "import huggingface_hub, transformers\n"  # already imported: its constants are fixed
        "from siren_lightning.offline import import_offline\n"
        "import_offline('frechet_audio_distance')\n"
        "import os; print('imported', os.environ.get('HF_HUB_OFFLINE'))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        env=_env(tmp_path, proxy),
        capture_output=True,
        text=True,
        timeout=600,  # a guard only: without the switch it retries for minutes
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "imported None"  # the switch is restored afterwards
    assert seen == []  # without it: laion_clap asks the hub for three tokenizers
