"""lm-evaluation-harness tasks on a scored model: local YAML tasks over local data, checked by our own scoring.

The tasks are written by the test (`dataset_path: json` over JSON-lines files, found through
`include_path`), so nothing is downloaded. Expected values are computed here independently: the
multiple-choice accuracy from our own log-likelihoods of each choice (lm-eval's convention: the
context + choice string encoded whole, the context's tokens dropped), the exact match from our own
greedy continuations.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

pytest.importorskip("lm_eval")

from harness.adapters import load_adapter  # noqa: E402
from harness.commands.export import export_method  # noqa: E402
from harness.config import LmEvalSpec
from harness.core.errors import DataError, SpecError  # noqa: E402
from harness.models.text import load_pretrained  # noqa: E402
from harness.scoring.lm_eval import Z_95, result_rows, run_lm_eval_tasks  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")

N_MC = 16
GEN_PROMPTS = ["The quick brown", "Question: Who wrote", "Basil Mahfouz", "The author wrote it in",
               "Answer: The", "Kuwait City"]


def _mc_docs() -> list[dict[str, Any]]:
    words = [" fox", " dog", " book", " Paris", " author", " Kuwait", " quick", " lazy"]
    return [{"question": f"Who wrote the book number {i}?", "choices": [words[i % 8], words[(i + 3) % 8],
                                                                        words[(i + 5) % 8]], "answer": i % 3}
            for i in range(N_MC)]


def _write_task(dir_: Path, name: str, data: Path, body: str) -> None:
    (dir_ / f"{name}.yaml").write_text(f"""task: {name}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
  cache_dir: {dir_.parent / "hf_datasets"}
test_split: test
{body}""")


def _mc_log_likelihoods(model: torch.nn.Module, tokenizer: Any, doc: dict[str, Any]) -> list[float]:
    context = f"Question: {doc['question']}\nAnswer:"
    out = []
    for choice in doc["choices"]:
        ids = tokenizer(context + choice)["input_ids"]
        n_ctx = len(tokenizer(context)["input_ids"])
        with torch.no_grad():
            logp = torch.log_softmax(model(torch.tensor([ids])).logits[0].double(), -1)
        out.append(float(sum(logp[t - 1, ids[t]] for t in range(n_ctx, len(ids)))))
    return out


def _greedy(model: torch.nn.Module, tokenizer: Any, prompt: str, max_new: int = 8) -> str:
    ids = torch.tensor([tokenizer(prompt)["input_ids"]])
    with torch.no_grad():
        new = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new, do_sample=False,
                             pad_token_id=tokenizer.pad_token_id)[0, ids.shape[1]:].tolist()
    if tokenizer.eos_token_id in new:
        new = new[:new.index(tokenizer.eos_token_id)]
    return tokenizer.decode(new, skip_special_tokens=True).split("\n")[0]


@pytest.fixture(scope="module")
def scored(hand_made_run: Any, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The run's gd_sine as harness scores it (adapter attached) and exported, plus tasks and expected values."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # module fixtures run before the per-test `one_thread`
    try:
        return _scored(hand_made_run, tmp_path_factory.mktemp("lm_eval"))
    finally:
        torch.set_num_threads(threads)


def _scored(hand_made_run: Any, tmp: Path) -> dict[str, Any]:
    model, tokenizer = load_pretrained(str(hand_made_run.target_dir))
    load_adapter(model, hand_made_run.run_dir / "checkpoints" / "gd_sine")
    model.eval()
    exported = export_method(hand_made_run.run_dir, "gd_sine", tmp / "exported")

    docs = _mc_docs()
    (tmp / "mc.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    correct = [int(np.argmax(_mc_log_likelihoods(model, tokenizer, d)) == d["answer"]) for d in docs]
    greedy = [_greedy(model, tokenizer, p) for p in GEN_PROMPTS]
    assert len(set(greedy)) > 1  # the continuations depend on the prompt
    # every other target is the model's own continuation: exact match 0.5 if lm-eval generates as we do
    gen_docs = [{"prompt": p, "target": g if i % 2 == 0 else g + " never"} for i, (p, g) in
                enumerate(zip(GEN_PROMPTS, greedy))]
    (tmp / "gen.jsonl").write_text("".join(json.dumps(d) + "\n" for d in gen_docs))
    tasks = tmp / "tasks"
    tasks.mkdir()
    _write_task(tasks, "toy_mc", tmp / "mc.jsonl", """output_type: multiple_choice
