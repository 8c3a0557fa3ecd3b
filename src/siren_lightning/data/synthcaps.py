"""SynthCaps: a seeded generator of captioned 16 kHz clips from a small compositional grammar.

Every clip is one combination (source, pitch, count, envelope). Its attributes are stored beside
its captions, and `measure_attributes` recovers them from the signal alone (pitch band, onset
count, envelope slope), so adherence of generated audio can be graded by signal processing.
The test split holds attribute *combinations* that never occur in train or val; every single
attribute value does occur in train (DESIGN.md section 4).
"""

from __future__ import annotations

import itertools
import math
import os
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy import signal as sps
from tqdm.auto import tqdm

from siren_lightning.data.audio import write_audio
from siren_lightning.data.manifest import Clip, write_manifest

SAMPLE_RATE = 16_000
SOURCES = ("tone", "chord", "noise", "chirp_up", "chirp_down", "clicks", "siren")
# Ranges of the reference frequency f. Every source keeps its measured pitch (the median of the
# per-frame spectral peak) inside its band: chords span f..1.5f, sirens f..4/3 f, noise 0.7f..1.3f
# and chirps sweep f/sqrt(2)..f*sqrt(2) around a median of f.
PITCH_RANGES_HZ = {"low": (140.0, 220.0), "medium": (480.0, 580.0), "high": (1250.0, 1800.0)}
PITCH_BAND_EDGES_HZ = (360.0, 950.0)  # low < 360 <= medium < 950 <= high
COUNTS = ("once", "twice", "three_times", "continuous")
EVENTS_PER_COUNT = {"once": 1, "twice": 2, "three_times": 3, "continuous": 1}
ENVELOPES = ("steady", "fade_in", "fade_out")
FADE_FLOOR = 0.25  # a fade runs between this gain and 1 (12 dB)
ATTRIBUTES = ("source", "pitch", "count", "envelope")

# --------------------------------------------------------------------------------------------
# Captions
# --------------------------------------------------------------------------------------------

NOUNS: dict[str, list[tuple[str, str]]] = {  # (singular, plural)
    "tone": [("beep", "beeps"), ("tone", "tones"), ("sine tone", "sine tones")],
    "chord": [("chord", "chords"), ("chime", "chimes"), ("three-note chord", "three-note chords")],
    "noise": [
        ("burst of noise", "bursts of noise"),
        ("hiss", "hisses"),
        ("noise burst", "noise bursts"),
    ],
    "chirp_up": [("rising chirp", "rising chirps"), ("upward sweep", "upward sweeps")],
    "chirp_down": [("falling chirp", "falling chirps"), ("downward sweep", "downward sweeps")],
    "clicks": [("click train", "click trains"), ("burst of clicks", "bursts of clicks")],
    "siren": [("two-tone siren", "two-tone siren calls"), ("wailing alarm", "wailing alarms")],
}
PITCH_WORDS = {
    "low": ["low", "low-pitched", "deep"],
    "medium": ["mid-pitched", "medium-pitched", "moderately pitched"],
    "high": ["high", "high-pitched", "shrill"],
}
COUNT_ADVERBS = {
    "once": ["once", "a single time", "one time"],
    "twice": ["twice", "two times"],
    "three_times": ["three times", "thrice"],
    "continuous": ["continuously", "without a break", "steadily throughout"],
}
COUNT_NUMBERS = {"once": "one", "twice": "two", "three_times": "three"}
ENVELOPE_PHRASES = {
    "steady": ["at a steady volume", "at a constant level", "evenly"],
    "fade_in": ["fading in", "growing louder", "getting louder"],
    "fade_out": ["fading out", "growing quieter", "dying away"],
}
VERBS = ["sounds", "plays", "is heard", "rings out"]


