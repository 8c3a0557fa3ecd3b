"""`make align` picks one coherent set (model, data, YAMLs, reward and grader): dry runs."""

import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def dry_run(*args: str, **env: str) -> subprocess.CompletedProcess:
    clean_env = {k: v for k, v in os.environ.items() if k not in ("SIREN_MODEL", "ALIGN_SET")}
    return subprocess.run(
        ["make", "-n", "--no-print-directory", "align", *args],
        cwd=ROOT,
        env={**clean_env, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def commands(out: str) -> list[str]:
    """The dry run's commands, continuation lines joined."""
    return out.replace("\\\n", " ").splitlines()


def fit_line(out: str) -> str:
    return next(line for line in commands(out) if " fit --config experiments/align_tiny" in line)


@pytest.mark.skipif(not (ROOT / ".venv").is_dir(), reason="needs the Makefile's .venv")
def test_make_align_defaults_to_the_clean_set_and_a_named_model_to_the_noisy_one():
    out = dry_run().stdout
    fit = fit_line(out)
    assert "--config experiments/align_tiny_clean.yaml" in fit
    assert "--model.init_args.init_from assets/siren_tiny_clean" in fit
    reports = [line for line in commands(out) if "align-report --before" in line]
    assert reports and all("--before assets/siren_tiny_clean" in line for line in reports)
    assert all(
        "synthcaps_clean/test.jsonl" in line and "--tiny-clap tiny-clap-eval-clean" in line
        and "--reward tiny-clap-reward-clean" in line
        for line in reports
    )  # fmt: skip
    assert "prepare synthcaps --out data/synthcaps_clean --background 0" in out

    named = dry_run(SIREN_MODEL="assets/siren_tiny_reference").stdout
    fit = fit_line(named)
    assert "align_tiny_clean.yaml" not in fit
    assert "--model.init_args.init_from assets/siren_tiny_reference" in fit
    assert "data/synthcaps/test.jsonl" in named and "-clean" not in named.split(" fit ")[1]

    explicit = fit_line(dry_run("ALIGN_SET=noisy").stdout)
    assert "init_from assets/siren_tiny_reference" in explicit and "clean" not in explicit
    bad = dry_run("ALIGN_SET=loud")
    assert bad.returncode != 0 and "ALIGN_SET must be clean or noisy, not 'loud'" in bad.stderr