doc_to_text: "Question: {{question}}\\nAnswer:"
doc_to_choice: "{{choices}}"
doc_to_target: "{{answer}}"
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
""")
    _write_task(tasks, "toy_gen", tmp / "gen.jsonl", """output_type: generate_until
doc_to_text: "{{prompt}}"
doc_to_target: "{{target}}"
generation_kwargs:
  until: ["\\n"]
  max_gen_toks: 8
  do_sample: false
metric_list:
  - metric: exact_match
    aggregation: mean
    higher_is_better: true
""")
    spec = LmEvalSpec(tasks=["toy_mc", "toy_gen"], include_path=str(tasks), include_defaults=False, batch_size=4)
    return {"model": model, "tokenizer": tokenizer, "exported": exported, "spec": spec, "correct": correct}


def _by_key(rows: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(r["split"], r["metric"]): r for r in rows}


def _assert_expected(rows: list[dict[str, Any]], correct: list[int]) -> None:
    got = _by_key(rows)
    assert set(got) == {("toy_mc", "acc"), ("toy_gen", "exact_match")}
    acc = got[("toy_mc", "acc")]
    p, n = float(np.mean(correct)), len(correct)
    assert 0 < p < 1 and acc["value"] == pytest.approx(p, abs=1e-12)
    half_width = Z_95 * math.sqrt(p * (1 - p) * n / (n - 1) / n)  # lm-eval's mean stderr (ddof 1)
    assert (acc["ci_low"], acc["ci_high"]) == pytest.approx((p - half_width, p + half_width), abs=1e-9)
    assert got[("toy_gen", "exact_match")]["value"] == pytest.approx(0.5, abs=1e-12)
    assert all(r["benchmark"] == "lm_eval" for r in rows)


def test_in_memory_model_with_a_bounded_adapter(scored: dict[str, Any]) -> None:
    before = torch.random.get_rng_state()
    rows = run_lm_eval_tasks(scored["model"], scored["tokenizer"], scored["spec"])
    _assert_expected(rows, scored["correct"])
    assert torch.equal(torch.random.get_rng_state(), before)  # lm-eval's global seeding is undone


def test_exported_model_directory_scores_the_same(scored: dict[str, Any]) -> None:
    rows = run_lm_eval_tasks(scored["exported"], None, scored["spec"], device="cpu")
    _assert_expected(rows, scored["correct"])


def test_limit_and_list_shorthand(scored: dict[str, Any]) -> None:
    spec = scored["spec"].model_copy(update={"tasks": ["toy_mc"], "limit": 4.0})
    (row,) = run_lm_eval_tasks(scored["model"], scored["tokenizer"], spec)
    assert row["value"] == pytest.approx(float(np.mean(scored["correct"][:4])), abs=1e-12)
    assert LmEvalSpec.model_validate(["a", "b"]).tasks == ["a", "b"]
    assert run_lm_eval_tasks(scored["model"], scored["tokenizer"], []) == []


def test_bad_task_or_path(scored: dict[str, Any], tmp_path: Path) -> None:
    spec = scored["spec"].model_copy(update={"tasks": ["toy_mc", "no_such_task"]})
    with pytest.raises(SpecError, match=r"unknown lm-eval task\(s\) \['no_such_task'\]"):
        run_lm_eval_tasks(scored["model"], scored["tokenizer"], spec)
    spec = scored["spec"].model_copy(update={"include_path": str(tmp_path / "missing")})
    with pytest.raises(DataError, match="include_path .*missing is not a directory"):
        run_lm_eval_tasks(scored["model"], scored["tokenizer"], spec)
    with pytest.raises(ValueError, match="extra"):
        LmEvalSpec.model_validate({"tasks": ["a"], "shots": 5})


def test_result_rows_names_and_intervals() -> None:
    rows = result_rows({"gsm": {"alias": "gsm", "exact_match,strict-match": 0.25,
                                "exact_match_stderr,strict-match": 0.1,
                                "exact_match,flexible-extract": 0.5, "exact_match_stderr,flexible-extract": "N/A",
                                "sample_len": 8}})
    got = _by_key(rows)
    assert set(got) == {("gsm", "exact_match_strict_match"), ("gsm", "exact_match_flexible_extract")}
    strict = got[("gsm", "exact_match_strict_match")]
    assert (strict["ci_low"], strict["ci_high"]) == pytest.approx((0.25 - Z_95 * 0.1, 0.25 + Z_95 * 0.1))
    assert math.isnan(got[("gsm", "exact_match_flexible_extract")]["ci_low"])


def test_harness_eval_stores_lm_eval_metrics_per_scored_model(scored: dict[str, Any], hand_made_run: Any,
                                                              tmp_path: Path) -> None:
    """`eval.lm_eval_tasks` in a job: metric rows (benchmark `lm_eval`) for the references and the scored model,
    equal to the expected values computed here, and a summary column per task metric."""
    import pandas as pd
    import yaml

    from harness.cli import main

    spec = tmp_path / "job.yaml"
    spec.write_text(yaml.safe_dump({
        "name": "lm", "out": str(tmp_path / "out"), "model": {"name": "builtin:tiny-llama"},
        "benchmark": {"name": "tofu", "data_dir": str(tmp_path / "data")},
        "reference": {"mode": "load", "target": str(hand_made_run.target_dir),
                      "retain": str(hand_made_run.retain_dir)},
        "eval": {"max_new_tokens": 4, "max_examples": 2, "bootstrap": 0,
                 "lm_eval_tasks": scored["spec"].model_dump()}}))
    assert main(["eval", str(spec), "--model", f"sine={hand_made_run.run_dir},method=gd_sine",
                 "--out", str(tmp_path / "out")]) == 0
    metrics = pd.read_parquet(tmp_path / "out" / "metrics.parquet")
    lm = metrics[metrics["benchmark"] == "lm_eval"]
    assert set(lm["method"]) == {"target", "retain", "sine"} and set(lm["split"]) == {"toy_mc", "toy_gen"}
    sine = lm[lm["method"] == "sine"]
    _assert_expected(sine.to_dict("records"), scored["correct"])
    assert (metrics["benchmark"] == "tofu").any()  # beside the benchmark's own metrics
    summary = (tmp_path / "out" / "summary.md").read_text()
    assert "toy_mc acc" in summary and "toy_gen exact_match" in summary


def test_lm_eval_tasks_field_and_vision_refused() -> None:
    from harness.spec import validate_spec

    spec = validate_spec({"models": [{"name": "m", "source": "/x"}], "eval": {"lm_eval_tasks": ["a", "b"]}})
    assert spec.eval.lm_eval_tasks is not None and spec.eval.lm_eval_tasks.tasks == ["a", "b"]
    with pytest.raises(SpecError, match="eval.lm_eval_tasks"):
        validate_spec({"models": [{"name": "m", "source": "/x"}], "eval": {"lm_eval_tasks": {"tasks": ["a"],
                                                                                             "shots": 2}}})


def test_a_model_scored_on_workers_is_loaded_here_for_lm_eval(scored: dict[str, Any], hand_made_run: Any) -> None:
    """With `eval.workers` > 1 the lm-eval pass loads each (model dir, adapter dir) in the driver."""
    from types import SimpleNamespace

    from harness.pipeline.context import ScoredModel
    from harness.pipeline.score import driver_model
    from harness.spec import validate_spec

    spec = validate_spec({"models": [{"name": "m", "source": "/x"}]})
    refs: Any = {0: SimpleNamespace(target_source="elsewhere")}
    adapter = hand_made_run.run_dir / "checkpoints" / "gd_sine"
    model, processor = driver_model(("sine", 0), ScoredModel(str(hand_made_run.target_dir), adapter), refs, spec)
    _assert_expected(run_lm_eval_tasks(model, processor, scored["spec"]), scored["correct"])