def make_caption(attrs: dict[str, str], rng: np.random.Generator) -> str:
    """One natural-English caption for an attribute set, from a randomly chosen template."""

    def pick(options: Sequence[Any]) -> Any:
        return options[int(rng.integers(len(options)))]

    noun, plural = pick(NOUNS[attrs["source"]])
    pitch = pick(PITCH_WORDS[attrs["pitch"]])
    count = attrs["count"]
    adverb = pick(COUNT_ADVERBS[count])
    env = pick(ENVELOPE_PHRASES[attrs["envelope"]])
    verb = pick(VERBS)
    pitch_noun = {"low": "a low pitch", "medium": "a medium pitch", "high": "a high pitch"}
    templates = [
        f"a {pitch} {noun} {verb} {adverb}, {env}",
        f"the {noun} {verb} {adverb} at {pitch_noun[attrs['pitch']]}, {env}",
        f"{adverb}, a {pitch} {noun} {verb} {env}",
    ]
    if count == "continuous":
        templates.append(f"a continuous {pitch} {noun}, {env}")
    else:
        templates.append(f"{COUNT_NUMBERS[count]} {pitch} {plural}, each {env}")
    text = pick(templates)
    return text[0].upper() + text[1:]


def class_prompts() -> list[str]:
    """One canonical caption per attribute combination (252): zero-shot classes for tagging."""
    out = []
    for source, pitch, count, envelope in all_combinations():
        noun = NOUNS[source][0][0]
        text = f"a {PITCH_WORDS[pitch][0]} {noun} {VERBS[0]} {COUNT_ADVERBS[count][0]}, "
        out.append((text + ENVELOPE_PHRASES[envelope][0]).capitalize())
    return out


# --------------------------------------------------------------------------------------------
# Synthesis
# --------------------------------------------------------------------------------------------


