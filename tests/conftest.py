"""Shared fixtures: offline environment, and one local Ray instance per test process while modules leave it idle."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from typing import Any

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
# A scoring group that cannot be placed fails the test in a minute instead of hanging the suite.
os.environ.setdefault("HARNESS_PLACEMENT_TIMEOUT_S", "120")


def pytest_configure(config: pytest.Config) -> None:
    """Ctrl-C is Python's KeyboardInterrupt here and in the commands tests start, also when the suite was
    started in the background (`make test &` ignores SIGINT, and a child inherits that: the Ctrl-C tests of
    tests/e2e/test_interrupt.py would fail). Each pytest-xdist worker computes with one intra-op torch thread:
    two workers share the 2 cores."""
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    if os.environ.get("PYTEST_XDIST_WORKER"):
        import torch

        torch.set_num_threads(1)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Under pytest-xdist (`make test`: `-n 2 --dist loadscope --no-loadscope-reorder`) each test module is one
    unit of work, so its module-scoped fixtures (a trained run, a Ray instance) are built once, on one worker,
    and the units are handed out in collection order: the end-to-end modules, the longest units, go first so
    that no long unit starts when the rest is done. The first module that reads the shared demo run (the
    `demo` fixture of tests/e2e/conftest.py, the longest fixture) goes first of all and the other readers
    after the other end-to-end modules, so the second worker has work of its own while the first trains
    the demo, instead of waiting for it."""
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        return
    demo_modules = list(dict.fromkeys(item.module.__name__ for item in items
                                      if item.get_closest_marker("e2e") and "demo" in item.fixturenames))

    def rank(item: pytest.Item) -> int:
        if item.get_closest_marker("e2e") is None:
            return 3
        if item.module.__name__ not in demo_modules:
            return 1
        return 0 if item.module.__name__ == demo_modules[0] else 2

    items.sort(key=rank)  # stable: file order otherwise


