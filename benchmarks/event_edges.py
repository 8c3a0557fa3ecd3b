"""Do a model's events end? Issue 23's count diagnosis, on a SynthCaps clean model.

Three measurements, each printed as a table:

1. **edges** (teacher forced, `--codes`): codebook 0's cross-entropy and the probability the LM
   puts on the silence codes, at the frames around each event's end (offset 0: the first
   silence-code frame after at least 5 sounding ones; click sources left out, their gaps are
   inside an event) and each onset (offset 0: the first sounding frame). A model that ends
   events from the caption and the timing predicts the last sounding frame (offset -1, which
   holds the event's fade-out edge); one that ends them from that edge alone is surprised at
   -1 and sure at 0.
2. **transition gaps** (teacher forced): per judged attribute, CE under a caption with that
   attribute's words swapped minus under the own wording (`attribute_captions`), on the
   transition frames of `PretrainModule(transition_weight)` (`transition_weights`, here with
   `--frames` frames each side) and on the rest, codebook 0 and the mean of all.
3. **segments** (`--generations`, a folder of `siren adherence` WAVs with its
   adherence.jsonl): the sounding segments (as `measure_attributes` finds them, in fractions of
   the clip) of the generations beside those of the originals, for `--count` captions, and the
   share of generations whose last segment runs into the clip's last 5%.

4. **sampled silence** (`--sampled N`): generates the first N test captions of once / twice /
   three times (no clicks) at their clips' own lengths, recording the probability the sampler
   gives the silence codes at every codebook-0 draw (after guidance, temperature and top-k).
   A hole is a silent run between sounding frames where the original sounds for at least half
   of it; printed are the share of clips with one, the median probability of silence at a
   hole's first frame and over the 5 frames before it, and the mean probability of silence
   while the generation sounds after the original's last event has ended (a model that knows
   its events end puts much there). `--teacher-forced 0` skips 1 and 2.

    PYTHONPATH=src python benchmarks/event_edges.py --model assets/siren_tiny_clean \\
        --manifest data/synthcaps_clean/test.jsonl --codes data/synthcaps_clean/codes_litdata/test \\
        --limit 120 --generations runs/eval/X/seed0 --count once
"""

from __future__ import annotations

import argparse
import collections
import json
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
import torch.nn.functional as F

from siren_lightning.codec.silence import silence_codes
from siren_lightning.data.code_cache import CodeCache
from siren_lightning.data.manifest import read_manifest
from siren_lightning.data.synthcaps import _frame_rms, _segments
from siren_lightning.generate import load_generation_stack
from siren_lightning.generation_config import model_sampling
from siren_lightning.metrics.adherence import attribute_captions
from siren_lightning.models.sampling import generate_for_captions
from siren_lightning.stages.pretrain import transition_weights

ROWS = ("own", "pitch", "count", "envelope", "empty")


