import math

import pytest
import torch
from clap_testing import tiny_laion_clap

from siren_lightning.align.rewards import (
    CallableReward,
    EmbeddingCosineReward,
    LaionCLAPReward,
    LoudnessReward,
    Reward,
    TinyCLAPReward,
    build_reward,
)


def sine(amplitude: float, n: int = 1600, sr: int = 1600) -> torch.Tensor:
    t = torch.arange(n) / sr
    return amplitude * torch.sin(2 * math.pi * 100 * t)


def test_loudness_reward_is_rms_in_db():
    audio = torch.stack([sine(0.1), sine(0.5), torch.zeros(1600)])[:, None]  # [3, 1, N]
    out = LoudnessReward()(audio, 1600, ["a", "b", "c"])
    expected = [20 * math.log10(0.1 / math.sqrt(2)), 20 * math.log10(0.5 / math.sqrt(2)), -100.0]
    assert out.shape == (3,) and out.dtype == torch.float32
    torch.testing.assert_close(out, torch.tensor(expected), atol=1e-3, rtol=0)


def test_reward_interface_rejects_bad_input():
    reward = LoudnessReward()
    with pytest.raises(ValueError, match=r"\[B, 1, N\]"):
        reward(torch.zeros(2, 100), 1600, ["a", "b"])
    with pytest.raises(ValueError, match="2 clips but 1 captions"):
        reward(torch.zeros(2, 1, 100), 1600, ["a"])

    class Wrong(Reward):
        def score(self, audio, sample_rate, captions):
            return torch.zeros(5)

    with pytest.raises(ValueError, match="expected"):
        Wrong()(torch.zeros(2, 1, 100), 1600, ["a", "b"])


def test_callable_reward_by_dotted_path(tmp_path, monkeypatch):
    (tmp_path / "my_rewards.py").write_text(
        "def peak(audio, sample_rate, captions, scale=1.0):\n"
        "    return scale * audio.abs().amax(dim=(1, 2))\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    reward = CallableReward("my_rewards.peak", kwargs={"scale": 2.0})
    audio = torch.tensor([[[0.1, -0.4]], [[0.3, 0.2]]])
    torch.testing.assert_close(reward(audio, 16000, ["x", "y"]), torch.tensor([0.8, 0.6]))
    assert build_reward("callable:my_rewards:peak")(audio, 16000, ["x", "y"])[0] == 0.4
    with pytest.raises(ValueError, match="cannot import"):
        CallableReward("my_rewards.nothing_here")


def test_embedding_cosine_reward_by_hand():
    reward = EmbeddingCosineReward(
        embed_audio=lambda audio, sr: torch.stack([audio.abs().amax(1), torch.ones(len(audio))], 1),
        embed_text=lambda captions: torch.tensor([[1.0, 1.0]] * len(captions)),
    )
    audio = torch.tensor([[[1.0, -1.0]], [[0.0, 0.0]]])  # audio embeddings [1, 1] and [0, 1]
    torch.testing.assert_close(
        reward(audio, 16000, ["a", "b"]), torch.tensor([100.0, 100 / math.sqrt(2)])
    )


def test_tiny_clap_reward_is_the_bundled_models_cosine():
    reward = TinyCLAPReward("tiny-clap-reward")
    audio = torch.stack([sine(0.3, 16000, 16000), torch.randn(16000) * 0.1])[:, None]
    captions = ["a steady low tone", "a burst of noise"]
    out = reward(audio, 16000, captions)
    model = reward.model
    with torch.no_grad():
        a = model.embed(audio[:, 0], 16000)
        t = model.embed_text(reward.captions(captions))
    torch.testing.assert_close(out, 100 * (a * t).sum(-1), atol=1e-4, rtol=0)
    assert ((out > -100) & (out < 100)).all()


def test_laion_reward_loads_lazily_and_names_the_missing_checkpoint(tmp_path):
    from siren_lightning.metrics.weights import WeightsError

    reward = LaionCLAPReward(str(tmp_path / "no-clap-here"))  # nothing loaded yet
    with pytest.raises(WeightsError, match="no-clap-here"):
        reward(torch.zeros(1, 1, 16000), 16000, ["a"])


def test_build_reward_specs():
    assert isinstance(build_reward("loudness"), LoudnessReward)
    assert isinstance(build_reward("laion:some/folder"), LaionCLAPReward)
    with pytest.raises(ValueError, match="unknown reward spec"):
        build_reward("imagebind")


def test_laion_reward_is_the_cosine_of_the_metrics_backbone():
    backbone = tiny_laion_clap()
    reward = LaionCLAPReward("tiny-random", backbone=backbone)
    audio = torch.stack([sine(0.3, 16000, 16000), sine(0.05, 16000, 16000)])[:, None]
    captions = ["a tone", "a quiet tone"]
    out = reward(audio, 16000, captions)
    a, t = backbone.embed(audio[:, 0], 16000), backbone.embed_text(captions)
    expected = 100 * torch.nn.functional.cosine_similarity(a, t, dim=-1)
    torch.testing.assert_close(out, expected, atol=1e-4, rtol=0)


def test_rewards_record_their_provenance(tmp_path, monkeypatch):
    from pathlib import Path

    tiny = TinyCLAPReward("tiny-clap-reward").provenance()
    readme = Path(__file__).parents[2] / "assets" / "tiny-clap-reward" / "README.md"
    assert tiny["family"] == "tiny-clap" and tiny["checkpoint"] == "tiny-clap-reward"
    assert tiny["sha256"] in readme.read_text()  # the SHA-256 its README states
    laion = LaionCLAPReward("laion/larger_clap_general").provenance()
    assert laion == {
        "name": "laion-clap:laion/larger_clap_general",
        "family": "laion-clap",
        "class": "LaionCLAPReward",
        "checkpoint": "laion/larger_clap_general",
    }
    (tmp_path / "my_embeddings.py").write_text(
        "import torch\n"
        "def audio(audio, sample_rate):\n    return torch.ones(len(audio), 2)\n"
        "def text(captions):\n    return torch.ones(len(captions), 2)\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    cosine = build_reward("embedding-cosine:my_embeddings.audio,my_embeddings.text")
    assert cosine.provenance()["family"] == "embedding-cosine"
    assert cosine.provenance()["embed_text"] == "my_embeddings.text"
    torch.testing.assert_close(
        cosine(torch.zeros(2, 1, 8), 16000, ["a", "b"]), torch.full((2,), 100.0)
    )
