"""`siren generate`: captions -> WAV files with an exported LM (Siren or the delay baseline).

`siren generate --model DIR --captions "a high beep twice" ... --out OUT` (or `--captions-file F`,
one caption a line) writes `OUT/<id>.wav` per caption and `OUT/generations.jsonl` with the id,
caption, path, seed and sampling settings of each. With `--manifest`, the id is the clip's id, so
`siren evaluate --generated OUT --reference MANIFEST` pairs each file with its reference; else
ids count from 00000. The model folder comes from `siren export`;
its sidecar names the codec and the text encoder, both overridable on the command line. The
sampling flags not given come from the model's `generation.json` (`generation_config`), else
`DEFAULT_SAMPLING`; the settings in effect are printed with where each came from.
`--negative-caption TEXT` replaces the empty caption in the unconditional branch of
classifier-free guidance (what to steer away from).

From audio (issue 18; `editing` documents the methods):
- `--prompt-audio CLIP [--prompt-seconds S]`: each clip starts with the codec's codes of CLIP (or
  of its first S seconds) and continues it; the WAV is prompt + continuation, `--seconds` long.
- `--infill CLIP --span A B`: regenerates seconds [A, B) of CLIP from the audio before it,
  keeping the best of `--candidates` under the model's likelihood of the audio after it.
- `--seconds` past `--window-seconds` (default 6, the training crops): a sliding window that
  re-prompts each window with the last `--context-seconds` of audio.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

import torch

from siren_lightning.codec.base import seconds_to_samples
from siren_lightning.data.loudness import GUIDANCE_CURVES, control_arguments, guidance_curve
from siren_lightning.data.manifest import check_file_ids
from siren_lightning.editing import encode_prompt, generate_long, infill
from siren_lightning.models.delay_lm import DelayPatternLM
from siren_lightning.models.sampling import encode_captions, generate, resolve_sampling
from siren_lightning.models.siren import SirenLM
from siren_lightning.text.encoder import TextEncoder

# Long generation: clips past WINDOW_SECONDS (the training crops, 300 frames) are made by a
# sliding window that re-reads the last CONTEXT_SECONDS (`siren generate` and `siren demo`).
WINDOW_SECONDS = 6.0
CONTEXT_SECONDS = 2.0


def _load_codec(spec: str) -> Any:
    from siren_lightning.codec.checkpoint import load_codec

    return load_codec(spec)


def _file_seconds(path: str | Path) -> float:
    import soundfile as sf

    info = sf.info(str(path))
    return info.frames / info.samplerate


def generate_audio(
    model: SirenLM | DelayPatternLM,
    text_encoder: Any,
    codec: Any,
    captions: list[str],
    out: str | Path,
    *,
    seconds: float | list[float] = 5.0,
    seed: int = 0,
    batch_size: int = 8,
    sampling: dict[str, Any] | None = None,
    ids: list[str] | None = None,
    negative_captions: str | list[str] | None = None,
    prompt_codes: torch.Tensor | None = None,
    window_seconds: float | None = None,
    context_seconds: float = CONTEXT_SECONDS,
    controls: list[torch.Tensor] | None = None,
    control_guidance: str | None = None,
    control_scale: float = 0.0,
    control_source: str | None = None,
) -> list[dict[str, Any]]:
    """Generate one clip per caption, write WAVs and `generations.jsonl`.

    Args:
        model: an eval-mode `SirenLM` or `DelayPatternLM` on the device of `text_encoder` and `codec`.
        text_encoder: `encode(captions) -> TextStates`.
        codec: `decode(codes [B, r, T]) -> audio [B, 1, N]`, `sample_rate`, `hop_length`.
        seconds: length of every clip, or one length per caption (a batch is generated to its
            longest and each clip cut to its own length).
        seed: seeds one `torch.Generator` for the whole run (same seed and batch size: same audio).
        sampling: `temperature`, `top_k`, `top_p`, `cfg_scale` for `models.sampling.generate`
            (`DEFAULT_SAMPLING` for those not given; `siren generate` passes the model's own,
            `generation_config.model_sampling`).
        ids: one file name (without .wav) per caption, e.g. manifest clip ids; default
            00000, 00001, ...
        negative_captions: the unconditional branch's caption, for every clip or one per
            caption (None or "": the empty caption).
        prompt_codes: [1, r, P] codes every clip starts with (`editing.encode_prompt`): the
            clips continue them, and the WAVs hold them (P frames shorter than every clip).
        window_seconds: a batch longer than this is made by `editing.generate_long` (windows
            of this length re-prompted with the last `context_seconds`); None: one pass.
        controls: one per-frame control curve [T_i, C] per caption, for LMs with
            `control_dim` > 0 (e.g. `siren loudness` curves); each is zero-padded or cut to its
            batch's frames.
        control_guidance, control_scale: with a scale != 0, the draws also move towards each
            curve and away from its `guidance_curve` of this kind ("flat", "steady",
            "reversed"), by ``control_scale * (cond - contrast)`` (`contrast_control`).
        control_source: where the curves came from (e.g. the planner), recorded as `control`.

    Returns:
        the records written to `generations.jsonl`.
    """
    import soundfile as sf

    ids = [f"{i:05d}" for i in range(len(captions))] if ids is None else [str(i) for i in ids]
    if len(ids) != len(captions):
        raise ValueError(f"generate_audio: {len(ids)} ids for {len(captions)} captions")
    check_file_ids(ids, "generate_audio")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    sampling = resolve_sampling("generate_audio", sampling).values
    lengths = [seconds] * len(captions) if isinstance(seconds, int | float) else list(seconds)
    if len(lengths) != len(captions) or min(lengths, default=1.0) <= 0:
        raise ValueError(f"generate_audio: need one positive length per caption, got {lengths}")
    samples = [seconds_to_samples(s, codec.sample_rate) for s in lengths]
    negatives = (
        [negative_captions or ""] * len(captions)
        if negative_captions is None or isinstance(negative_captions, str)
        else list(negative_captions)
    )
    if len(negatives) != len(captions):
        raise ValueError(
            f"generate_audio: {len(negatives)} negative captions for {len(captions)} captions"
        )
    device = model.codebook_table.device
    generator = torch.Generator(device=device).manual_seed(seed)
    shortest = min(math.ceil(n / codec.hop_length) for n in samples)
    given = 0 if prompt_codes is None else prompt_codes.shape[-1]
    if given >= shortest:
        prompt_seconds = given * codec.hop_length / codec.sample_rate
        raise ValueError(
            f"generate_audio: the prompt ({given} frames, {prompt_seconds:.2f} s) is not "
            f"shorter than the output ({shortest} frames): ask for more --seconds"
        )
    if controls is not None and len(controls) != len(captions):
        raise ValueError(
            f"generate_audio: {len(controls)} control curves for {len(captions)} captions"
        )
    if control_scale != 0:
        if controls is None or control_guidance is None:
            raise ValueError(
                "generate_audio: control_scale != 0 needs control curves and control_guidance"
            )
        guidance_curve(controls[0][:1], control_guidance)  # an unknown kind fails here
    window = None
    if window_seconds is not None:
        window = math.ceil(seconds_to_samples(window_seconds, codec.sample_rate) / codec.hop_length)
        context = math.ceil(
            seconds_to_samples(context_seconds, codec.sample_rate) / codec.hop_length
        )
    records = []
    for start in range(0, len(captions), batch_size):
        batch = captions[start : start + batch_size]
        clip_frames = [math.ceil(n / codec.hop_length) for n in samples[start : start + batch_size]]
        frames = max(clip_frames)
        text = encode_captions(text_encoder, batch, negatives[start : start + batch_size])
        prompt = (
            None if prompt_codes is None else prompt_codes.to(device).expand(len(batch), -1, -1)
        )
        control: dict[str, Any] = {}
        if controls is not None:
            batch_curves = controls[start : start + batch_size]
            control = control_arguments(
                batch_curves, frames, control_scale, control_guidance, device
            )
        if window is not None and frames > window:
            codes = generate_long(
                model,
                num_frames=frames,
                window=window,
                context=context,
                prompt_codes=prompt,
                generator=generator,
                **control,
                **text,
                **sampling,
            )  # [B, r, T]
        else:
            codes = generate(
                model,
                num_frames=frames,
                prompt_codes=prompt,
                generator=generator,
                total_frames=torch.tensor(clip_frames, device=device),
                **control,
                **text,
                **sampling,
            )  # [B, r, T]
        with torch.no_grad():
            audio = codec.decode(codes).float().cpu()  # [B, 1, N]
        for i, caption in enumerate(batch):
            clip_id = ids[start + i]
            path = out / f"{clip_id}.wav"
            clip = (
                audio[i, 0]
                if isinstance(seconds, int | float)
                else audio[i, 0, : samples[start + i]]
            )
            sf.write(str(path), clip.numpy(), codec.sample_rate, subtype="PCM_16")
            records.append(
                {
                    "id": clip_id,
                    "caption": caption,
                    "negative_caption": negatives[start + i],
                    "path": str(path.resolve()),
                    "seed": seed,
                    "batch_size": batch_size,
                    "frames": frames,
                    "samples": int(clip.numel()),
                    "sample_rate": codec.sample_rate,
                    "prompt_frames": given,
                    "window_frames": window if window is not None and frames > window else None,
                    "control": control_source if controls is not None else None,
                    "control_guidance": control_guidance if control_scale != 0 else None,
                    "control_scale": control_scale,
                    **sampling,
                }
            )
    _write_records(out, records)
    return records


def _write_records(out: Path, records: list[dict[str, Any]]) -> None:
    with open(out / "generations.jsonl", "w") as f:
        for record in records:
            f.write(json.dumps(record) + "\n")


def infill_audio(
    model: SirenLM | DelayPatternLM,
    text_encoder: Any,
    codec: Any,
    caption: str,
    clip: str | Path,
    span: tuple[float, float],
    out: str | Path,
    *,
    candidates: int = 8,
    seed: int = 0,
    sampling: dict[str, Any] | None = None,
    negative_caption: str = "",
    plan: Any = None,
) -> dict[str, Any]:
    """Regenerate seconds [A, B) of a clip (`editing.infill`), write `infill.wav` and its record.

    The clip is read at the codec's rate (resampled if need be) and encoded; the WAV is the
    codec's decoding of the edited codes, as long as the clip.

    Args:
        plan: a `stages.planner.CaptionPlan`, for an LM that follows a per-frame plan: the
            clip's own loudness (`frame_loudness`) outside the span, what it keeps, and the
            planner's curve for the caption at the clip's length inside it, what is remade.

    Returns:
        the record written to `generations.jsonl` (with every candidate's score).
    """
    import soundfile as sf

    out = Path(out)
    sampling = resolve_sampling("infill_audio", sampling).values
    device = model.codebook_table.device
    codes = encode_prompt(codec, clip, device=device)  # [1, r, T]
    frames = codes.shape[-1]
    frame_seconds = codec.hop_length / codec.sample_rate
    a, b = span
    duration = frames * frame_seconds
    if not 0 <= a < b <= duration + 1e-9:
        raise ValueError(
            f"siren generate: --span {a:g} {b:g} must satisfy 0 <= A < B <= {duration:.2f} "
            f"(the clip's length in seconds)"
        )
    start, end = math.floor(a / frame_seconds), min(math.ceil(b / frame_seconds), frames)
    text = encode_captions(text_encoder, [caption], [negative_caption])
    generator = torch.Generator(device=device).manual_seed(seed)
    control: dict[str, Any] = {}
    if plan is not None:
        curve = infill_curve(plan, caption, clip, codec, frames, start, end)
        control = control_arguments([curve], frames, plan.scale, plan.guidance, device)
    result = infill(
        model,
        codes=codes,
        start=start,
        end=end,
        candidates=candidates,
        generator=generator,
        **control,
        **text,
        **sampling,
    )
    with torch.no_grad():
        audio = codec.decode(result.codes).float().cpu()[0, 0]
    out.mkdir(parents=True, exist_ok=True)
    path = out / "infill.wav"
    sf.write(str(path), audio.numpy(), codec.sample_rate, subtype="PCM_16")
    record = {
        "id": "infill",
        "caption": caption,
        "negative_caption": negative_caption,
        "path": str(path.resolve()),
        "infill": str(Path(clip).resolve()),
        "span_seconds": [a, b],
        "span_frames": [start, end],
        "candidates": candidates,
        "scores": [float(x) for x in result.scores[0]],
        "chosen": int(result.chosen[0]),
        "seed": seed,
        "frames": frames,
        "samples": int(audio.numel()),
        "sample_rate": codec.sample_rate,
        "control": plan.source if plan is not None else None,
        "control_scale": plan.scale if plan is not None else 0.0,
        **sampling,
    }
    _write_records(out, [record])
    return record


def infill_curve(
    plan: Any, caption: str, clip: str | Path, codec: Any, frames: int, start: int, end: int
) -> torch.Tensor:
    """The per-frame plan [T, 1] an infill reads: the clip's own loudness, with the planner's
    curve for the caption (at the clip's T frames) over the span [start, end)."""
    from siren_lightning.data.audio import load_audio
    from siren_lightning.data.loudness import frame_loudness

    audio = load_audio(clip, codec.sample_rate, allow_silent=True).numpy()
    measured = torch.from_numpy(frame_loudness(audio, codec.hop_length))[:frames]
    curve = torch.zeros(frames)
    curve[: measured.numel()] = measured
    curve[start:end] = plan.curves([caption], [frames])[0][start:end, 0]
    return curve[:, None]


def load_generation_stack(
    model_dir: str | Path,
    device: str = "cpu",
    codec: str | None = None,
    text_encoder: str | None = None,
) -> tuple[SirenLM | DelayPatternLM, Any, TextEncoder]:
    """An exported LM (eval mode) with the codec and text encoder its sidecar names.

    Args:
        codec: codec spec overriding the sidecar's; text_encoder: local text-encoder folder.

    Raises:
        ExportError: the folder is not an export; ValueError: no codec, or another codec than
            the one the model was trained with.
    """
    from siren_lightning.export import exported_codec, load_lm

    model, sidecar = load_lm(model_dir, device=device, who="siren generate")
    codec_spec = codec or exported_codec(sidecar, model_dir)
    if not codec_spec:
        raise ValueError(f"{model_dir}/siren.json names no codec; pass --codec")
    codec_model = _load_codec(codec_spec).to(device).eval()
    expected = sidecar.get("codec_sha256")
    if expected and hasattr(codec_model, "sha256") and codec_model.sha256() != expected:
        raise ValueError(
            f"codec {codec_spec} has SHA-256 {codec_model.sha256()} but the model was trained "
            f"with {expected}"
        )
    text_info = sidecar.get("text_encoder") or {}
    encoder = TextEncoder(
        text_info.get("backend", "minilm"),
        text_encoder or text_info.get("name_or_path"),
        max_length=text_info.get("max_length") or 64,
    ).to(device)
    return model, codec_model, encoder


def main(argv: list[str]) -> int:
    """Generate audio from captions with a model folder written by `siren export`."""
    from siren_lightning.export import ExportError
    from siren_lightning.generation_config import (
        add_sampling_flags,
        given_sampling,
        model_plan,
        model_sampling,
        resolve_control,
    )

    p = argparse.ArgumentParser(prog="siren generate", description=main.__doc__)
    p.add_argument("--model", required=True, help="folder written by `siren export`")
    group = p.add_mutually_exclusive_group(required=True)
    group.add_argument("--captions", nargs="+", help="captions to generate")
    group.add_argument("--captions-file", help="text file, one caption a line")
    group.add_argument("--manifest", help="JSONL manifest: the first caption of each clip")
    p.add_argument("--limit", type=int, default=None, help="at most this many captions")
    p.add_argument("--out", required=True, help="output folder for WAVs and generations.jsonl")
    p.add_argument("--codec", help="codec spec (folder, .ckpt, dac:16khz); default: the sidecar's")
    p.add_argument(
        "--text-encoder", help="local folder of the text encoder; default: the sidecar's"
    )
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument(
        "--match-durations",
        action="store_true",
        help="with --manifest: each clip as long as its reference (the manifest's duration, else "
        "the audio file's), as `siren test` generates",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=8)
    add_sampling_flags(p)
    p.add_argument(
        "--negative-caption",
        default="",
        help="caption of guidance's unconditional branch, for every clip (default: the empty "
        "caption); needs --cfg-scale != 1",
    )
    p.add_argument(
        "--prompt-audio", help="audio file every clip starts with and continues (continuation)"
    )
    p.add_argument(
        "--prompt-seconds", type=float, help="with --prompt-audio: its first S seconds only"
    )
    p.add_argument("--infill", help="audio file whose --span is regenerated (one caption)")
    p.add_argument(
        "--span", type=float, nargs=2, metavar=("A", "B"), help="with --infill: seconds [A, B)"
    )
    p.add_argument(
        "--candidates",
        type=int,
        default=8,
        help="with --infill: spans sampled, the one under which the model finds the audio "
        "after the span most likely is kept (default: %(default)s; 1: naive continuation)",
    )
    p.add_argument(
        "--window-seconds",
        type=float,
        default=WINDOW_SECONDS,
        help="clips longer than this are made by a sliding window of this length (the "
        "training crops; default: %(default)s; 0: one pass however long)",
    )
    p.add_argument(
        "--context-seconds",
        type=float,
        default=CONTEXT_SECONDS,
        help="audio each window after the first is prompted with (default: %(default)s)",
    )
    p.add_argument(
        "--planner",
        help="PlannerModule checkpoint (`experiments/planner_tiny_clean.yaml`): plans every "
        "clip's per-frame loudness from its caption and length, and the LM (control_dim 1) "
        "follows the plan (default: the planner the model's generation.json names, if any)",
    )
    add_control_guidance_flags(p, "--planner")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = p.parse_args(argv)
    # Nonsense values (given or in the model's generation.json) fail here, before the model loads.
    sampling = model_sampling(args.model, "siren generate", given_sampling(args))
    for name, value in (("--limit", args.limit), ("--batch-size", args.batch_size)):
        if value is not None and value < 1:
            raise ValueError(f"siren generate: {name} must be >= 1, got {value}")
    if not args.seconds > 0:
        raise ValueError(f"siren generate: --seconds must be positive, got {args.seconds}")
    if args.negative_caption and sampling.values["cfg_scale"] == 1.0:
        raise ValueError(
            "siren generate: --negative-caption enters through guidance; cfg_scale 1 (--cfg-scale "
            "or the model's generation.json) turns guidance off"
        )

    _check_editing_arguments(args)
    plan = None if args.planner else model_plan(args.model)
    if plan is not None:
        args.planner = str(plan.planner)
    control_scale, control_guidance = resolve_control(args, plan)
    if control_scale and not args.planner:
        raise ValueError("siren generate: --control-scale needs --planner")

    ids, seconds = None, args.seconds
    if args.match_durations and not args.manifest:
        print("siren generate: --match-durations needs --manifest")
        return 2
    if args.captions_file:
        lines = Path(args.captions_file).read_text().splitlines()
        captions = [line.strip() for line in lines if line.strip()]
    elif args.manifest:
        from siren_lightning.data.manifest import read_manifest

        clips = [clip for clip in read_manifest(args.manifest) if clip.captions]
        captions, ids = [c.captions[0] for c in clips], [c.id for c in clips]
        if args.match_durations:
            seconds = [c.duration or _file_seconds(c.audio) for c in clips]
    else:
        captions = args.captions
    if args.limit is not None:
        captions = captions[: args.limit]
        ids = ids[: args.limit] if ids is not None else None
        seconds = seconds[: args.limit] if isinstance(seconds, list) else seconds
    if not captions:
        print("siren generate: no captions given")
        return 2
    try:
        model, codec, text_encoder = load_generation_stack(
            args.model, args.device, codec=args.codec, text_encoder=args.text_encoder
        )
    except (ExportError, ValueError) as err:
        print(f"siren generate: {err}")
        return 1
    print(sampling.describe())
    try:
        if args.infill:
            caption_plan = None
            if args.planner:
                from siren_lightning.stages.planner import CaptionPlan

                caption_plan = CaptionPlan.load(
                    args.planner, text_encoder, control_scale, control_guidance, args.device
                )
            record = infill_audio(
                model,
                text_encoder,
                codec,
                captions[0],
                args.infill,
                tuple(args.span),
                args.out,
                candidates=args.candidates,
                seed=args.seed,
                sampling=sampling.values,
                negative_caption=args.negative_caption,
                plan=caption_plan,
            )
            print(f"wrote {record['path']} (candidate {record['chosen']} of {args.candidates})")
            return 0
        prompt = None
        if args.prompt_audio:
            prompt = encode_prompt(codec, args.prompt_audio, args.prompt_seconds, args.device)
        controls = None
        if args.planner:
            if plan is not None:
                print(
                    f"plan: {args.planner} (the model's generation.json), control_scale "
                    f"{control_scale:g}, control_guidance {control_guidance}"
                )
            controls = planned_controls(
                args.planner, text_encoder, captions, seconds, codec, args.device
            )
        records = generate_audio(
            model,
            text_encoder,
            codec,
            captions,
            args.out,
            seconds=seconds,
            seed=args.seed,
            batch_size=args.batch_size,
            sampling=sampling.values,
            ids=ids,
            negative_captions=args.negative_caption,
            prompt_codes=prompt,
            window_seconds=args.window_seconds or None,
            context_seconds=args.context_seconds,
            controls=controls,
            control_guidance=control_guidance,
            control_scale=control_scale,
            control_source=args.planner,
        )
    except ValueError as err:  # AudioError included: a missing or unreadable file
        print(f"siren generate: {err}")
        return 2
    print(f"wrote {len(records)} WAVs and {Path(args.out) / 'generations.jsonl'}")
    return 0


def add_control_guidance_flags(parser: argparse.ArgumentParser, curves_flag: str) -> None:
    """`--control-scale` and `--control-guidance` (`siren generate`, `siren adherence`)."""
    parser.add_argument(
        "--control-scale",
        type=float,
        default=None,
        help=f"with {curves_flag} or a model whose generation.json names a plan: draws also "
        "move towards each curve and away from a copy of it (--control-guidance) by this weight "
        "(default: the model's plan's, else 0: off)",
    )
    parser.add_argument(
        "--control-guidance",
        choices=GUIDANCE_CURVES,
        default=None,
        help="the copy: reversed (each event's level reversed in time; the default unless the "
        "model's plan says otherwise), steady (each event at its mean level) or flat (the "
        "clip's mean: no timing either)",
    )


def planned_controls(
    planner_path: str | Path,
    text_encoder: Any,
    captions: list[str],
    seconds: float | list[float],
    codec: Any,
    device: str = "cpu",
) -> list[torch.Tensor]:
    """One planned loudness curve [T_i, 1] per caption, T_i the frames of its clip (`siren
    generate --planner`).

    Raises:
        ValueError: no such checkpoint, or a planner that reads another text width than the
            LM's text encoder gives.
    """
    from siren_lightning.stages.planner import CaptionPlan, load_planner

    plan = CaptionPlan(load_planner(planner_path, device), text_encoder)
    return plan.curves_for_seconds(captions, seconds, codec)


def _check_editing_arguments(args: argparse.Namespace) -> None:
    """One clear message for continuation, infilling and window flags that do not fit."""
    owner = "siren generate"
    if args.prompt_seconds is not None and not args.prompt_audio:
        raise ValueError(f"{owner}: --prompt-seconds needs --prompt-audio")
    if args.prompt_seconds is not None and not args.prompt_seconds > 0:
        raise ValueError(f"{owner}: --prompt-seconds must be positive, got {args.prompt_seconds}")
    if args.prompt_seconds is not None and args.prompt_seconds >= args.seconds:
        raise ValueError(
            f"{owner}: the prompt ({args.prompt_seconds:g} s) must be shorter than the output "
            f"(--seconds {args.seconds:g})"
        )
    if (args.span is None) != (args.infill is None):
        raise ValueError(f"{owner}: --infill CLIP and --span A B go together")
    if args.infill:
        if args.prompt_audio:
            raise ValueError(f"{owner}: --infill and --prompt-audio exclude each other")
        if args.captions_file or args.manifest or len(args.captions) != 1:
            raise ValueError(f"{owner}: --infill edits one clip: give one --captions")
        a, b = args.span
        if not 0 <= a < b:
            raise ValueError(f"{owner}: --span A B needs 0 <= A < B, got {a:g} {b:g}")
        if args.candidates < 1:
            raise ValueError(f"{owner}: --candidates must be >= 1, got {args.candidates}")
    if args.window_seconds < 0:
        raise ValueError(f"{owner}: --window-seconds must be >= 0, got {args.window_seconds}")
    if args.window_seconds and not 0 <= args.context_seconds < args.window_seconds:
        raise ValueError(
            f"{owner}: --context-seconds must be in [0, --window-seconds {args.window_seconds:g})"
            f", got {args.context_seconds:g}"
        )
