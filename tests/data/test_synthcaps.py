import json
from collections import Counter

import numpy as np
import pytest

from siren_lightning.data import synthcaps as S
from siren_lightning.data.audio import load_audio
from siren_lightning.data.manifest import read_manifest


def test_every_combination_is_measured_back_from_the_signal():
    # Two renderings of each of the 252 combinations at random lengths (1 to 6 s).
    misses = Counter()
    for i, combo in enumerate(S.all_combinations() * 2):
        rng = np.random.default_rng([11, i])
        attrs = dict(zip(S.ATTRIBUTES, combo, strict=True))
        audio, f = S.synthesize(attrs, rng.uniform(1.0, 6.0), rng, background=0.003)
        low, high = S.PITCH_RANGES_HZ[attrs["pitch"]]
        assert low <= f <= high
        m = S.measure_attributes(audio)
        misses.update(k for k, ok in S.attribute_agreement(m, attrs).items() if not ok)
        if attrs["count"] != "continuous":
            assert m["onsets"] == S.EVENTS_PER_COUNT[attrs["count"]], (combo, m)
        if attrs["envelope"] == "fade_in":
            assert m["envelope_slope_db"] > 0, (combo, m)
        elif attrs["envelope"] == "fade_out":
            assert m["envelope_slope_db"] < 0, (combo, m)
    assert not misses, misses


def test_measurement_rejects_the_wrong_attributes():
    rng = np.random.default_rng(0)
    attrs = {"source": "tone", "pitch": "high", "count": "twice", "envelope": "fade_out"}
    audio, _ = S.synthesize(attrs, 3.0, rng)
    other = {"source": "tone", "pitch": "low", "count": "three_times", "envelope": "fade_in"}
    agree = S.attribute_agreement(S.measure_attributes(audio), other)
    assert agree == {"pitch": False, "count": False, "envelope": False, "all": False}
    silence = S.measure_attributes(np.zeros(16_000))
    assert silence["onsets"] == 0


def test_heldout_combinations_are_unseen_but_every_value_is_seen():
    seen, held = S.split_combinations(seed=0)
    assert set(seen).isdisjoint(held) and len(seen) + len(held) == len(S.all_combinations())
    for pos, values in enumerate((S.SOURCES, S.PITCH_RANGES_HZ, S.COUNTS, S.ENVELOPES)):
        assert {c[pos] for c in seen} == set(values)
    assert S.split_combinations(seed=0) == (seen, held)
    assert S.split_combinations(seed=1)[1] != held


def test_generated_manifests(synthcaps_small):
    clips = {split: read_manifest(p) for split, p in synthcaps_small.items()}
    cfg = json.loads(json.dumps(S.SynthCapsConfig().__dict__))  # defaults are JSON-serialisable
    assert cfg["sample_rate"] == 16_000
    assert [len(clips[s]) for s in ("train", "val", "test")] == [48, 12, 16]
    combo = lambda c: tuple(c.attributes[k] for k in S.ATTRIBUTES)  # noqa: E731
    train_combos = {combo(c) for c in clips["train"] + clips["val"]}
    assert not train_combos & {combo(c) for c in clips["test"]}
    for clip in clips["train"][:12] + clips["test"][:12]:
        assert len(clip.captions) == 3 and len(set(clip.captions)) == 3
        audio = load_audio(clip.audio, S.SAMPLE_RATE).numpy()
        assert 1.0 <= audio.size / S.SAMPLE_RATE <= 2.0
        agree = S.attribute_agreement(S.measure_attributes(audio), clip.attributes)
        assert agree["all"], (clip.id, clip.attributes, S.measure_attributes(audio))


def test_generation_is_seeded(tmp_path):
    cfg = S.SynthCapsConfig(train=3, val=1, test=2, min_seconds=1.0, max_seconds=1.5, seed=5)
    a = S.generate(tmp_path / "a", cfg, workers=1)
    b = S.generate(tmp_path / "b", cfg, workers=2)
    for split in a:
        ca, cb = read_manifest(a[split]), read_manifest(b[split])
        assert [(c.captions, c.attributes) for c in ca] == [(c.captions, c.attributes) for c in cb]
        for x, y in zip(ca, cb, strict=True):
            assert np.array_equal(load_audio(x.audio, 16_000), load_audio(y.audio, 16_000))


def test_captions_mention_their_attributes():
    rng = np.random.default_rng(0)
    attrs = {"source": "clicks", "pitch": "low", "count": "twice", "envelope": "fade_in"}
    for _ in range(20):
        c = S.make_caption(attrs, rng).lower()
        assert any(w in c for w in ("click",))
        assert any(w in c for w in S.PITCH_WORDS["low"] + ["low pitch"])
        assert any(w in c for w in S.COUNT_ADVERBS["twice"] + ["two"])
        assert any(w in c for w in S.ENVELOPE_PHRASES["fade_in"])


def test_bad_config_values_are_refused():
    with pytest.raises(ValueError, match="min_seconds"):
        S.SynthCapsConfig(min_seconds=3, max_seconds=2)
    with pytest.raises(ValueError, match="heldout_fraction"):
        S.split_combinations(0, heldout_fraction=0.7)


def test_render_envelope_hides_the_level_of_the_same_clips(tmp_path):
    # The copy rendered steady: the same ids, captions, stated attributes and (for steady clips)
    # the same samples; a faded clip keeps its events, pitch and length, and measures steady.
    cfg = dict(train=24, val=0, test=0, min_seconds=1.0, max_seconds=2.0, seed=3, background=0.0)
    real = read_manifest(S.generate(tmp_path / "a", S.SynthCapsConfig(**cfg), workers=1)["train"])
    steady = S.SynthCapsConfig(**cfg, render_envelope="steady")
    copy = read_manifest(S.generate(tmp_path / "b", steady, workers=1)["train"])
    faded = 0
    for x, y in zip(real, copy, strict=True):
        assert (x.id, x.captions, x.attributes) == (y.id, y.captions, y.attributes)
        a, b = load_audio(x.audio, 16_000).numpy(), load_audio(y.audio, 16_000).numpy()
        ma, mb = S.measure_attributes(a), S.measure_attributes(b)
        assert a.shape == b.shape and (ma["pitch"], ma["count"]) == (mb["pitch"], mb["count"])
        assert mb["envelope"] == "steady" and abs(mb["envelope_slope_db"]) < 2.0
        if x.attributes["envelope"] == "steady":
            assert np.array_equal(a, b)
        else:
            faded += 1
            assert ma["envelope"] == x.attributes["envelope"]
    assert faded >= 8
    with pytest.raises(ValueError, match="render_envelope 'loud'"):
        S.SynthCapsConfig(render_envelope="loud")
