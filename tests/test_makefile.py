"""`SET` picks one coherent set (data, codec, model, YAMLs, reward and grader) for `make pretrain`,
`make align` and `make evaluate`: dry runs."""

import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def dry_run(*args: str, target: str = "align", **env: str) -> subprocess.CompletedProcess:
    clean_env = {k: v for k, v in os.environ.items() if k not in ("SIREN_MODEL", "SET")}
    return subprocess.run(
        ["make", "-n", "--no-print-directory", target, *args],
        cwd=ROOT,
        env={**clean_env, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def commands(out: str) -> list[str]:
    """The dry run's commands, continuation lines joined."""
    return out.replace("\\\n", " ").splitlines()


def flat(out: str) -> str:
    """The dry run as one line, every run of whitespace one space."""
    return " ".join(out.replace("\\\n", " ").split())


def fit_line(out: str) -> str:
    return next(line for line in commands(out) if " fit --config experiments/align_tiny" in line)


@pytest.mark.skipif(not (ROOT / ".venv").is_dir(), reason="needs the Makefile's .venv")
def test_make_align_defaults_to_the_clean_set_and_set_noisy_to_the_noisy_one():
    out = dry_run().stdout
    fit = fit_line(out)
    # The reference follows its captions under its plan, aligned at its own sampling.
    assert "--config experiments/align_tiny_clean.yaml" in fit
    assert fit.split("--config")[-1].startswith(" experiments/align_tiny_planned.yaml")
    assert "--model.init_args.init_from assets/siren_tiny_planned" in fit
    assert "export runs/align_tiny_planned/checkpoints/last.ckpt" in out
    reports = [line for line in commands(out) if "align-report --before" in line]
    assert reports and all("--before assets/siren_tiny_planned" in line for line in reports)
    assert all(
        "synthcaps_clean/test.jsonl" in line and "--tiny-clap tiny-clap-eval-clean" in line
        and "--reward tiny-clap-reward-clean" in line
        for line in reports
    )  # fmt: skip
    assert "prepare synthcaps --out data/synthcaps_clean --background 0" in out

    # Naming the model picks the model only: the set stays clean.
    named_run = dry_run(SIREN_MODEL="runs/siren_tiny_clean/model").stdout
    named = fit_line(named_run)
    assert "align_tiny_clean.yaml" in named and "init_from runs/siren_tiny_clean/model" in named
    assert "align_tiny_planned" not in named_run

    noisy = dry_run("SET=noisy").stdout
    fit = fit_line(noisy)
    assert "align_tiny_clean.yaml" not in fit
    assert "--model.init_args.init_from assets/siren_tiny_reference" in fit
    assert "data/synthcaps/test.jsonl" in noisy and "-clean" not in noisy.split(" fit ")[1]
    assert "--tiny-clap tiny-clap-eval --reward tiny-clap-reward" in noisy
    bad = dry_run("SET=loud")
    assert bad.returncode != 0 and "SET must be clean or noisy, not 'loud'" in bad.stderr


@pytest.mark.skipif(not (ROOT / ".venv").is_dir(), reason="needs the Makefile's .venv")
def test_make_pretrain_and_evaluate_follow_the_set():
    out = dry_run(target="pretrain").stdout
    assert "prepare synthcaps --out data/synthcaps_clean --background 0" in out
    assert "--codec assets/codec_tiny_clean --out data/synthcaps_clean/codes_litdata/" in flat(out)
    fit = next(line for line in commands(out) if " fit --config" in line)
    assert "--config experiments/siren_tiny.yaml --config experiments/siren_tiny_clean.yaml" in fit
    assert "--model.init_args.total_steps 500 --trainer.max_steps 500" in fit
    assert "set-sampling runs/siren_tiny_clean/model --temperature 0.7" in out
    assert "adherence --model runs/siren_tiny_clean/model --manifest data/synthcaps_clean/" in flat(
        out
    )

    noisy = dry_run("SET=noisy", target="pretrain").stdout
    fit = next(line for line in commands(noisy) if " fit --config" in line)
    assert "siren_tiny_clean" not in fit and "--trainer.max_steps 150" in fit
    assert "set-sampling" not in noisy and "--codec assets/codec_tiny " in flat(noisy)

    evaluate = flat(dry_run(target="evaluate").stdout)
    assert "generate --model assets/siren_tiny_planned --manifest data/synthcaps_clean/" in evaluate
    assert "--tiny-clap tiny-clap-eval-clean --codec-ceiling assets/codec_tiny_clean" in evaluate
    # Each model's scores in a folder of its own: the reference's, and the run's model's.
    assert "--match-durations --out runs/eval/siren_tiny_planned/generated" in evaluate
    assert "--out runs/eval/siren_tiny_planned/results.json" in evaluate
    own = flat(dry_run("SIREN_MODEL=runs/siren_tiny_clean/model", target="evaluate").stdout)
    assert "--out runs/siren_tiny_clean/eval/results.json" in own
