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

from harness.eval.backend import LoglikRequest  # noqa: E402
from harness.eval.hf_backend import HFBackend  # noqa: E402
from harness.eval.lm_eval_tasks import run_lm_eval_tasks  # noqa: E402
from harness.eval.vllm_backend import VLLMBackend  # noqa: E402
from harness.export import export_method  # noqa: E402
from harness.models import load_pretrained  # noqa: E402

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
