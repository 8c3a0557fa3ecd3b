"""The tiny CLAPs retrained on SynthCaps clean (digital silence between events) are committed,
load by their bundled names from any folder, state their weights' SHA-256, and tell pitch
apart on clean clips: the judges issue 17 needs for the clean reference models."""

import numpy as np
import pytest
import torch
from tests.test_reference_assets import assert_readme_states_the_weights_sha256

from siren_lightning.data.synthcaps import (
    PITCH_RANGES_HZ,
    all_combinations,
    class_prompts,
    synthesize,
)
from siren_lightning.metrics.tiny_clap import (
    BUNDLED,
    CaptionEmbeddingCache,
    load_tiny_clap,
    tiny_clap_path,
)

CLEAN = ["tiny-clap-eval-clean", "tiny-clap-reward-clean"]


@pytest.mark.parametrize("name", CLEAN)
def test_clean_judge_loads_by_name_from_another_folder(name, tmp_path, monkeypatch):
    assert name in BUNDLED
    monkeypatch.chdir(tmp_path)  # a bundled name resolves under assets/, not the current folder
    model = load_tiny_clap(name)
    assert model.sample_rate == 16000
    assert_readme_states_the_weights_sha256(tiny_clap_path(name))


@pytest.mark.parametrize("name", CLEAN)
def test_clean_judge_picks_the_pitch_of_clean_clips(name):
    """Each clip is a clean SynthCaps rendering; the caption naming its pitch band must be closer
    than the same caption naming either other band (both judges: 1.00 on 200 test clips)."""
    model = load_tiny_clap(name)
    captions = CaptionEmbeddingCache(model.text_encoder_name)
    # class_prompts() holds one caption per combination, in all_combinations() order
    prompts = dict(zip(all_combinations(), class_prompts(), strict=True))
    rng = np.random.default_rng(0)
    bands = list(PITCH_RANGES_HZ)
    for source, band, count, envelope in [
        ("tone", "low", "once", "steady"),
        ("chord", "medium", "twice", "fade_in"),
        ("chirp_up", "high", "three_times", "fade_out"),
        ("siren", "low", "continuous", "fade_in"),
    ]:
        attrs = {"source": source, "pitch": band, "count": count, "envelope": envelope}
        audio, _ = synthesize(attrs, 3.0, rng, background=0.0)
        texts = [prompts[(source, b, count, envelope)] for b in bands]
        with torch.no_grad():
            a = model.embed(torch.from_numpy(audio)[None], 16000)
            t = model.embed_text(captions(texts))
        assert bands[int((a @ t.T).argmax())] == band, attrs
