"""A whole job on a very small configuration: the results contract, divergence, and the reference cache."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from scipy import stats as scipy_stats

from harness.pipeline.job import run_job
from harness.results.contract import EXAMPLE_COLUMNS, GENERATION_COLUMNS, METRIC_COLUMNS, TRAIN_LOG_COLUMNS
from harness.spec import load_spec, validate_spec

#: A whole job through Ray Train and scoring (about 45 s): end to end, so `make test` runs it and the quick
#: `make test-fast` loop does not.
pytestmark = pytest.mark.e2e


def small_spec(tmp: Path, **methods_lr: float) -> dict:
    """A job that runs in seconds: 10 authors, short reference training, few steps, short generations."""
    return {
        "name": "small",
        "seeds": [0, 1],
        "out": str(tmp / "out"),
        "benchmark": {"synthetic": {"n_authors": 10, "qa_per_author": 2, "n_real_authors": 4, "n_world_facts": 4},
                      "data_dir": str(tmp / "data")},
        "reference": {"cache_dir": str(tmp / "cache"), "train": {"epochs": 2, "batch_size": 16}},
        "train": {"epochs": 2, "batch_size": 4, "lr": 1e-3},
        "eval": {"max_new_tokens": 8, "bootstrap": 50},
        "methods": [{"name": name, "adapter": {"bound": bound}, "train": {"lr": lr}}
                    for name, (bound, lr) in methods_lr.items()],
    }


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, object]:
    tmp = tmp_path_factory.mktemp("job")
    spec = validate_spec(small_spec(tmp, gd_lora=("none", 1e-3), gd_sine=("sine", 1e-3), blowup=("none", 1e30)))
    return tmp, run_job(spec, progress=False)


def test_results_contract_files_and_columns(finished_run: tuple[Path, object]) -> None:
    tmp, result = finished_run
    out = result.out_dir
    for name in ("spec.yaml", "env.json", "metrics.parquet", "train_log.parquet", "summary.md", "summary.parquet",
                 "examples.parquet", "generations.parquet", "plots/training.png", "plots/metrics.png",
                 "plots/pareto.png", "pareto.parquet"):
        assert (out / name).is_file(), name
    assert not list(out.rglob("*.tmp")), "temporary files left behind"
    for name, cols in (("metrics", METRIC_COLUMNS), ("train_log", TRAIN_LOG_COLUMNS),
                       ("examples", EXAMPLE_COLUMNS), ("generations", GENERATION_COLUMNS)):
        df = pd.read_parquet(out / f"{name}.parquet")
        assert list(df.columns[: len(cols)]) == cols, name
        assert len(df) > 0, name
    for method in ("gd_lora", "gd_sine"):
        for seed in (0, 1):
            ckpt = out / "checkpoints" / method / f"seed{seed}"
            assert {"adapter_model.safetensors", "adapter_config.json", "bound_config.json"} <= {
                p.name for p in ckpt.iterdir()}


def test_several_methods_get_a_pareto_front_of_forget_quality_and_model_utility(
        finished_run: tuple[Path, object]) -> None:
    _, result = finished_run
    pareto = pd.read_parquet(result.out_dir / "pareto.parquet")
    assert set(pareto["method"]) == {"target", "retain", "gd_lora", "gd_sine"}  # blowup diverged: not scored
    assert pareto.loc[pareto["reference"], "method"].tolist() == ["target", "retain"]
    assert pareto["pareto"].any() and not pareto.loc[pareto["reference"], "pareto"].any()
    front = ", ".join(pareto.loc[pareto["pareto"], "method"])
    assert f"among the methods: {front} (plots/pareto.png)" in (result.out_dir / "summary.md").read_text()


def test_every_model_gets_every_tofu_metric(finished_run: tuple[Path, object]) -> None:
    _, result = finished_run
    m = pd.read_parquet(result.out_dir / "metrics.parquet")
    for method in ("target", "retain", "gd_lora", "gd_sine"):
        got = set(m[m["method"] == method]["metric"])
        assert {"prob", "rouge_l_recall", "truth_ratio", "forget_quality", "model_utility"} <= got, method
    fq = m[(m["metric"] == "forget_quality") & (m["method"] == "retain")]["value"].item()
    assert fq == pytest.approx(1.0)  # the retain model against itself
    assert m[m["metric"] == "prob"][["ci_low", "ci_high"]].notna().all().all()


def test_forget_quality_recomputes_from_examples(finished_run: tuple[Path, object]) -> None:
    from scipy.stats import ks_2samp

    _, result = finished_run
    ex = pd.read_parquet(result.out_dir / "examples.parquet")
    m = pd.read_parquet(result.out_dir / "metrics.parquet")
    r = ex[(ex["split"] == "forget10") & (ex["metric"] == "truth_ratio")]
    for seed in (0, 1):
        mine = r[(r["method"] == "gd_sine") & (r["seed"] == seed)]["value"]
        expected = ks_2samp(mine, r[r["method"] == "retain"]["value"]).pvalue
        got = m[(m["method"] == "gd_sine") & (m["metric"] == "forget_quality") & (m["seed"] == seed)]["value"].item()
        assert got == pytest.approx(expected)


def test_divergence_is_recorded_and_the_run_goes_on(finished_run: tuple[Path, object]) -> None:
    _, result = finished_run
    assert result.diverged == {"gd_lora": False, "gd_sine": False, "blowup": True}
    m = pd.read_parquet(result.out_dir / "metrics.parquet")
    div = m[m["metric"] == "diverged"].groupby("method")["value"]
    assert div.sum()["blowup"] == 2.0 and div.sum()["gd_lora"] == 0.0 and div.count()["blowup"] == 2
    assert m[(m["method"] == "blowup") & (m["metric"] != "diverged")].empty
    summary = (result.out_dir / "summary.md").read_text()
    assert "| blowup |" in summary and "| 2/2 |" in summary and "| 0/2 |" in summary


def test_train_log_has_every_step_once(finished_run: tuple[Path, object]) -> None:
    _, result = finished_run
    log = pd.read_parquet(result.out_dir / "train_log.parquet")
    assert set(log["seed"]) == {0, 1}
    for (method, seed), group in log.groupby(["method", "seed"]):
        assert group["step"].tolist() == list(range(len(group))), (method, seed)
    ok = log[log["method"] != "blowup"]
    assert (ok[["grad_norm", "adapter_norm", "logit_norm", "tokens_per_s"]] > 0).all().all()


def test_spec_and_env_are_written_for_reproduction(finished_run: tuple[Path, object]) -> None:
    _, result = finished_run
    again = load_spec(result.out_dir / "spec.yaml")
    assert [m.name for m in again.methods] == ["gd_lora", "gd_sine", "blowup"]
    env = json.loads((result.out_dir / "env.json").read_text())
    assert env["seeds"] == [0, 1] and "torch" in env["packages"] and env["finished"] and "timings_s" in env
    assert set(env["run_seconds"]) == {f"{m}/seed{s}" for m in ("gd_lora", "gd_sine", "blowup") for s in (0, 1)}


def test_summary_is_the_mean_and_bootstrap_interval_over_seeds(finished_run: tuple[Path, object]) -> None:
    """The summary cell of every metric is the mean of the per-seed values and the 95% percentile bootstrap
    interval of that mean (scipy.stats.bootstrap, called here directly), inside the seeds' own range."""
    _, result = finished_run
    m = pd.read_parquet(result.out_dir / "metrics.parquet")
    stats = pd.read_parquet(result.out_dir / "summary.parquet").set_index(["method", "column"])
    summary = (result.out_dir / "summary.md").read_text()
    for column, (split, metric) in {"forget truth ratio": ("forget10", "truth_ratio"),
                                    "model utility": ("all", "model_utility")}.items():
        values = m[(m["method"] == "gd_sine") & (m["split"] == split) & (m["metric"] == metric)].sort_values("seed")
        a, b = values["value"].tolist()
        ci = scipy_stats.bootstrap(([a, b],), np.mean, confidence_level=0.95, n_resamples=9999, method="percentile",
                                   rng=np.random.default_rng(0)).confidence_interval
        row = stats.loc[("gd_sine", column)]
        assert row["n"] == 2 and list(row["values"]) == pytest.approx([a, b])
        assert (row["mean"], row["ci_low"], row["ci_high"]) == pytest.approx(((a + b) / 2, ci.low, ci.high))
        assert min(a, b) <= row["ci_low"] <= row["ci_high"] <= max(a, b)
    lora = stats.loc[("gd_lora", "max grad norm")]
    log = pd.read_parquet(result.out_dir / "train_log.parquet")
    per_seed = log[log["method"] == "gd_lora"].groupby("seed")["grad_norm"].max()
    assert lora["mean"] == pytest.approx(per_seed.mean())
    assert "| target | 1 |" in summary and "| gd_sine | 2 |" in summary
    assert "95% percentile bootstrap interval" in summary


