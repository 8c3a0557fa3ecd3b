"""`siren demo --model DIR`: a gradio page that generates audio with an exported LM (issue 18).

The page takes a caption, a negative caption, seconds, guidance scale, temperature, seed and an
optional prompt audio; each result shows an audio player, a spectrogram and the `siren generate`
command that reproduces it exactly (same seed and batch size 1: the same samples). Guidance and
temperature start at the model's own sampling defaults (its generation.json, else the global
ones), as do top-k and top-p, which the page does not show. Generation
goes through `generate.generate_audio`, the CLI's own path, so the page and the CLI cannot
drift apart.

Prompt audio: each clip starts with the codec's codes of the file and continues them (the
result is prompt + continuation, `seconds` long; `--prompt-audio` on the CLI). Seconds past the
training crops (`generate.WINDOW_SECONDS`) are made by the CLI's sliding window, with its
defaults, so the same command reproduces them.
"""

from __future__ import annotations

import argparse
import os
import shlex
import tempfile
from pathlib import Path
from typing import Any

from siren_lightning.models.sampling import resolve_sampling

# What the page's fields start at (guidance and temperature: the model's, `DemoGenerator.sampling`).
DEFAULTS: dict[str, Any] = {"seconds": 2.0, "seed": 0}
MAX_SECONDS = 30.0


def cli_command(
    model_dir: str | Path,
    settings: dict[str, Any],
    out: str = "OUT",
    overrides: dict[str, str | None] | None = None,
) -> str:
    """The `siren generate` line that reproduces one result of the page.

    Args:
        settings: caption, negative_caption, seconds, seed, temperature, top_k, top_p, cfg_scale
            and prompt_audio (a path or None).
        overrides: the demo's own `codec` and `text_encoder` choices (None: the sidecar's).
    """
    parts = ["siren generate", f"--model {shlex.quote(str(model_dir))}"]
    for name, value in (overrides or {}).items():
        if value:
            parts.append(f"--{name.replace('_', '-')} {shlex.quote(value)}")
    parts.append(f"--captions {shlex.quote(settings['caption'])}")
    if settings["negative_caption"]:
        parts.append(f"--negative-caption {shlex.quote(settings['negative_caption'])}")
    if settings.get("prompt_audio"):
        parts.append(f"--prompt-audio {shlex.quote(str(settings['prompt_audio']))}")
    parts += [
        f"--seconds {settings['seconds']:g}",
        f"--seed {settings['seed']}",
        f"--temperature {settings['temperature']:g}",
        f"--top-k {settings['top_k']}",
        f"--top-p {settings['top_p']:g}",
        f"--cfg-scale {settings['cfg_scale']:g}",
        "--batch-size 1",
        f"--out {shlex.quote(out)}",
    ]
    return " ".join(parts)