def _event(source: str, f: float, n: int, sr: int, rng: np.random.Generator) -> np.ndarray:
    """One sounding event of n samples with unit-ish peak."""
    t = np.arange(n) / sr
    if source == "tone":
        x = np.sin(2 * np.pi * f * t + rng.uniform(0, 2 * np.pi))
    elif source == "chord":  # major triad: f, 5/4 f, 3/2 f
        x = sum(np.sin(2 * np.pi * f * r * t + rng.uniform(0, 2 * np.pi)) for r in (1, 1.25, 1.5))
    elif source == "noise":
        sos = sps.butter(4, [0.7 * f, 1.3 * f], btype="bandpass", fs=sr, output="sos")
        x = sps.sosfilt(sos, rng.standard_normal(n + 2048))[2048:]  # drop the filter's warm-up
    elif source in ("chirp_up", "chirp_down"):
        lo, hi = f / math.sqrt(2), f * math.sqrt(2)
        f0, f1 = (lo, hi) if source == "chirp_up" else (hi, lo)
        x = sps.chirp(t, f0=f0, t1=t[-1] if n > 1 else 1.0, f1=f1, method="logarithmic", phi=-90)
    elif source == "clicks":  # damped resonances at f, 25 a second
        x = np.zeros(n)
        click_len = int(0.03 * sr)
        tc = np.arange(click_len) / sr
        click = np.exp(-tc / 0.008) * np.sin(2 * np.pi * f * tc)
        for start in range(0, n, int(sr / 25)):
            m = min(click_len, n - start)
            x[start : start + m] += click[:m]
    elif source == "siren":  # alternates f and 4/3 f every 0.2 s, phase-continuous
        freq = np.where((t // 0.2) % 2 == 0, f, f * 4 / 3)
        x = np.sin(np.cumsum(2 * np.pi * freq / sr))
    else:
        raise ValueError(f"unknown source {source!r}; choose from {SOURCES}")
    return x / (np.abs(x).max() + 1e-9)


def _gain(envelope: str, n: int) -> np.ndarray:
    if envelope == "steady":
        return np.ones(n)
    ramp = np.linspace(FADE_FLOOR, 1.0, n)
    if envelope == "fade_in":
        return ramp
    if envelope == "fade_out":
        return ramp[::-1]
    raise ValueError(f"unknown envelope {envelope!r}; choose from {ENVELOPES}")


def synthesize(
    attrs: dict[str, str],
    duration: float,
    rng: np.random.Generator,
    *,
    sample_rate: int = SAMPLE_RATE,
    background: float = 0.0,
) -> tuple[np.ndarray, float]:
    """Renders one clip.

    Args:
        attrs: {"source", "pitch", "count", "envelope"}.
        duration: seconds.
        rng: the clip's own generator (all randomness comes from it).
        background: RMS of added white noise relative to the clip's peak (0 = none).

    Returns:
        (audio [N] float32 with peak in [0.3, 0.8], the reference frequency f in Hz).
    """
    lo, hi = PITCH_RANGES_HZ[attrs["pitch"]]
    f = float(math.exp(rng.uniform(math.log(lo), math.log(hi))))
    n = int(round(duration * sample_rate))
    out = np.zeros(n)
    events = EVENTS_PER_COUNT[attrs["count"]]
    if attrs["count"] == "continuous":
        spans = [(0.05 * duration, 0.9 * duration)]
    else:  # one event in the middle half of each equal slot, jittered a little
        slot = duration / events
        spans = [(slot * (i + 0.25 + rng.uniform(-0.05, 0.05)), 0.5 * slot) for i in range(events)]
    fade = int(0.005 * sample_rate)
    for start_s, length_s in spans:
        start, length = int(start_s * sample_rate), int(length_s * sample_rate)
        x = _event(attrs["source"], f, length, sample_rate, rng) * _gain(attrs["envelope"], length)
        if attrs["source"] != "clicks":  # 5 ms raised-cosine edges: no spurious clicks
            edge = 0.5 - 0.5 * np.cos(np.linspace(0, np.pi, fade))
            x[:fade] *= edge
            x[-fade:] *= edge[::-1]
        out[start : start + length] += x
    out *= rng.uniform(0.3, 0.8) / (np.abs(out).max() + 1e-9)
    if background > 0:
        out += background * np.abs(out).max() * rng.standard_normal(n)
    return out.astype(np.float32), f


# --------------------------------------------------------------------------------------------
# Measurement (what a listener would judge, by signal processing)
# --------------------------------------------------------------------------------------------


def pitch_band(hz: float) -> str:
    low_edge, high_edge = PITCH_BAND_EDGES_HZ
    return "low" if hz < low_edge else ("medium" if hz < high_edge else "high")


def _frame_rms(audio: np.ndarray, sr: int, win_s: float = 0.04, hop_s: float = 0.01) -> np.ndarray:
    win, hop = int(win_s * sr), int(hop_s * sr)
    if audio.size < win:
        audio = np.pad(audio, (0, win - audio.size))
    frames = np.lib.stride_tricks.sliding_window_view(audio, win)[::hop]
    return np.sqrt((frames.astype(np.float64) ** 2).mean(axis=1))


def _segments(env: np.ndarray, hop_s: float) -> list[tuple[int, int]]:
    """Sounding segments of a frame-RMS envelope: hysteresis thresholds, short gaps merged."""
    peak = env.max()
    if peak <= 0:
        return []
    on, off = 0.2 * peak, 0.08 * peak
    segs, active, start = [], False, 0
    for i, v in enumerate(env):
        if not active and v >= on:
            active, start = True, i
        elif active and v < off:
            active = False
            segs.append((start, i))
    if active:
        segs.append((start, len(env)))
    merged: list[tuple[int, int]] = []
    for s, e in segs:  # gaps under 60 ms are the envelope's own ripple, not a new onset
        if merged and (s - merged[-1][1]) * hop_s < 0.06:
            merged[-1] = (merged[-1][0], e)
        else:
            merged.append((s, e))
    return [(s, e) for s, e in merged if (e - s) * hop_s >= 0.04]


def measure_attributes(audio: np.ndarray, sample_rate: int = SAMPLE_RATE) -> dict[str, Any]:
    """Recovers SynthCaps attributes from a waveform.

    Returns:
        {"pitch_hz", "pitch" (band), "onsets", "count", "envelope_slope_db", "envelope"}.
        `count` is "continuous" when one segment covers more than 75% of the clip.
    """
    audio = np.asarray(audio, dtype=np.float64).reshape(-1)
    hop_s = 0.01
    env = _frame_rms(audio, sample_rate, hop_s=hop_s)
    segs = _segments(env, hop_s)

    # Pitch: median over loud frames of the frame's strongest frequency (>= 50 Hz). A clip
    # shorter than one STFT window is zero-padded to one.
    padded = np.pad(audio, (0, max(0, 2048 - audio.size)))
    freqs, _, spec = sps.stft(padded, fs=sample_rate, nperseg=2048, noverlap=1536)
    mag = np.abs(spec)
    energy = (mag**2).sum(axis=0)
    loud = energy >= 0.1 * energy.max() if energy.max() > 0 else np.zeros_like(energy, bool)
    valid = freqs >= 50
    peaks = freqs[valid][mag[valid][:, loud].argmax(axis=0)] if loud.any() else np.array([0.0])
    pitch_hz = float(np.median(peaks))

    # Envelope: slope of the dB level across each segment (dB per segment length), averaged.
    # The 40 ms window smears each edge over 4 frames: leave them out where the segment allows.
    slopes, weights = [], []
    for s, e in segs:
        if e - s >= 12:
            s, e = s + 3, e - 3
        level = 20 * np.log10(env[s:e] + 1e-9)
        if e - s >= 3:
            x = np.linspace(0.0, 1.0, e - s)
            slopes.append(np.polyfit(x, level, 1)[0])
            weights.append(e - s)
    slope = float(np.average(slopes, weights=weights)) if slopes else 0.0
    envelope = "fade_in" if slope > 4.0 else ("fade_out" if slope < -4.0 else "steady")

    n = len(segs)
    clip_frames = max(len(env), 1)
    if n == 1 and (segs[0][1] - segs[0][0]) / clip_frames > 0.75:
        count = "continuous"
    else:
        count = {1: "once", 2: "twice", 3: "three_times"}.get(n, f"{n}_events")
    return {
        "pitch_hz": pitch_hz,
        "pitch": pitch_band(pitch_hz),
        "onsets": n,
        "count": count,
        "envelope_slope_db": slope,
        "envelope": envelope,
    }


def attribute_agreement(measured: dict[str, Any], stated: dict[str, Any]) -> dict[str, bool]:
    """Which judged attributes (pitch band, count, envelope) match; "all" is their conjunction."""
    out = {k: measured[k] == stated[k] for k in ("pitch", "count", "envelope")}
    out["all"] = all(out.values())
    return out


# --------------------------------------------------------------------------------------------
# Splits and the dataset writer
# --------------------------------------------------------------------------------------------


def all_combinations() -> list[tuple[str, str, str, str]]:
    return list(itertools.product(SOURCES, PITCH_RANGES_HZ, COUNTS, ENVELOPES))


def split_combinations(
    seed: int, heldout_fraction: float = 0.12
) -> tuple[list[tuple[str, ...]], list[tuple[str, ...]]]:
    """(seen, held_out) attribute combinations. Every single value stays among the seen ones."""
    if not 0 < heldout_fraction < 0.5:
        raise ValueError(f"heldout_fraction must be in (0, 0.5), got {heldout_fraction}")
    combos = all_combinations()
    rng = np.random.default_rng([seed, 7919])
    order = rng.permutation(len(combos))
    n_held = max(1, int(round(heldout_fraction * len(combos))))
    held = [combos[i] for i in order[:n_held]]
    seen = [combos[i] for i in order[n_held:]]
    for pos, values in enumerate((SOURCES, PITCH_RANGES_HZ, COUNTS, ENVELOPES)):
        missing = set(values) - {c[pos] for c in seen}
        if missing:  # cannot happen at fractions < 0.5 with this grammar, but never assume it
            raise RuntimeError(f"held-out split removed every clip with {missing}")
    return seen, held


@dataclass(frozen=True)
class SynthCapsConfig:
    """Sizes and ranges of a generated SynthCaps set."""

    train: int = 2400
    val: int = 200
    test: int = 400
    min_seconds: float = 1.0
    max_seconds: float = 6.0
    captions_per_clip: int = 3
    background: float = 0.003
    heldout_fraction: float = 0.12
    seed: int = 0
    sample_rate: int = SAMPLE_RATE
    # Render every clip's events with this envelope while its attributes and captions keep the
    # stated one: the same clips (every draw is the same) with the level's course hidden, for
    # `PretrainModule(history_cache)` (docs/model.md "A history that hides the level").
    render_envelope: str | None = None

    def __post_init__(self) -> None:
        if self.render_envelope is not None and self.render_envelope not in ENVELOPES:
            raise ValueError(
                f"render_envelope {self.render_envelope!r} is not one of {list(ENVELOPES)}"
            )
        if min(self.train, self.val, self.test) < 0:
            raise ValueError("split sizes must be >= 0")
        if not 0 < self.min_seconds <= self.max_seconds:
            raise ValueError(
                f"need 0 < min_seconds <= max_seconds, got {self.min_seconds}, {self.max_seconds}"
            )
        if self.captions_per_clip < 1:
            raise ValueError("captions_per_clip must be >= 1")


SPLIT_INDEX = {"train": 0, "val": 1, "test": 2}


def _make_clip(job: tuple[SynthCapsConfig, str, int, tuple[str, ...], Path]) -> Clip:
    cfg, split, index, combo, out_dir = job
    rng = np.random.default_rng([cfg.seed, SPLIT_INDEX[split], index])
    attrs = dict(zip(ATTRIBUTES, combo, strict=True))
    duration = float(rng.uniform(cfg.min_seconds, cfg.max_seconds))
    rendered = attrs if cfg.render_envelope is None else {**attrs, "envelope": cfg.render_envelope}
    audio, f = synthesize(
        rendered, duration, rng, sample_rate=cfg.sample_rate, background=cfg.background
    )
    captions: list[str] = []
    for _ in range(20 * cfg.captions_per_clip):  # distinct phrasings; the grammar has plenty
        c = make_caption(attrs, rng)
        if c not in captions:
            captions.append(c)
        if len(captions) == cfg.captions_per_clip:
            break
    clip_id = f"synthcaps-{split}-{index:05d}"
    path = out_dir / "audio" / split / f"{clip_id}.wav"
    write_audio(path, audio, cfg.sample_rate)
    return Clip(
        id=clip_id,
        audio=path,
        captions=captions,
        duration=audio.size / cfg.sample_rate,
        split=split,
        attributes={**attrs, "frequency_hz": round(f, 2)},
    )


def generate(
    out_dir: str | Path, config: SynthCapsConfig | None = None, workers: int | None = None
) -> dict[str, Path]:
    """Writes `{train,val,test}.jsonl` and their WAVs under out_dir. Returns manifest paths."""
    cfg = config or SynthCapsConfig()
    out_dir = Path(out_dir).resolve()
    seen, held = split_combinations(cfg.seed, cfg.heldout_fraction)
    jobs = []
    for split, n in (("train", cfg.train), ("val", cfg.val), ("test", cfg.test)):
        pool = held if split == "test" else seen
        pick = np.random.default_rng([cfg.seed, 31, SPLIT_INDEX[split]]).integers(len(pool), size=n)
        jobs += [(cfg, split, i, pool[j], out_dir) for i, j in enumerate(pick)]
    workers = workers or min(4, os.cpu_count() or 1)
    bar = dict(total=len(jobs), desc="SynthCaps", unit="clip")
    if workers > 1:
        with ProcessPoolExecutor(workers) as ex:
            clips = list(tqdm(ex.map(_make_clip, jobs, chunksize=32), **bar))
    else:
        clips = [_make_clip(job) for job in tqdm(jobs, **bar)]
    paths = {}
    for split in ("train", "val", "test"):
        paths[split] = out_dir / f"{split}.jsonl"
        write_manifest(paths[split], [c for c in clips if c.split == split])
    return paths