def test_second_run_reuses_cached_reference_models(finished_run: tuple[Path, object]) -> None:
    tmp, _ = finished_run
    data = small_spec(tmp, gd_sine=("sine", 1e-3))
    data["out"] = str(tmp / "out2")
    data["train"]["max_steps"] = 1
    data["seeds"] = [0]  # the references are the same for any seeds: one training and one scoring suffice
    run_job(validate_spec(data), progress=False)
    env = json.loads((tmp / "out2" / "env.json").read_text())
    first = json.loads((tmp / "out" / "env.json").read_text())
    assert env["timings_s"]["references_s"] < first["timings_s"]["references_s"]
    assert len(list((tmp / "cache").glob("builtin-tiny-llama-*"))) == 2
    assert yaml.safe_load((tmp / "out2" / "spec.yaml").read_text())["methods"][0]["name"] == "gd_sine"


def test_the_run_moved_from_its_staging_directory_into_the_out_dir(finished_run: tuple[Path, object]) -> None:
    from harness.results.run_dir import read_status
    from harness.results.run_record import load_finished_run

    tmp, result = finished_run
    assert read_status(result.out_dir)["state"] == "finished"
    assert [p.name for p in tmp.iterdir() if p.name.startswith(".out.") and not p.name.endswith(".lock")] == []
    run = load_finished_run(result.out_dir)  # models.json's adapter paths point into the out dir, not the staging
    adapter = run.method_model("gd_sine", 1).adapter
    assert adapter is not None and Path(adapter) == result.out_dir / "checkpoints" / "gd_sine" / "seed1"
    assert (Path(adapter) / "adapter_model.safetensors").is_file()