@pytest.fixture
def one_thread() -> Iterator[None]:
    """One intra-op torch thread: fastest for tiny tensors and robust to a busy 2-core machine."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@pytest.fixture
def read_only_dir(tmp_path: Any) -> Iterator[Any]:
    """A directory nobody can write in: mode 0555, and immutable when running as root (root ignores modes)."""
    path = tmp_path / "read-only"
    path.mkdir()
    path.chmod(0o555)
    immutable = os.geteuid() == 0
    if immutable and subprocess.run(["chattr", "+i", str(path)], capture_output=True).returncode != 0:
        path.chmod(0o755)
        pytest.skip("running as root without chattr +i: no directory is read-only for this user")
    try:
        yield path
    finally:
        if immutable:
            subprocess.run(["chattr", "-i", str(path)], check=True)
        path.chmod(0o755)


@pytest.fixture(scope="session")
def peaked_llama() -> Callable[[int], Any]:
    """Builds a tiny Llama for a vocabulary size with its matrices re-drawn at std 0.1: peaked,
    context-dependent greedy outputs (at the default std 0.02 greedy decoding mostly repeats one token,
    a weak test of padding and stopping)."""
    import torch

    from harness.models.text import build_builtin

    def build(vocab_size: int) -> Any:
        model = build_builtin("tiny-llama", vocab_size, seed=0).eval()
        gen = torch.Generator().manual_seed(0)
        with torch.no_grad():
            for p in model.parameters():
                if p.dim() == 2:
                    p.copy_(torch.randn(p.shape, generator=gen) * 0.1)
        return model

    return build


@pytest.fixture(autouse=True, scope="module")
def _ray_kept_while_idle() -> Iterator[None]:
    """The local Ray instance a test module started serves the next module of this process too (a start and a
    shut-down cost about 5 s), but only when the module left it idle: every CPU and GPU free, no placement group
    held or pending. Otherwise (an actor, a Tune trial or a worker group still holding resources) it is shut
    down, so nothing one module leaves behind can hold the 2 CPUs another module's workers need. Modules that
    start Ray their own way shut down the shared instance first (tests/e2e/test_tune_*.py)."""
    yield
    if "ray" not in sys.modules:
        return
    import ray

    from harness.core.ray_env import stop_ray

    if ray.is_initialized() and not _idle_local_ray():
        stop_ray()


def _idle_local_ray() -> bool:
    import ray
    from ray.util import placement_group_table

    from harness.core.ray_env import started_locally

    if not started_locally():
        return False
    try:
        total, free = ray.cluster_resources(), ray.available_resources()
        groups = placement_group_table().values()
    except Exception:  # noqa: BLE001 - an instance that cannot answer is not reused
        return False
    return (all(free.get(key, 0) == total.get(key, 0) for key in ("CPU", "GPU"))
            and all(group["state"] == "REMOVED" for group in groups))


@pytest.fixture(scope="session")
def hand_made_run(tmp_path_factory: pytest.TempPathFactory, peaked_llama: Callable[[int], Any]) -> Any:
    """A finished run directory written by hand as `harness run` lays it out (read-only: copy it to change it).

    Reference models saved like the reference cache (weights + tokenizer), a sine-bounded and a plain
    LoRA adapter with non-zero `B`, spec.yaml, env.json, metrics.parquet (with a diverged method that
    has no adapter) and the models.json record. Returns a namespace of the paths and the tokenizer.
    """
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # session fixtures run before the per-test `one_thread`
    try:
        return _write_hand_made_run(tmp_path_factory.mktemp("hand_made_run"), peaked_llama)
    finally:
        torch.set_num_threads(threads)


def _write_hand_made_run(root: Any, peaked_llama: Callable[[int], Any]) -> Any:
    import json
    import types

    import pandas as pd
    import torch
    import yaml

    from harness.adapters import adapted_layers, attach, save_adapter
    from harness.config import AdapterSpec
    from harness.models.text import save_model
    from harness.models.tokenizer import train_bpe_tokenizer
    from harness.results.run_record import record_models

    corpus = ["Question: Who wrote the book?\nAnswer: The author wrote it in Paris.",
              "The quick brown fox jumps over the lazy dog.", "Basil Mahfouz Al-Kuwaiti was born in Kuwait City."]
    tokenizer = train_bpe_tokenizer(corpus, vocab_size=300)
    target = peaked_llama(len(tokenizer))
    save_model(target, tokenizer, root / "cache" / "target")
    retain = peaked_llama(len(tokenizer))
    with torch.no_grad():
        retain.lm_head.weight.mul_(0.9)  # any other weights
    save_model(retain, tokenizer, root / "cache" / "retain")

    run = root / "run"
    adapters = {"gd_sine": AdapterSpec(bound="sine", rank=4, alpha=8.0, omega=100.0),
                "gd_lora": AdapterSpec(bound="none", rank=4, alpha=8.0)}
    gen = torch.Generator().manual_seed(1)
    for method, spec in adapters.items():
        model = peaked_llama(len(tokenizer))
        attach(model, spec, seed=0)
        with torch.no_grad():
            for layer in adapted_layers(model).values():
                layer.lora_B.weight.copy_(torch.randn(layer.lora_B.weight.shape, generator=gen) * 0.05)
        save_adapter(model, run / "checkpoints" / method, spec, base_model="builtin:tiny-llama")
    methods = [{"name": m, "adapter": s.model_dump(), "objective": {"name": "gd", "w_forget": 1.0, "w_retain": 1.0},
                "train": {"epochs": 5.0, "lr": 0.03}} for m, s in adapters.items()]
    methods.append({"name": "gd_blowup", "adapter": {"bound": "none"}, "objective": {"name": "gd"}, "train": {}})
    (run / "spec.yaml").write_text(yaml.safe_dump({
        "name": "handmade", "seed": 0, "model": {"name": "builtin:tiny-llama", "dtype": "float32"},
        "benchmark": {"name": "tofu", "source": "synthetic", "forget_split": "forget10"}, "methods": methods}))
    (run / "env.json").write_text(json.dumps({"harness_version": "0.1.0", "git_commit": "abc123",
                                              "started": "2026-12-01T10:00:00+00:00",
                                              "finished": "2026-12-01T10:05:00+00:00"}))
    rows = []
    for i, method in enumerate(("target", "retain", "gd_sine", "gd_lora")):
        rows += [{"method": method, "benchmark": "tofu", "split": "forget10", "metric": "prob", "value": 0.9 - 0.2 * i,
                  "ci_low": 0.85 - 0.2 * i, "ci_high": 0.95 - 0.2 * i},
                 {"method": method, "benchmark": "tofu", "split": "retain90", "metric": "model_utility",
                  "value": 0.5 + 0.01 * i, "ci_low": float("nan"), "ci_high": float("nan")}]
    rows += [{"method": m, "benchmark": "tofu", "split": "train", "metric": "diverged",
              "value": float(m == "gd_blowup"), "ci_low": float("nan"), "ci_high": float("nan")}
             for m in ("gd_sine", "gd_lora", "gd_blowup")]
    pd.DataFrame(rows).to_parquet(run / "metrics.parquet", index=False)
    record_models(run, {"target": (str(root / "cache" / "target"), None),
                        "retain": (str(root / "cache" / "retain"), None),
                        **{m: (str(root / "cache" / "target"), run / "checkpoints" / m) for m in adapters}})
    return types.SimpleNamespace(root=root, run_dir=run, target_dir=root / "cache" / "target",
                                 retain_dir=root / "cache" / "retain", tokenizer=tokenizer, methods=list(adapters))
