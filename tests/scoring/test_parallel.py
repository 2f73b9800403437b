"""Parallel scoring: shard planning (fast), ScoringWorker in process (fast), Ray pools and the throughput script (e2e).

The Ray tests compare a 2-worker `RayPoolBackend` with the in-process `HFBackend` on the same saved tiny
model, with and without a saved adapter: log-probs must be bit-identical and generations equal, in
request order (workers run exactly the batches a single backend would).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from harness.adapters import adapted_layers, attach, save_adapter
from harness.config import AdapterSpec
from harness.data.requests import GenRequest, LoglikRequest
from harness.models.text import load_pretrained, save_model
from harness.models.tokenizer import train_bpe_tokenizer
from harness.scoring.backend import encode_loglik_request
from harness.scoring.hf_backend import HFBackend
from harness.scoring.sharding import loglik_length, longest_first, plan_shards, prompt_length, shard_requests
from harness.scoring.worker import ScoringError, ScoringWorker

pytestmark = pytest.mark.usefixtures("one_thread")

ROOT = Path(__file__).resolve().parents[2]
BATCH = 3

CORPUS = [
    "Question: Who wrote the book?\nAnswer: The author wrote it in Paris.",
    "The quick brown fox jumps over the lazy dog.",
    "Basil Mahfouz Al-Kuwaiti was born in Kuwait City in 1972.",
    "Answer the question about the novel and its famous writer.",
    "Question: Where was the poet born?\nAnswer: In a small village by the sea.",
]

REQUESTS = [
    LoglikRequest("Question: Who wrote the book?\nAnswer:", " The author wrote it in Paris."),
    LoglikRequest("The quick", " brown fox"),
    LoglikRequest("Basil Mahfouz Al-Kuwaiti was born in", " Kuwait City in 1972.", add_eos=False),
    LoglikRequest("A", " B"),
    LoglikRequest("Answer the question about the novel and its famous writer. The quick brown fox", " jumps"),
    LoglikRequest("", "The lazy dog."),
    LoglikRequest("The", ""),
    LoglikRequest("Question: Where was the poet born?\nAnswer:", " In a small village by the sea."),
    LoglikRequest("Question: Where was the poet born?\nAnswer:", " In Paris."),
    LoglikRequest("The lazy dog", " jumps over the quick brown fox."),
    LoglikRequest("Kuwait", " City"),
]

PROMPTS = ["Question: Who wrote the book?\nAnswer:", "The", "Basil Mahfouz Al-Kuwaiti was born", "A quick",
           "Question: Where was the poet born?\nAnswer:", "The lazy dog", "Answer the question"]
GEN_REQUESTS = [GenRequest(p, n, stop=("\n\n",) if i % 2 else ()) for i, (p, n) in
                enumerate(zip(PROMPTS, [6, 9, 4, 7, 8, 3, 5], strict=True))]


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory, peaked_llama) -> dict[str, Path]:
    """A tiny Llama (matrices at std 0.1: context-dependent greedy output) saved with its tokenizer, and
    a saved sine-bounded adapter for it with non-zero weights."""
    root = tmp_path_factory.mktemp("parallel")
    tokenizer = train_bpe_tokenizer(CORPUS, 300)
    model = peaked_llama(len(tokenizer))
    gen = torch.Generator().manual_seed(1)
    save_model(model, tokenizer, root / "model")
    spec = AdapterSpec(bound="sine", rank=4, omega=5.0)
    attach(model, spec, seed=1)
    with torch.no_grad():
        for layer in adapted_layers(model).values():
            layer.lora_B.weight.copy_(torch.randn(layer.lora_B.weight.shape, generator=gen) * 0.5)
    save_adapter(model, root / "adapter", spec, str(root / "model"))
    return {"model": root / "model", "adapter": root / "adapter"}


def reference(saved: dict[str, Path], adapter: bool) -> HFBackend:
    """The in-process path of the pipeline: load the saved model (+ adapter) and wrap it in HFBackend."""
    from harness.adapters import load_adapter

    model, tokenizer = load_pretrained(str(saved["model"]))
    if adapter:
        load_adapter(model, saved["adapter"])
    return HFBackend(model.eval(), tokenizer, batch_size=BATCH, device="cpu")


def assert_same(got_ll: list[np.ndarray], want_ll: list[np.ndarray], got_gen: list[str],
                want_gen: list[str]) -> None:
    assert len(got_ll) == len(want_ll)
    for a, b in zip(got_ll, want_ll, strict=True):
        assert a.dtype == np.float64 and a.shape == b.shape
        np.testing.assert_array_equal(a, b)
    assert got_gen == want_gen


# ---- fast: shard planning ---------------------------------------------------------------------------


@pytest.mark.parametrize("costs,n", [([5, 4, 3, 3, 2, 1], 2), ([1] * 10, 3), ([9, 1, 1, 1], 2),
                                     ([3, 2], 5), ([7], 2), ([], 3), ([4, 4, 4, 4], 4), ([1, 2, 3], 1)])
def test_plan_shards_contiguous_nonempty_cover(costs: list[float], n: int) -> None:
    runs = plan_shards(costs, n)
    assert len(runs) == min(n, len(costs))
    assert [i for r in runs for i in r] == list(range(len(costs)))
    assert all(len(r) > 0 for r in runs)


def test_plan_shards_balances_cost() -> None:
    costs = [10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 1, 1]
    runs = plan_shards(costs, 2)
    sums = [sum(costs[i] for i in r) for r in runs]
    assert sums == [27, 30]  # the cut nearest half the total (28.5)
    even = plan_shards([1.0] * 12, 3)
    assert [len(r) for r in even] == [4, 4, 4]


def test_shard_requests_are_whole_batches_of_the_global_order() -> None:
    lengths = [5, 9, 2, 9, 7, 1, 3, 3, 8, 4, 6]
    shards = shard_requests(lengths, 3, 2, lambda b: len(b) * lengths[b[0]])
    assert [i for s in shards for i in s] == longest_first(lengths)
    assert all(len(s) % 3 == 0 for s in shards[:-1])
    # each shard, sorted longest first again (as a worker's HFBackend does), keeps its order
    for s in shards:
        assert [s[i] for i in longest_first([lengths[j] for j in s])] == s


def test_driver_lengths_match_hf_backend(saved: dict[str, Path]) -> None:
    backend = reference(saved, adapter=False)
    tok, window = backend.tokenizer, backend.max_length
    for req in REQUESTS:
        assert loglik_length(tok, req, window) == len(encode_loglik_request(tok, req, window)[0])
    long = LoglikRequest("word " * 400, " end")
    assert loglik_length(tok, long, window) == len(encode_loglik_request(tok, long, window)[0]) == 512
    for req in GEN_REQUESTS:
        assert prompt_length(tok, req) == len(tok(req.prompt)["input_ids"])


def test_scoring_worker_in_process_matches_hf_backend(saved: dict[str, Path]) -> None:
    worker = ScoringWorker(str(saved["model"]), str(saved["adapter"]), batch_size=BATCH, device="cpu", threads=1)
    want = reference(saved, adapter=True)
    assert worker.info()["max_length"] == 512
    assert_same(worker.loglikelihood(REQUESTS), want.loglikelihood(REQUESTS),
                worker.generate(GEN_REQUESTS), want.generate(GEN_REQUESTS))


def test_scoring_worker_loads_the_model_each_call_names(saved: dict[str, Path]) -> None:
    """A worker started without a model (as the pool starts them, and as Ray restarts them) scores whatever
    model a call names, switching models in process with the same results as a fresh backend."""
    worker = ScoringWorker(batch_size=BATCH, device="cpu", threads=1)
    assert worker.info()["source"] is None
    with pytest.raises(ScoringError, match="no model loaded"):
        worker.loglikelihood(REQUESTS)
    base, unlearned = (str(saved["model"]), None), (str(saved["model"]), str(saved["adapter"]))
    for model, adapter in ((unlearned, True), (base, False), (unlearned, True)):
        want = reference(saved, adapter)
        assert_same(worker.loglikelihood(REQUESTS, model), want.loglikelihood(REQUESTS),
                    worker.generate(GEN_REQUESTS, model), want.generate(GEN_REQUESTS))
        assert (worker.info()["source"], worker.info()["adapter_dir"]) == model
    assert worker.unload() is True and worker.info()["source"] is None  # hf can load another model


# ---- e2e: Ray ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ray_local() -> None:
    """A local Ray instance for this module (conftest shuts it down after the module)."""
    from harness.core.ray_env import ensure_ray

    ensure_ray()


@pytest.mark.e2e
@pytest.mark.parametrize("adapter", [False, True], ids=["base", "adapter"])
def test_two_workers_match_in_process_backend(saved: dict[str, Path], ray_local: None, adapter: bool) -> None:
    import ray

    from harness.scoring.parallel import ScoringPool

    want = reference(saved, adapter)
    with ScoringPool(2, batch_size=BATCH, num_cpus=0.5) as pool:
        backend = pool.backend(saved["model"], saved["adapter"] if adapter else None)
        assert len(backend.actors) == 2
        infos = ray.get([a.info.remote() for a in backend.actors])
        assert len({i["pid"] for i in infos}) == 2  # two replicas, each in its own process
        got_ll, got_gen = backend.loglikelihood(REQUESTS), backend.generate(GEN_REQUESTS)
        assert_same(got_ll, want.loglikelihood(REQUESTS), got_gen, want.generate(GEN_REQUESTS))
        # a second call reuses the same long-lived actors (same backend object, same group)
        assert pool.backend(saved["model"], saved["adapter"] if adapter else None) is backend
        assert backend.loglikelihood([]) == [] and backend.generate(GEN_REQUESTS[:1]) == got_gen[:1]
    with pytest.raises(ray.exceptions.RayActorError):  # leaving the pool killed its actors
        ray.get(backend.actors[0].info.remote(), timeout=60)


@pytest.mark.e2e
def test_score_models_concurrently_on_crews_that_take_the_next_model(saved: dict[str, Path],
                                                                     ray_local: None) -> None:
    import ray

    from harness.scoring.parallel import ScoringPool

    seen: list[object] = []

    def fn(backend: object) -> tuple[list[np.ndarray], list[str]]:
        seen.append(backend)
        return backend.loglikelihood(REQUESTS), backend.generate(GEN_REQUESTS)

    models = {"base": (saved["model"], None), "unlearned": (saved["model"], saved["adapter"]),
              "base again": (saved["model"], None), "unlearned again": (saved["model"], saved["adapter"])}
    # Crews of one worker here (two models at once, a crew each); the pool below has crews of two.
    with ScoringPool(1, batch_size=BATCH, num_cpus=0.5) as pool:
        assert pool.max_concurrent >= 2
        out = pool.score_models(dict(list(models.items())[:2]), fn)  # two models at once, a crew each
        assert list(out) == ["base", "unlearned"] and pool.crews_started == 2
    for name, adapter in (("base", False), ("unlearned", True)):
        want = reference(saved, adapter)
        assert_same(out[name][0], want.loglikelihood(REQUESTS), out[name][1], want.generate(GEN_REQUESTS))
    seen.clear()
    with ScoringPool(2, batch_size=BATCH, num_cpus=0.5, max_concurrent=1) as pool:
        out = pool.score_models(models, fn)
        # one crew of two processes scored all four models, one after another, each with its own results
        assert pool.crews_started == 1 and not pool._busy and not pool._held and len(pool._idle) == 1
        assert len({pid for b in seen for pid in (i["pid"] for i in ray.get([a.info.remote() for a in b.actors]))}) == 2
        for name, (_, adapter) in models.items():
            want = reference(saved, adapter is not None)
            assert_same(out[name][0], want.loglikelihood(REQUESTS), out[name][1], want.generate(GEN_REQUESTS))
    for backend in seen:  # leaving the pool killed its crews
        with pytest.raises(ray.exceptions.RayActorError):
            ray.get(backend.actors[0].info.remote(), timeout=60)


@pytest.mark.e2e
def test_throughput_script_quick_prints_json_last(ray_local: None) -> None:
    import ray

    # Without the vLLM row (an engine start, half the script's time): the script only notes a vLLM failure, so the
    # row was never checked here; tests/scoring/test_vllm_backend.py checks the backend against HF. Its Ray workers
    # run on this module's instance (RAY_ADDRESS, as on a cluster): an instance of its own costs 8 s of CPU more.
    env = {**os.environ, "RAY_ADDRESS": ray.get_runtime_context().gcs_address}
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "eval_throughput.py"), "--quick", "--no-vllm"],
                          capture_output=True, text=True, timeout=300, check=True, cwd=ROOT, env=env)
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    for key in ("batched_over_naive_loglik", "batched_over_naive_generate", "workers2_over_workers1_loglik",
                "workers2_over_workers1_generate", "vllm_over_hf_loglik", "vllm_over_hf_generate"):
        assert key in summary
    assert summary["batched_over_naive_loglik"] > 0 and summary["workers2_over_workers1_generate"] > 0
    assert summary["checks"]["ray_x2_identical_to_hf"] is True
    assert summary["checks"]["hf_vs_naive_max_abs_logprob_diff"] < 1e-4
    assert "note: vllm skipped (--no-vllm)" in proc.stdout and summary["vllm_over_hf_loglik"] is None


@pytest.mark.e2e
def test_pipeline_score_with_two_workers_equals_in_process(saved: dict[str, Path], ray_local: None) -> None:
    from harness.benchmarks import load_benchmark
    from harness.pipeline.score import score_all
    from harness.spec import JobSpec
    from harness.train.reference import References

    spec = JobSpec.model_validate({
        "methods": [{"name": "gd"}],
        "benchmark": {"name": "tofu", "synthetic": {"n_authors": 10, "n_real_authors": 2, "n_world_facts": 2}},
        "eval": {"batch_size": BATCH, "max_new_tokens": 6, "max_examples": 3, "bootstrap": 0, "workers": 2},
    })
    bench = load_benchmark(spec.benchmark)
    base = reference(saved, adapter=False)
    refs = {0: References(base.tokenizer, base.model, None, str(saved["model"]), None)}
    sources = {("unlearned", 0): (str(saved["model"]), saved["adapter"])}
    in_process = spec.model_copy(update={"eval": spec.eval.model_copy(update={"workers": 1})})
    one = score_all(bench, refs, sources, in_process, torch.device("cpu"))[("unlearned", 0)]
    two = score_all(bench, refs, sources, spec, torch.device("cpu"))[("unlearned", 0)]
    assert two.examples == one.examples and two.generations == one.generations
