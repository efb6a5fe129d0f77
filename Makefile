# Everything runs from the project's own virtual environment (.venv), made by `make setup`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

WORK := work
TINY := $(WORK)/tiny
REPOSITORY := $(WORK)/model_repository

.PHONY: setup test serve goldens reference-env clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[serve,test]"
	touch $(STAMP)

setup: $(STAMP)

# The test command (README, CI).
test: $(STAMP)
	$(PY) -m pytest -q

# Serve the built-in default model: the generated tiny checkpoint (random weights), exported
# on first run. Ctrl-C stops the server.
serve: $(STAMP)
	@test -f $(TINY)/pytorch_model.bin || $(VENV)/bin/ofa-triton make-tiny-checkpoint $(TINY)
	@test -f $(REPOSITORY)/ofa_encoder_decoder/1/model.onnx || \
		$(VENV)/bin/ofa-triton export --model $(TINY) --repository $(REPOSITORY)
	$(VENV)/bin/ofa-triton serve --repository $(REPOSITORY)

# Regenerate tests/golden/* with ModelScope's own pipeline (needs the reference environment).
reference-env:
	bash export/reference/setup.sh

goldens:
	@test -x .venv-ref/bin/python || { echo "no reference environment: run 'make reference-env' first"; exit 2; }
	.venv-ref/bin/python tests/golden/make_goldens.py

clean:
	rm -rf $(VENV) .pytest_cache $(WORK)