def spectrogram_png(wav: str | Path, png: str | Path) -> Path:
    """A log-magnitude STFT picture of a WAV (window 512, hop 128), written as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    import soundfile as sf
    import torch

    audio, sr = sf.read(str(wav), dtype="float32")
    x = torch.from_numpy(np.asarray(audio))
    n_fft = 512
    x = torch.nn.functional.pad(x, (0, max(0, n_fft - x.numel())))
    spec = torch.stft(
        x, n_fft, hop_length=128, window=torch.hann_window(n_fft), return_complex=True
    )
    db = 20 * torch.log10(spec.abs().clamp_min(1e-5))  # [F, frames]
    fig, ax = plt.subplots(figsize=(6, 2.4), dpi=100)
    ax.imshow(
        db.numpy(),
        origin="lower",
        aspect="auto",
        cmap="magma",
        vmin=float(db.max()) - 80,
        extent=(0, x.numel() / sr, 0, sr / 2000),
    )
    ax.set_xlabel("seconds")
    ax.set_ylabel("kHz")
    fig.tight_layout()
    fig.savefig(str(png))
    plt.close(fig)
    return Path(png)


class DemoGenerator:
    """Loads the generation stack once; `__call__` makes one clip per press of Generate.

    Args:
        model_dir: a folder written by `siren export`.
        out: where WAVs and spectrograms go (a temporary folder when None).
        stack: (model, codec, text encoder) already loaded, else `load_generation_stack`.
    """

    def __init__(
        self,
        model_dir: str | Path,
        out: str | Path | None = None,
        device: str = "cpu",
        codec: str | None = None,
        text_encoder: str | None = None,
        stack: tuple[Any, Any, Any] | None = None,
    ) -> None:
        from siren_lightning.generate import load_generation_stack
        from siren_lightning.generation_config import model_sampling

        self.model_dir = str(model_dir)
        self.overrides = {"codec": codec, "text_encoder": text_encoder}
        self.model, self.codec, self.text_encoder = stack or load_generation_stack(
            model_dir, device, codec=codec, text_encoder=text_encoder
        )
        # The model's own defaults (its generation.json), else the global ones.
        self.sampling = model_sampling(model_dir, "siren demo").values
        self.plan = self._plan(device)
        self.out = Path(out) if out is not None else Path(tempfile.mkdtemp(prefix="siren-demo-"))
        self.count = 0

    def _plan(self, device: str) -> Any:
        """The `CaptionPlan` of an LM that follows a per-frame plan (its generation.json's), or
        None for one that does not."""
        from siren_lightning.generation_config import model_plan
        from siren_lightning.stages.planner import CaptionPlan

        dim = getattr(self.model.config, "control_dim", 0)
        if not dim:
            return None
        found = model_plan(self.model_dir)
        if found is None:
            raise ValueError(
                f"{self.model_dir}: this LM follows a per-frame plan (control_dim {dim}), and "
                "its generation.json names no planner: `siren set-sampling "
                f"{self.model_dir} --planner PLANNER.ckpt --chosen-on ...` names one"
            )
        return CaptionPlan.load(
            found.planner,
            self.text_encoder,
            found.control_scale,
            found.control_guidance,
            device=device,
        )

    def __call__(
        self,
        caption: str,
        negative_caption: str,
        seconds: float,
        cfg_scale: float,
        temperature: float,
        seed: float,
        prompt_audio: str | None = None,
    ) -> tuple[str, str, str, str]:
        """One result: (WAV path, spectrogram PNG path, CLI command, status line)."""
        from siren_lightning.editing import encode_prompt
        from siren_lightning.generate import WINDOW_SECONDS, generate_audio

        caption = (caption or "").strip()
        if not caption:
            raise ValueError("write a caption first")
        if not 0 < float(seconds) <= MAX_SECONDS:
            raise ValueError(f"seconds must be in (0, {MAX_SECONDS:g}], got {seconds}")
        if negative_caption and float(cfg_scale) == 1.0:
            raise ValueError("a negative caption acts through guidance: set guidance != 1")
        given = {"temperature": float(temperature), "cfg_scale": float(cfg_scale)}
        sampling = resolve_sampling("siren demo", given, self.sampling).values
        prompt = None
        if prompt_audio:
            device = self.model.codebook_table.device
            prompt = encode_prompt(self.codec, prompt_audio, device=device)  # [1, r, P]
            prompt_seconds = prompt.shape[-1] * self.codec.hop_length / self.codec.sample_rate
            if prompt_seconds >= float(seconds):
                raise ValueError(
                    f"the prompt audio ({prompt_seconds:.2f} s) must be shorter than seconds "
                    f"({float(seconds):g})"
                )
        self.count += 1
        folder = self.out / f"{self.count:04d}"
        planned: dict[str, Any] = {}
        if self.plan is not None:  # the caption's curve over the whole clip, prompt included
            planned = {
                "controls": self.plan.curves_for_seconds([caption], float(seconds), self.codec),
                "control_guidance": self.plan.guidance,
                "control_scale": self.plan.scale,
                "control_source": self.plan.source,
            }
        record = generate_audio(
            self.model,
            self.text_encoder,
            self.codec,
            [caption],
            folder,
            seconds=float(seconds),
            seed=int(seed),
            batch_size=1,
            sampling=sampling,
            negative_captions=(negative_caption or "").strip(),
            prompt_codes=prompt,
            window_seconds=WINDOW_SECONDS,
            **planned,
        )[0]
        png = spectrogram_png(record["path"], folder / "spectrogram.png")
        settings = {
            **sampling,
            "caption": caption,
            "negative_caption": record["negative_caption"],
            "seconds": float(seconds),
            "seed": int(seed),
            "prompt_audio": prompt_audio or None,
        }
        status = f"{record['samples'] / record['sample_rate']:.2f} s at {record['sample_rate']} Hz"
        if prompt is not None:
            status += f"; continues the prompt's first {record['prompt_frames']} frames"
        if self.plan is not None:
            status += (
                f"; planned by {Path(self.plan.source).name} (control_scale {self.plan.scale:g})"
            )
        if record["window_frames"]:
            status += (
                f"; past the {WINDOW_SECONDS:g} s training crops: a sliding window of "
                f"{record['window_frames']} frames"
            )
        return (
            record["path"],
            str(png),
            cli_command(self.model_dir, settings, overrides=self.overrides),
            status,
        )


def build_demo(generator: DemoGenerator) -> Any:
    """The gradio page around a `DemoGenerator`."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    import gradio as gr

    with gr.Blocks(title="siren-lightning demo") as page:
        gr.Markdown(f"# siren-lightning\nModel: `{generator.model_dir}`")
        with gr.Row():
            with gr.Column():
                caption = gr.Textbox(label="Caption", elem_id="caption")
                negative = gr.Textbox(
                    label="Negative caption (guidance steers away from it)", elem_id="negative"
                )
                seconds = gr.Number(
                    DEFAULTS["seconds"],
                    label="Seconds",
                    minimum=0.1,
                    maximum=MAX_SECONDS,
                    elem_id="seconds",
                )
                guidance = gr.Number(
                    generator.sampling["cfg_scale"],
                    label="Guidance (cfg scale)",
                    elem_id="guidance",
                )
                temperature = gr.Number(
                    generator.sampling["temperature"],
                    label="Temperature",
                    minimum=0,
                    elem_id="temperature",
                )
                seed = gr.Number(DEFAULTS["seed"], label="Seed", precision=0, elem_id="seed")
                prompt = gr.Audio(
                    label="Prompt audio (optional: the result continues it)",
                    sources=["upload"],
                    type="filepath",
                )
                button = gr.Button("Generate", variant="primary", elem_id="generate")
            with gr.Column():
                # The browser's own <audio controls> player (the spectrogram is below).
                audio = gr.Audio(
                    label="Result",
                    type="filepath",
                    elem_id="result",
                    waveform_options=gr.WaveformOptions(show_recording_waveform=False),
                )
                picture = gr.Image(label="Spectrogram", type="filepath", elem_id="spectrogram")
                command = gr.Code(
                    label="Reproduce from the CLI", language="shell", elem_id="command"
                )
                status = gr.Markdown(elem_id="status")

        def run(*values: Any) -> tuple[str, str, str, str]:
            try:
                return generator(*values)
            except ValueError as err:
                raise gr.Error(str(err)) from err

        button.click(
            run,
            inputs=[caption, negative, seconds, guidance, temperature, seed, prompt],
            outputs=[audio, picture, command, status],
        )
    return page


def main(argv: list[str]) -> int:
    """Serve a web page that generates audio with a model folder written by `siren export`."""
    import torch

    p = argparse.ArgumentParser(prog="siren demo", description=main.__doc__)
    p.add_argument("--model", required=True, help="folder written by `siren export`")
    p.add_argument("--codec", help="codec spec; default: the sidecar's")
    p.add_argument(
        "--text-encoder", help="local folder of the text encoder; default: the sidecar's"
    )
    p.add_argument("--host", default="127.0.0.1", help="address to serve on (default: %(default)s)")
    p.add_argument("--port", type=int, default=7860)
    p.add_argument("--out", help="folder for the generated WAVs (default: a temporary one)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = p.parse_args(argv)
    generator = DemoGenerator(
        args.model, args.out, args.device, codec=args.codec, text_encoder=args.text_encoder
    )
    build_demo(generator).launch(
        server_name=args.host, server_port=args.port, allowed_paths=[str(generator.out)]
    )
    return 0
