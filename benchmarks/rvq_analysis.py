"""The paper's Fig. 2 analyses on our codec and data: why several transformers (DESIGN.md section 1).

- 2a: cosine similarity between the quantized features of RVQ layers i and j at the same frame
  (`codec.codebook_vectors`, the vectors the decoder sums), averaged per layer interval j - i,
  with the full r x r matrix.
- 2b: angles between the gradients that the r codebook heads of one shared transformer (the
  `DelayPatternLM` baseline) send into its shared blocks: one backward pass per codebook's
  cross-entropy, cosine of the flattened block gradients, per layer interval.
- 2c: per-codebook linear-probe accuracy of the SynthCaps source class: a logistic regression on
  each codebook's time-averaged quantized vector (train split), accuracy on held-out clips (val),
  beside the majority-class rate and a probe on the sum of all codebooks.

Writes `rvq_analysis.json` and `fig2a_cosine.png`, `fig2b_gradient_angles.png`,
`fig2c_probe.png` into `--out` and prints the tables.

    PYTHONPATH=src python benchmarks/rvq_analysis.py --codec assets/codec_tiny \\
        --data data/synthcaps --out runs/rvq_analysis [--model runs/baseline_tiny/export]

`--codec kmeans-spectral` / `random-spectral` (see `bench_codecs.py`) stand in while no trained
codec exists, and without `--model` the LM is random-init: such numbers describe those weights,
never a trained system (the JSON says which weights were used).
"""

from __future__ import annotations

import argparse
import json
import time
from collections import Counter
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from bench_codecs import build_codec
from siren_lightning.data.audio import load_audio
from siren_lightning.data.manifest import Clip, read_manifest
from siren_lightning.models.delay_lm import DelayLMConfig, DelayPatternLM


