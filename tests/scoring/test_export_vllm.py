"""The exported checkpoint in vLLM (CPU): served unchanged by our backend and by lm-eval's own `VLLM` model class.

Slow (each engine start is tens of seconds on two cores): marked e2e, run under the heavy lock.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("vllm")
pytest.importorskip("lm_eval")

from harness.commands.export import export_method  # noqa: E402
from harness.data.requests import LoglikRequest  # noqa: E402
from harness.models.text import load_pretrained  # noqa: E402
from harness.scoring.hf_backend import HFBackend  # noqa: E402
from harness.scoring.lm_eval import run_lm_eval_tasks  # noqa: E402
from harness.scoring.vllm_backend import VLLMBackend  # noqa: E402

pytestmark = pytest.mark.e2e

#: A small KV cache: the default reserves 20% of host RAM on the CPU build.
ENGINE_KW = {"kv_cache_memory_bytes": 32 * 2**20}
LOGLIK = [LoglikRequest("Question: Who wrote the book?\nAnswer:", " The author wrote it in Paris."),
          LoglikRequest("The quick", " brown fox jumps over the lazy dog.")]


@pytest.fixture(scope="module")
def exported(hand_made_run: Any, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_method(hand_made_run.run_dir, "gd_sine", tmp_path_factory.mktemp("vllm") / "gd_sine")


def test_vllm_serves_the_exported_checkpoint(exported: Path) -> None:
    model, tokenizer = load_pretrained(str(exported))
    want = HFBackend(model.eval(), tokenizer, batch_size=2, device="cpu").loglikelihood(LOGLIK)
    with VLLMBackend.from_pretrained_dir(exported, **ENGINE_KW) as backend:
        got = backend.loglikelihood(LOGLIK)
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(g, w, atol=1e-4, rtol=0)


def test_lm_eval_vllm_class_scores_the_exported_checkpoint(exported: Path, tmp_path: Path) -> None:
    import json

    tasks = tmp_path / "tasks"
    tasks.mkdir()
    docs = [{"question": f"Who wrote book {i}?", "choices": [" fox", " dog", " Paris"], "answer": i % 3}
            for i in range(9)]
    (tmp_path / "mc.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    (tasks / "toy_mc.yaml").write_text(f"""task: toy_mc
dataset_path: json
dataset_kwargs:
  data_files:
    test: {tmp_path / "mc.jsonl"}
  cache_dir: {tmp_path / "hf_datasets"}
test_split: test
output_type: multiple_choice
doc_to_text: "Question: {{{{question}}}}\\nAnswer:"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: "{{{{answer}}}}"
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
""")
    spec = {"tasks": ["toy_mc"], "include_path": str(tasks), "include_defaults": False, "batch_size": 4}
    hf_rows = run_lm_eval_tasks(exported, None, spec, device="cpu")
    vllm_rows = run_lm_eval_tasks(exported, None, {**spec, "backend": "vllm", "vllm_kwargs": ENGINE_KW})
    assert [(r["split"], r["metric"]) for r in vllm_rows] == [("toy_mc", "acc")]
    assert vllm_rows[0]["value"] == pytest.approx(hf_rows[0]["value"], abs=1e-12)


def test_vllm_lora_loader_refuses_a_bounded_adapter(hand_made_run: Any, capfd: pytest.CaptureFixture) -> None:
    """vLLM's own LoRA serving reads no peft_type; the saved init marker makes it refuse the bounded adapter
    (before it, vLLM served gd_sine as plain LoRA without a word). Its plain-LoRA sibling still loads.
    vLLM's worker raises the reason; the engine then stops and the caller gets a generic EngineCore error."""
    from vllm import LLM, SamplingParams
    from vllm.lora.request import LoRARequest

    llm = LLM(model=str(hand_made_run.target_dir), dtype="float32", enforce_eager=True, gpu_memory_utilization=0.2,
              enable_lora=True, max_lora_rank=8, max_model_len=512, **ENGINE_KW)
    try:
        params = SamplingParams(max_tokens=1, temperature=0.0)
        ckpts = hand_made_run.run_dir / "checkpoints"
        llm.generate(["The quick brown fox"], params, lora_request=LoRARequest("lora", 1, str(ckpts / "gd_lora")),
                     use_tqdm=False)
        with pytest.raises(Exception):  # noqa: B017 (vLLM re-raises whatever its worker hit as a generic error)
            llm.generate(["The quick brown fox"], params,
                         lora_request=LoRARequest("sine", 2, str(ckpts / "gd_sine")), use_tqdm=False)
        logs = capfd.readouterr()
        assert "does not support init_lora_weights='harness_bounded_lora_not_plain_lora'" in logs.out + logs.err
    finally:
        llm.llm_engine.engine_core.shutdown()
