# Everything runs from the project's own virtual environment (.venv), made by `make setup`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

WORK := work
REPOSITORY := $(WORK)/model_repository

REF_STAMP := .venv-ref/.installed

.PHONY: setup test serve bench bench-gpu soak chaos goldens reference-env device-kit model-analyzer clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[serve,test,bench]"
	touch $(STAMP)

setup: $(STAMP)

# The test command (README, CI).
test: $(STAMP)
	$(PY) -m pytest -q

# Serve the built-in default models: a generated tiny checkpoint (random weights) per task,
# all four exported into one repository on the first run. Ctrl-C stops the server.
serve: $(STAMP)
	$(VENV)/bin/ofa-triton make-builtin-repository $(REPOSITORY) --checkpoints $(WORK)/checkpoints
	$(VENV)/bin/ofa-triton serve --repository $(REPOSITORY)

# The ModelScope reference environment (.venv-ref): goldens and the benchmark's baseline.
# About 10 minutes the first time.
$(REF_STAMP): export/reference/requirements.txt export/reference/setup.sh
	bash export/reference/setup.sh
	touch $(REF_STAMP)

reference-env: $(REF_STAMP)

# Regenerate tests/golden/* with ModelScope's own pipelines (visual entailment, captioning,
# visual question answering, visual grounding).
goldens: $(REF_STAMP)
	.venv-ref/bin/python tests/golden/make_goldens.py
	.venv-ref/bin/python tests/golden/make_caption_goldens.py
	.venv-ref/bin/python tests/golden/make_vqa_goldens.py
	.venv-ref/bin/python tests/golden/make_grounding_goldens.py

# Triton (fp32, and the opt-in int8 export beside it) against the ModelScope-pipeline service
# and the eager PyTorch service, side by side (OFA-tiny architecture, 256 px; about 11 minutes
# after the environments exist); then the same for the generating tasks: image captioning,
# visual question answering and visual grounding (benchmarks/generation.py, about 17 minutes).
bench: $(STAMP) $(REF_STAMP)
	$(PY) -m benchmarks.run --profile cpu
	$(PY) -m benchmarks.generation --task captioning vqa grounding

# The same comparison on a GPU host with a package registry and the reference environment:
# OFA-large architecture, 480 px, fp16, the PyTorch runtime (the --device gpu default; PyPI's
# torch 2.13.0 for Linux is a CUDA 13 build). On a GPU machine without a registry, carry
# .device-kit (make device-kit) and run benchmarks/device/run.sh instead (BENCHMARKS.md).
bench-gpu: $(STAMP) $(REF_STAMP)
	$(PY) -m benchmarks.run --profile gpu

# Soak: a fresh tiny export under steady open-loop load (80% of its measured capacity, one
# request in ten invalid) for 30 minutes, memory of the server and every stub sampled; exit 1
# when a valid request fails, an invalid one misses its 400, or a process grows more than
# 50 MB over the second half. Writes benchmarks/results/soak.json and soak_memory.csv.
soak: $(STAMP)
	$(PY) -m benchmarks.soak --minutes $(or $(MINUTES),30)

# Chaos: a fresh tiny export under steady load at concurrency 8 with explicit model control and
# the watchdog; a random stub (each step's in turn) killed every few seconds for a minute.
# Failed requests per kill, time to recovery, failures after recovery:
# benchmarks/results/chaos.json (docs/watchdog.md).
chaos: $(STAMP)
	$(PY) -m benchmarks.chaos --seconds $(or $(CHAOS_SECONDS),60)

# .device-kit/ (at most 56 MiB): what a GPU machine without a package registry lacks to serve
# and measure the project there: tritonserver with its Python backend and libraries,
# perf_analyzer, and the Python 3.12 wheels (numpy 1.26.4, tritonclient, ...). Unpack it there
# with `python3 -m benchmarks.device.kit unpack` (benchmarks/device/kit.py). About 2 minutes.
device-kit: $(STAMP)
	$(PY) -m benchmarks.device.kit build

# Triton's model-analyzer on the built-in visual-entailment ensemble (local launch, CPU only,
# quick search): about 8 minutes on 2 cores. It lives in its own environment because it pins
# another grpcio than the project's. Results in work/model-analyzer/results (summary,
# detailed reports, CSV). Another ensemble: ofa-triton model-analyzer-config --model ...
ANALYZER_VENV := .venv-analyzer
model-analyzer: $(STAMP)
	test -x $(ANALYZER_VENV)/bin/model-analyzer || ($(PYTHON) -m venv $(ANALYZER_VENV) && \
		$(ANALYZER_VENV)/bin/pip install -q "triton-model-analyzer==1.46.0" "tritonclient[all]==2.50.0")
	$(VENV)/bin/ofa-triton make-builtin-repository $(REPOSITORY) --checkpoints $(WORK)/checkpoints
	$(VENV)/bin/ofa-triton model-analyzer-config --repository $(REPOSITORY) --output $(WORK)/model-analyzer
	$(ANALYZER_VENV)/bin/model-analyzer profile -f $(WORK)/model-analyzer/profile.yaml

clean:
	rm -rf $(VENV) .pytest_cache $(WORK)