@torch.no_grad()
def encode_clips(
    codec: Any, clips: list[Clip], seconds: float, batch: int = 16
) -> tuple[torch.Tensor, torch.Tensor]:
    """Crop/pad every clip to `seconds`, encode.

    Returns:
        codes [n, r, T] long and frame mask [n, T] bool (False past the clip's end).
    """
    n_samples = round(seconds * codec.sample_rate)
    frames = -(-n_samples // codec.hop_length)
    codes, masks = [], []
    for start in range(0, len(clips), batch):
        audio = torch.zeros(len(clips[start : start + batch]), 1, n_samples)
        mask = torch.zeros(audio.shape[0], frames, dtype=torch.bool)
        for i, clip in enumerate(clips[start : start + batch]):
            x = load_audio(clip.audio, codec.sample_rate)[:n_samples]
            audio[i, 0, : x.numel()] = x
            mask[i, : -(-x.numel() // codec.hop_length)] = True
        codes.append(codec.encode(audio))
        masks.append(mask)
    return torch.cat(codes), torch.cat(masks)


@torch.no_grad()
def layer_cosine(codec: Any, codes: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """2a: [r, r] mean cosine between codebook i's and j's vectors at the same (real) frame."""
    vectors = codec.codebook_vectors(codes)  # [n, r, D, T]
    v = vectors.permute(1, 0, 3, 2)[:, mask]  # [r, n, T, D] -> [r, F, D] over real frames
    v = F.normalize(v.float(), dim=-1)
    return torch.einsum("ifd,jfd->ij", v, v) / v.shape[1]


def per_interval(matrix: torch.Tensor) -> list[float]:
    """Mean of matrix[i, i + d] over i, for d = 1 .. r - 1."""
    r = matrix.shape[0]
    return [float(torch.diagonal(matrix, d).mean()) for d in range(1, r)]


def gradient_angles(
    model: DelayPatternLM, codes: torch.Tensor, mask: torch.Tensor, states: torch.Tensor
) -> torch.Tensor:
    """2b: [r, r] angles (degrees) between the block gradients of the r codebook losses."""
    model.eval()  # no dropout: the same forward for every head
    text_mask = torch.ones(states.shape[:2], dtype=torch.bool)
    shared = [p for p in model.blocks.parameters() if p.requires_grad]
    out = model(codes, states, text_mask, mask)
    grads = []
    for q in range(codes.shape[1]):
        valid = out.mask[:, q]
        loss = F.cross_entropy(out.logits[:, q][valid], codes[:, q][valid])
        g = torch.autograd.grad(loss, shared, retain_graph=q < codes.shape[1] - 1)
        grads.append(torch.cat([x.flatten() for x in g]))
    g = F.normalize(torch.stack(grads), dim=1)  # [r, P]
    return torch.rad2deg(torch.arccos((g @ g.T).clamp(-1, 1)))


def linear_probe(
    x_train: torch.Tensor,
    y_train: torch.Tensor,
    x_test: torch.Tensor,
    y_test: torch.Tensor,
    classes: int,
    steps: int = 300,
) -> float:
    """Held-out accuracy of a multinomial logistic regression (standardised features, L2)."""
    mean, std = x_train.mean(0), x_train.std(0).clamp_min(1e-6)
    x_train, x_test = (x_train - mean) / std, (x_test - mean) / std
    torch.manual_seed(0)
    probe = torch.nn.Linear(x_train.shape[1], classes)
    opt = torch.optim.Adam(probe.parameters(), lr=0.05, weight_decay=1e-3)
    for _ in range(steps):
        opt.zero_grad()
        F.cross_entropy(probe(x_train), y_train).backward()
        opt.step()
    with torch.no_grad():
        return float((probe(x_test).argmax(-1) == y_test).float().mean())


@torch.no_grad()
def clip_features(codec: Any, codes: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Time-averaged quantized vector of each codebook: [n, r, D]."""
    vectors = codec.codebook_vectors(codes).float()  # [n, r, D, T]
    w = mask[:, None, None].float()  # [n, 1, 1, T]
    return (vectors * w).sum(-1) / w.sum(-1).clamp_min(1)


def plot(out: Path, results: dict[str, Any]) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    intervals = range(1, len(results["2a"]["per_interval_cosine"]) + 1)
    a.plot(intervals, results["2a"]["per_interval_cosine"], "o-", label="mean cosine")
    a.plot(intervals, results["2a"]["per_interval_abs_cosine"], "s--", label="mean |cosine|")
    a.axhline(0, color="gray", lw=0.5)
    a.set(xlabel="layer interval j - i", ylabel="cosine similarity", title="Fig. 2a")
    a.legend()
    im = b.imshow(results["2a"]["matrix"], vmin=-1, vmax=1, cmap="coolwarm")
    b.set(xlabel="RVQ layer j", ylabel="RVQ layer i", title="cosine(i, j)")
    fig.colorbar(im, ax=b)
    fig.tight_layout()
    fig.savefig(out / "fig2a_cosine.png", dpi=120)
    written.append("fig2a_cosine.png")
    plt.close(fig)

    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    a.plot(intervals, results["2b"]["per_interval_angle_deg"], "o-")
    a.axhline(90, color="gray", lw=0.5)
    a.set(xlabel="head interval j - i", ylabel="gradient angle (deg)", title="Fig. 2b")
    im = b.imshow(results["2b"]["matrix_deg"], vmin=0, vmax=180, cmap="viridis")
    b.set(xlabel="codebook head j", ylabel="codebook head i", title="angle(i, j)")
    fig.colorbar(im, ax=b)
    fig.tight_layout()
    fig.savefig(out / "fig2b_gradient_angles.png", dpi=120)
    written.append("fig2b_gradient_angles.png")
    plt.close(fig)

    fig, a = plt.subplots(figsize=(5, 4))
    acc = results["2c"]["per_codebook_accuracy"]
    a.bar(range(len(acc)), acc)
    a.axhline(results["2c"]["majority_rate"], color="red", ls="--", label="majority class")
    a.axhline(results["2c"]["all_codebooks_accuracy"], color="green", ls=":", label="all (sum)")
    a.set(xlabel="RVQ layer", ylabel="held-out accuracy", title="Fig. 2c: source-class probe")
    a.legend()
    fig.tight_layout()
    fig.savefig(out / "fig2c_probe.png", dpi=120)
    written.append("fig2c_probe.png")
    plt.close(fig)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument(
        "--codec", required=True, help="load_codec spec, kmeans-spectral or random-spectral"
    )
    parser.add_argument("--data", required=True, help="SynthCaps folder (train.jsonl, val.jsonl)")
    parser.add_argument("--out", required=True)
    parser.add_argument("--model", help="folder from `siren export` of a DelayPatternLM (2b)")
    parser.add_argument("--train-clips", type=int, default=400)
    parser.add_argument("--test-clips", type=int, default=200)
    parser.add_argument("--seconds", type=float, default=2.0, help="crop of every clip")
    parser.add_argument("--grad-clips", type=int, default=16, help="batch of the 2b gradients")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    data = Path(args.data)
    codec, codec_desc = build_codec(args.codec, str(data / "train.jsonl"))
    train = read_manifest(data / "train.jsonl")[: args.train_clips]
    test = read_manifest(data / "val.jsonl")[: args.test_clips]
    codes_tr, mask_tr = encode_clips(codec, train, args.seconds)
    codes_te, mask_te = encode_clips(codec, test, args.seconds)
    r = codes_tr.shape[1]

    # 2a
    matrix = layer_cosine(codec, codes_tr, mask_tr)
    fig2a = {
        "matrix": matrix.tolist(),
        "per_interval_cosine": per_interval(matrix),
        "per_interval_abs_cosine": per_interval(matrix.abs()),
    }

    # 2b
    if args.model:
        from siren_lightning.export import load_lm

        model, sidecar = load_lm(args.model)
        if not isinstance(model, DelayPatternLM):
            raise SystemExit(
                f"--model {args.model} holds a {type(model).__name__}, not a DelayPatternLM"
            )
        model_desc = f"{args.model} (step {sidecar.get('global_step')})"
        text = sidecar.get("text_encoder") or {}
        from siren_lightning.text.encoder import TextEncoder

        encoder = TextEncoder(text.get("backend", "minilm"), text.get("name_or_path"))
        captions = [clip.captions[0] for clip in train[: args.grad_clips]]
        states = encoder.encode(captions).states.float()
    else:
        torch.manual_seed(0)
        config = DelayLMConfig.from_name(
            "tiny", num_codebooks=r, codebook_size=codec.codebook_size, latent_dim=codec.latent_dim
        )
        model = DelayPatternLM(config, codec.codebook_table().detach().float())
        model_desc = "random-init DelayPatternLM tiny (no --model given)"
        states = torch.randn(args.grad_clips, 8, config.text_dim)
    angles = gradient_angles(
        model, codes_tr[: args.grad_clips], mask_tr[: args.grad_clips], states[: args.grad_clips]
    )
    fig2b = {"matrix_deg": angles.tolist(), "per_interval_angle_deg": per_interval(angles)}

    # 2c
    names = sorted({clip.attributes["source"] for clip in train + test})
    label = {name: i for i, name in enumerate(names)}
    y_tr = torch.tensor([label[c.attributes["source"]] for c in train])
    y_te = torch.tensor([label[c.attributes["source"]] for c in test])
    f_tr, f_te = clip_features(codec, codes_tr, mask_tr), clip_features(codec, codes_te, mask_te)
    accuracy = [linear_probe(f_tr[:, q], y_tr, f_te[:, q], y_te, len(names)) for q in range(r)]
    fig2c = {
        "classes": names,
        "per_codebook_accuracy": accuracy,
        "all_codebooks_accuracy": linear_probe(f_tr.sum(1), y_tr, f_te.sum(1), y_te, len(names)),
        "majority_rate": Counter(y_te.tolist()).most_common(1)[0][1] / len(y_te),
    }

    results = {
        "codec": codec_desc,
        "model": model_desc,
        "data": str(data),
        "train_clips": len(train),
        "test_clips": len(test),
        "seconds": args.seconds,
        "2a": fig2a,
        "2b": fig2b,
        "2c": fig2c,
    }
    results["plots"] = plot(out, results)
    results["elapsed_s"] = round(time.perf_counter() - started, 1)
    (out / "rvq_analysis.json").write_text(json.dumps(results, indent=2) + "\n")

    print(f"codec: {codec_desc}\nmodel (2b): {model_desc}")
    print(f"clips: {len(train)} train / {len(test)} held-out, {args.seconds:g} s each")
    print("| interval | 2a mean cos | 2a mean abs cos | 2b grad angle deg |")
    print("|---|---|---|---|")
    for d in range(r - 1):
        print(
            f"| {d + 1} | {fig2a['per_interval_cosine'][d]:.3f} | "
            f"{fig2a['per_interval_abs_cosine'][d]:.3f} | {fig2b['per_interval_angle_deg'][d]:.1f} |"
        )
    print("| RVQ layer | 2c source-probe accuracy |")
    print("|---|---|")
    for q, acc in enumerate(accuracy):
        print(f"| {q} | {acc:.3f} |")
    print(
        f"all codebooks (sum): {fig2c['all_codebooks_accuracy']:.3f}; majority class: "
        f"{fig2c['majority_rate']:.3f}; {len(names)} classes"
    )
    print(f"wrote {out / 'rvq_analysis.json'} and {', '.join(results['plots'])}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