@torch.no_grad()
def per_frame_ce(
    model, encoder, codes: torch.Tensor, captions: list[str]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Teacher-forced CE [B, n, T] of padded `codes` [B, r, T] (whole clips, padding -1) and
    codebook 0's log-probabilities [B, T, K]."""
    mask = codes[:, 0] >= 0
    x = codes.clamp_min(0)
    text = encoder.encode(captions)
    out = model(x, text.states, text.mask, mask, total_frames=mask.sum(1))
    targets = x[:, out.codebooks]
    ce = F.cross_entropy(out.logits.float().flatten(0, 2), targets.flatten(), reduction="none")
    return ce.view(targets.shape), out.logits[:, 0].float().log_softmax(-1)


def edges(model, encoder, clips, cache, silent: set[int]) -> dict:
    ends, onsets = collections.defaultdict(list), collections.defaultdict(list)
    sil = sorted(silent)
    for clip in clips:
        x = cache[clip.id][None]
        ce, logp = per_frame_ce(model, encoder, x, [clip.captions[0]])
        p_sil = logp[0][:, sil].exp().sum(-1)  # [T]
        cb0, t_len = x[0, 0].tolist(), x.shape[-1]
        run = 0
        for t in range(1, t_len):
            run = run + 1 if cb0[t - 1] not in silent else 0
            if clip.attributes["source"] != "clicks" and cb0[t] in silent and run >= 5:
                for d in range(-3, 3):
                    if 0 <= t + d < t_len:
                        ends[d].append((float(ce[0, 0, t + d]), float(p_sil[t + d])))
            if cb0[t] not in silent and cb0[t - 1] in silent:
                for d in range(-2, 3):
                    if 0 <= t + d < t_len:
                        onsets[d].append((float(ce[0, 0, t + d]), float(p_sil[t + d])))
    table = {}
    for name, rows in (("end", ends), ("onset", onsets)):
        table[name] = {
            d: {
                "n": len(v),
                "ce_cb0": float(np.mean([a for a, _ in v])),
                "p_silence": float(np.mean([b for _, b in v])),
            }
            for d, v in sorted(rows.items())
        }
    return table


def transition_gaps(model, encoder, clips, cache, silent, frames: int, batch: int = 16) -> dict:
    captions = attribute_captions([c.attributes for c in clips], 0)
    parts = {row: {k: [] for k in ("tr0", "rest0", "trA", "restA")} for row in ROWS}
    for start in range(0, len(clips), batch):
        chunk = clips[start : start + batch]
        t_max = max(cache[c.id].shape[-1] for c in chunk)
        x = torch.full((len(chunk), cache[chunk[0].id].shape[0], t_max), -1, dtype=torch.long)
        for b, c in enumerate(chunk):
            x[b, :, : cache[c.id].shape[-1]] = cache[c.id]
        mask = x[:, 0] >= 0
        window = transition_weights(x.clamp_min(0), mask, sorted(silent), 2.0, frames) > 1.5
        for row in ROWS:
            ce, _ = per_frame_ce(
                model, encoder, x, [captions[row][start + b] for b in range(len(chunk))]
            )
            for b in range(len(chunk)):
                tr, rest = window[b] & mask[b], mask[b] & ~window[b]
                parts[row]["tr0"].append(ce[b, 0][tr])
                parts[row]["rest0"].append(ce[b, 0][rest])
                parts[row]["trA"].append(ce[b].mean(0)[tr])
                parts[row]["restA"].append(ce[b].mean(0)[rest])
    cat = {row: {k: torch.cat(v) for k, v in d.items()} for row, d in parts.items()}
    out = {"frames": {"transition": len(cat["own"]["tr0"]), "rest": len(cat["own"]["rest0"])}}
    for row in ROWS[1:]:
        out[row] = {k: float((cat[row][k] - cat["own"][k]).mean()) for k in cat[row]}
    return out


def segments(generations: Path, manifest: str, count: str, show: int) -> dict:
    by_id = {c.id: c for c in read_manifest(manifest)}
    root = Path(manifest).parent
    lines, run_on, real_run_on, total = [], 0, 0, 0
    for line in (generations / "adherence.jsonl").read_text().splitlines():
        clip = by_id[json.loads(line)["id"]]
        if clip.attributes["count"] != count:
            continue
        spans = []
        for path in (generations / f"{clip.id}.wav", root / clip.audio):
            audio, sr = sf.read(path, dtype="float64")
            env = _frame_rms(audio, sr)
            segs = _segments(env, 0.01)
            spans.append([(s / len(env), e / len(env)) for s, e in segs])
        total += 1
        run_on += bool(spans[0]) and spans[0][-1][1] >= 0.95
        real_run_on += bool(spans[1]) and spans[1][-1][1] >= 0.95
        if len(lines) < show:
            fmt = lambda ss: " ".join(f"{s:.2f}-{e:.2f}" for s, e in ss) or "-"  # noqa: E731
            lines.append(
                f"{clip.duration:4.1f}s  generated {fmt(spans[0]):34s} real {fmt(spans[1])}"
            )
    n = max(total, 1)
    return {
        "clips": total,
        "run_to_end": run_on / n,
        "real_run_to_end": real_run_on / n,
        "examples": lines,
    }


class SilenceRecorder:
    """Wraps a Siren sampler: each codebook-0 draw's probability of the silence codes [N]."""

    def __init__(self, sampler, silent: list[int], r: int) -> None:
        self.sampler, self.silent, self.r, self.calls, self.p = sampler, silent, r, 0, []

    def __call__(self, logits: torch.Tensor) -> torch.Tensor:
        if self.calls % self.r == 0:  # Siren calls its sampler once per codebook, in order
            self.p.append(self.sampler.probabilities(logits)[:, self.silent].sum(-1))
        self.calls += 1
        return self.sampler(logits)


def _runs(flags: list[bool]) -> list[tuple[bool, int, int]]:
    out, i = [], 0
    while i < len(flags):
        j = i
        while j < len(flags) and flags[j] == flags[i]:
            j += 1
        out.append((flags[i], i, j))
        i = j
    return out


@torch.no_grad()
def sampled_silence(
    model, encoder, clips, cache, silent: set[int], settings: dict, seed: int, batch: int = 25
) -> dict:
    sil, r = sorted(silent), model.config.num_codebooks
    hole_p, before, tail_p, with_hole, sounding_p = [], [], [], 0, []
    for start in range(0, len(clips), batch):
        part = clips[start : start + batch]
        lengths = [cache[c.id].shape[-1] for c in part]
        rec = {}

        def wrap(sampler, rec=rec):
            rec["r"] = SilenceRecorder(sampler, sil, r)
            return rec["r"]

        codes = generate_for_captions(
            model, encoder, [c.captions[0] for c in part], max(lengths),
            total_frames=torch.tensor(lengths), generator=torch.Generator().manual_seed(seed),
            wrap_sampler=wrap, **settings,
        )  # fmt: skip
        p_sil = torch.stack(rec["r"].p, 1)  # [B, T]
        for b, clip in enumerate(part):
            n = lengths[b]
            gen = np.isin(codes[b, 0, :n].numpy(), sil)
            real = np.isin(cache[clip.id][0].numpy(), sil)
            p = p_sil[b, :n].numpy()
            sounding_p += list(p[1:][~gen[:-1]])
            runs = _runs(gen.tolist())
            holes = 0
            for k, (is_silent, a, e) in enumerate(runs):
                if is_silent and 0 < k < len(runs) - 1 and (1 - real[a:e].mean()) >= 0.5:
                    holes += 1
                    hole_p.append(p[a])
                    before.append(p[max(a - 5, 0) : a].mean())
            with_hole += holes > 0
            last_sound = np.flatnonzero(~real)
            if last_sound.size:  # after the original's last event: P(silence) while sounding
                t = np.arange(1, n)
                after = (t > last_sound[-1] + 1) & ~gen[:-1]
                tail_p += list(p[1:][after])
    return {
        "clips": len(clips),
        "clips_with_hole": with_hole / max(len(clips), 1),
        "holes": len(hole_p),
        "p_silence_at_hole_start_median": float(np.median(hole_p)) if hole_p else None,
        "p_silence_5_before_hole_median": float(np.median(before)) if before else None,
        "p_silence_while_sounding_mean": float(np.mean(sounding_p)),
        "p_silence_after_real_end_mean": float(np.mean(tail_p)) if tail_p else None,
        "sounding_frames_after_real_end": len(tail_p),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--model", required=True)
    p.add_argument("--manifest", required=True)
    p.add_argument("--codes", required=True)
    p.add_argument("--limit", type=int, default=120)
    p.add_argument("--frames", type=int, default=2, help="transition window half-width")
    p.add_argument("--generations", type=Path, help="a seed folder of `siren adherence`")
    p.add_argument("--count", default="once")
    p.add_argument("--show", type=int, default=10)
    p.add_argument("--sampled", type=int, default=0, help="clips for measurement 4 (0: off)")
    p.add_argument("--seed", type=int, default=0, help="sampling seed of measurement 4")
    p.add_argument("--teacher-forced", type=int, default=1, help="0 skips measurements 1-2")
    p.add_argument("--out", type=Path)
    args = p.parse_args()
    torch.set_num_threads(1)
    model, codec, encoder = load_generation_stack(args.model)
    silent = set(silence_codes(codec))
    manifest = read_manifest(args.manifest)
    clips = manifest[: args.limit]
    codes = CodeCache(args.codes)
    cache = codes.codes_of([c.id for c in clips])
    report = {"silence_codes": sorted(silent)}
    if args.sampled:
        judged = [
            c
            for c in manifest
            if c.captions
            and c.attributes["count"] in ("once", "twice", "three_times")
            and c.attributes["source"] != "clicks"
        ][: args.sampled]
        held = codes.codes_of([c.id for c in judged])
        settings = model_sampling(args.model, "event_edges").values
        s = sampled_silence(model, encoder, judged, held, silent, settings, args.seed)
        report["sampled_silence"] = s
        print(
            f"sampled ({s['clips']} clips, seed {args.seed}): clips with a hole "
            f"{s['clips_with_hole']:.2f} ({s['holes']} holes); P(silence) at a hole's first "
            f"frame, median {s['p_silence_at_hole_start_median']:.2f}, over the 5 before "
            f"{s['p_silence_5_before_hole_median']:.2f}; while sounding "
            f"{s['p_silence_while_sounding_mean']:.4f}, after the original's last event "
            f"{s['p_silence_after_real_end_mean']:.3f} ({s['sounding_frames_after_real_end']} "
            "frames)"
        )
    if not args.teacher_forced:
        if args.out:
            args.out.write_text(json.dumps(report, indent=2) + "\n")
        return
    report["edges"] = edges(model, encoder, clips, cache, silent)
    for name, rows in report["edges"].items():
        print(f"{name}: offset  frames  CE cb0  P(silence codes)")
        for d, v in rows.items():
            print(f"  {d:+d}  {v['n']:5d}  {v['ce_cb0']:.2f}  {v['p_silence']:.2f}")
    report["transition_gaps"] = transition_gaps(model, encoder, clips, cache, silent, args.frames)
    g = report["transition_gaps"]
    print(
        f"attribute gaps (nats), {g['frames']['transition']} transition frames, "
        f"{g['frames']['rest']} others: cb0 transition / rest, mean of 12 transition / rest"
    )
    for row in ROWS[1:]:
        v = g[row]
        print(f"  {row:9s} {v['tr0']:+.3f} {v['rest0']:+.3f}   {v['trA']:+.3f} {v['restA']:+.3f}")
    if args.generations:
        report["segments"] = segments(args.generations, args.manifest, args.count, args.show)
        s = report["segments"]
        print(
            f"'{args.count}' clips whose last segment reaches the clip's last 5%: generated "
            f"{s['run_to_end']:.2f}, originals {s['real_run_to_end']:.2f} (of {s['clips']})"
        )
        print("\n".join(s["examples"]))
    if args.out:
        args.out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
