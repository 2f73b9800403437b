"""Command line: parse, load the spec, call one function, print where the results went.

Each command's module is imported when that command runs, so `harness --help` loads no torch, Ray or pandas.

Exit codes: 0 ok, 1 a failed run, 2 bad input (spec, data, model), 130 stopped by SIGINT (Ctrl-C), 143 stopped by
SIGTERM (harness.core.signals).
"""

from __future__ import annotations

import argparse
import functools
import sys
from collections.abc import Sequence

from harness.config import parse_model_arg
from harness.core.console import configure_console
from harness.core.errors import HarnessError, SpecError
from harness.core.ray_env import stop_ray
from harness.core.signals import cleaning_up, describe, exit_code, sigterm_raises


def _run(args: argparse.Namespace) -> int:
    from harness.spec import load_spec

    spec = load_spec(args.spec, args.set)
    if args.out:
        spec = spec.model_copy(update={"out": args.out})
    if args.dry_run:
        from harness.commands.plan import describe_plan

        print(describe_plan(spec))
        return 0
    from harness.pipeline.job import run_job

    result = run_job(spec, overwrite=args.overwrite, resume=args.resume)
    print(result.summary)
    print(f"results: {result.out_dir}")
    return 0


def _eval(args: argparse.Namespace) -> int:
    from harness.commands.eval import adapter_source, eval_job
    from harness.spec import read_spec_data, validate_spec

    overrides = list(args.set)
    if args.backend:
        overrides.append(f"eval.backend={args.backend}")
    if args.workers:
        overrides.append(f"eval.workers={args.workers}")
    models = [parse_model_arg(text) for text in args.model]
    if args.adapter:
        models.append(adapter_source(args.adapter))
    data = read_spec_data(args.spec, overrides)
    data["models"] = [*(data.get("models") or []), *(m.model_dump(exclude_defaults=True) for m in models)]
    if not data["models"]:
        raise SpecError(f"{args.spec}: no model to score: pass --model NAME=SOURCE or --adapter DIR, or list "
                        "`models:` in the spec")
    spec = validate_spec(data, args.spec)
    spec = spec.model_copy(update={"out": args.out or f"{spec.out}-eval"})
    result = eval_job(spec, overwrite=args.overwrite, resume=args.resume)
    print(result.summary)
    print(f"results: {result.out_dir}")
    return 0


def _export(args: argparse.Namespace) -> int:
    from harness.commands.export import export_method

    path = export_method(args.run_dir, args.method, args.out, args.seed)
    print(f"exported {args.method} of {args.run_dir}: {path} (merged safetensors, config, tokenizer, README.md)")
    return 0


def _tune(args: argparse.Namespace) -> int:
    from pathlib import Path

    from harness.commands.tune import load_space, run_tune
    from harness.spec import load_spec

    spec = load_spec(args.spec, args.set)
    space = load_space(args.space)
    out = Path(args.out or f"results/tune-{spec.name}")
    result = run_tune(spec, space, out, trials=args.trials, resume=args.resume)
    print((result / "pareto.md").read_text())
    print(f"tune results: {result} (best job specs in {result / 'best'})")
    return 0


def _study(args: argparse.Namespace) -> int:
    from harness.commands.study.spec import load_study, study_out

    study, job = load_study(args.spec, args.set, args.space)
    if args.dry_run:
        from harness.commands.study.plan import describe_study

        print(describe_study(study, job))
        return 0
    from harness.commands.study.run import run_study

    out = run_study(study, job, study_out(study, args.out), resume=args.resume)
    print(f"study results: {out} (study.md, study.parquet, plots/, confirm/)")
    return 0


def _sweep(args: argparse.Namespace) -> int:
    from pathlib import Path

    from harness.commands.sweep import load_sweep, run_sweep
    from harness.spec import load_spec

    spec = load_spec(args.spec, args.set)
    sweep = load_sweep(args.space)
    out = run_sweep(spec, sweep, Path(args.out or f"results/sweep-{spec.name}"), resume=args.resume)
    print((out / "sweep.md").read_text())
    print(f"sweep results: {out} (sweep.parquet, sweep.md, plots/curves.png, plots/tradeoff.png)")
    return 0


def _report(args: argparse.Namespace) -> int:
    from harness.commands.report import write_report

    path = write_report(args.dirs, args.out)
    print(f"report: {path} (and {path.with_suffix('.html')})")
    return 0


def _nightly(args: argparse.Namespace) -> int:
    from harness.commands.nightly import run_suite

    result = run_suite(args.suite, history_path=args.history, baseline=args.baseline, overrides=args.set,
                       out=args.out, resume=args.resume)
    n = len(result.regressions)
    print(f"nightly run {result.run_id}: {n} regression(s) against {result.baseline}")
    print(f"report: {result.report}")
    return 1 if result.regressed else 0


def _data_synth(args: argparse.Namespace) -> int:
    from harness.commands.data import synth_command

    path = synth_command(args.benchmark, args.out, args.seed)
    print(f"wrote synthetic {args.benchmark} to {path}")
    return 0


def _submit(args: argparse.Namespace) -> int:
    from harness.commands.submit import job_status, submit_job

    job_id = submit_job(args.spec, args.address, args.set, wait=args.wait, out=args.out, overwrite=args.overwrite)
    if not args.wait:
        return 0
    return 0 if job_status(args.address, job_id).status == "SUCCEEDED" else 1


def _jobs(args: argparse.Namespace) -> int:
    from harness.commands.submit import job_logs, job_status, stop_job

    if args.jobs_command == "status":
        state = job_status(args.address, args.job_id)
        print(f"{state.job_id}: {state.status}" + (f" ({state.message})" if state.message else ""))
    elif args.jobs_command == "logs":
        print(job_logs(args.address, args.job_id), end="")
    else:
        stopped = stop_job(args.address, args.job_id)
        print(f"{args.job_id}: " + ("stop requested" if stopped else "already finished"))
    return 0


def _cluster_check(args: argparse.Namespace) -> int:
    from harness.commands.cluster import check_cluster

    problems = check_cluster(args.config, args.jobs)
    if problems:
        print(f"{args.config}: {len(problems)} problem(s)")
        for p in problems:
            print(f"  - {p}")
        return 2
    print(f"OK: {args.config} passes Ray's cluster schema and fits every job spec in {args.jobs or 'jobs/'}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The `harness` argument parser."""
    # `--verbose` works before or after the command (`harness --verbose run x.yaml`, `harness run x.yaml -v`).
    verbose = argparse.ArgumentParser(add_help=False)
    verbose.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                         help="show library warnings, progress bars and Ray Tune tables (hidden by default)")
    parser = argparse.ArgumentParser(prog="harness", description="Bounded parameter-efficient unlearning harness",
                                     parents=[verbose])
    sub = parser.add_subparsers(dest="command", required=True)
    command = functools.partial(sub.add_parser, parents=[verbose])

    run = command("run", help="run a job spec: unlearn with each method, score, write results")
    run.add_argument("spec", help="job spec (YAML)")
    run.add_argument("--out", help="output directory (overrides the spec's `out`)")
    run.add_argument("--set", action="append", default=[], metavar="KEY.PATH=VALUE",
                     help="override a spec field by its dotted path (repeatable)")
    run.add_argument("--dry-run", action="store_true", help="validate and print the plan without loading weights")
    run.add_argument("--overwrite", action="store_true",
                     help="replace a finished run's results in the out dir (kept until the new run finishes)")
    run.add_argument("--resume", action="store_true", help="continue the interrupted or failed run in the out dir "
                     "(same spec but resources and output): finished trainings and scores are reused")
    run.set_defaults(func=_run)

    ev = command("eval", help="score models without training (HF models, PEFT or harness adapters, a "
                        "finished run's methods) against the job's reference models; same results as run")
    ev.add_argument("spec", help="job spec (YAML): benchmark, model, reference models and eval settings")
    ev.add_argument("--model", action="append", default=[], metavar="NAME=SOURCE[,key=value...]",
                    help="a model to score (repeatable): a HF model dir or hub id, a PEFT or harness adapter dir "
                    "(base=DIR), or a finished run dir (method=NAME); see harness/scoring/load.py")
    ev.add_argument("--adapter", metavar="DIR", help="an adapter directory to score over the job's target model")
    ev.add_argument("--backend", choices=["hf", "vllm"], help="scoring backend (overrides eval.backend)")
    ev.add_argument("--workers", type=int, help="Ray scoring workers per model (overrides eval.workers)")
    ev.add_argument("--out", help="output directory (default: the spec's `out` with -eval appended)")
    ev.add_argument("--set", action="append", default=[], metavar="KEY.PATH=VALUE",
                    help="override a spec field by its dotted path (repeatable)")
    ev.add_argument("--overwrite", action="store_true",
                    help="replace a finished run's results in the out dir (kept until the new run finishes)")
    ev.add_argument("--resume", action="store_true", help="continue the interrupted or failed run in the out dir "
                    "(same spec): models already scored are not scored again")
    ev.set_defaults(func=_eval)

    export = command("export", help="write a run's method as a plain merged Hugging Face checkpoint")
    export.add_argument("run_dir", metavar="RUN_DIR", help="a finished run directory (harness run --out)")
    export.add_argument("--method", required=True, help="the method to export (a name in the run's spec)")
    export.add_argument("--seed", type=int, help="which seed's run of the method (default: the first)")
    export.add_argument("--out", required=True, help="new output directory")
    export.set_defaults(func=_export)

    tune = command("tune", help="search a method's settings with Ray Tune (Optuna + ASHA)")
    tune.add_argument("spec", help="job spec (YAML)")
    tune.add_argument("--space", required=True, help="search space (YAML, see tune_spaces/)")
    tune.add_argument("--trials", type=int, help="number of trials (overrides the space's num_samples)")
    tune.add_argument("--out", help="output directory (default results/tune-<job name>)")
    tune.add_argument("--set", action="append", default=[], metavar="KEY.PATH=VALUE", help="override a spec field")
    tune.add_argument("--resume", action="store_true", help="resume an interrupted search in --out")
    tune.set_defaults(func=_tune)

    study = command("study", help="every method of a job searched with the same budget, selected at matched "
                    "utility, confirmed on fresh seeds")
    study.add_argument("spec", help="study spec (YAML, e.g. jobs/study_quickstart.yaml) or a job spec")
    study.add_argument("--space", help="search-space overrides (YAML: params, methods.<name>); default spaces come "
                       "with every bound and objective")
    study.add_argument("--out", help="output directory (default: the study's `out`, results/study-<name>)")
    study.add_argument("--set", action="append", default=[], metavar="KEY.PATH=VALUE",
                       help="override a field of the job spec (repeatable)")
    study.add_argument("--dry-run", action="store_true", help="print the plan (trainings, GPU-hours, memory) offline")
    study.add_argument("--resume", action="store_true", help="continue an interrupted study in --out: finished "
                       "trials, searches and confirmation trainings are kept")
    study.set_defaults(func=_study)

    sweep = command("sweep", help="a grid (or random) sweep over spec fields: every configuration x seed")
    sweep.add_argument("spec", help="job spec (YAML)")
    sweep.add_argument("--space", required=True, help="sweep file (YAML, see harness/commands/sweep.py and sweeps/)")
    sweep.add_argument("--out", help="output directory (default results/sweep-<job name>)")
    sweep.add_argument("--set", action="append", default=[], metavar="KEY.PATH=VALUE", help="override a spec field")
    sweep.add_argument("--resume", action="store_true", help="continue an interrupted sweep in --out: finished jobs "
                       "are kept, the interrupted one resumes (same spec and sweep file)")
    sweep.set_defaults(func=_sweep)

    report = command("report", help="compare finished runs side by side (report.md + report.html)")
    report.add_argument("dirs", nargs="+", metavar="DIR", help="run directories (each with metrics.parquet)")
    report.add_argument("--out", help="output directory (default: report/ under the runs' common parent)")
    report.set_defaults(func=_report)

    nightly = command("nightly", help="run a suite, compare with the baseline; exit 1 on a regression")
    nightly.add_argument("suite", help="suite spec (YAML), e.g. jobs/nightly.yaml")
    nightly.add_argument("--history", help="history parquet (overrides the suite's `history`)")
    nightly.add_argument("--baseline", metavar="RUN_ID", help="pin the baseline to this run id ('latest': the last)")
    nightly.add_argument("--set", action="append", default=[], metavar="KEY.PATH=VALUE",
                         help="override a field of every job spec (repeatable)")
    nightly.add_argument("--out", help="output directory (overrides the suite's `out`)")
    nightly.add_argument("--resume", action="store_true", help="continue the latest unfinished nightly run (no "
                         "report yet) instead of starting a new one: finished jobs are kept, the interrupted resumes")
    nightly.set_defaults(func=_nightly)

    submit = command("submit", help="run a job spec on a Ray cluster through the Ray Jobs API")
    submit.add_argument("spec", help="job spec (YAML) inside the project directory, which is uploaded")
    submit.add_argument("--address", help="Jobs API address, e.g. http://HEAD:8265 "
                        "(default: RAY_API_SERVER_ADDRESS or RAY_ADDRESS)")
    submit.add_argument("--set", action="append", default=[], metavar="KEY.PATH=VALUE",
                        help="override a spec field by its dotted path (repeatable)")
    submit.add_argument("--out", help="results directory on the cluster (passed to `harness run --out`)")
    submit.add_argument("--overwrite", action="store_true", help="pass --overwrite to `harness run`")
    submit.add_argument("--wait", action="store_true", help="follow the logs until the job ends; exit 1 unless it "
                        "succeeded")
    submit.set_defaults(func=_submit)

    jobs = command("jobs", help="status, logs or stop of a submitted job")
    jobs_sub = jobs.add_subparsers(dest="jobs_command", required=True)
    for name, text in (("status", "show a job's status"), ("logs", "print a job's logs"), ("stop", "stop a job")):
        j = jobs_sub.add_parser(name, help=text)
        j.add_argument("job_id", metavar="ID", help="job id printed by `harness submit`")
        j.add_argument("--address", help="Jobs API address (default: RAY_API_SERVER_ADDRESS or RAY_ADDRESS)")
        j.set_defaults(func=_jobs)

    cluster = command("cluster", help="Ray cluster utilities")
    cluster_sub = cluster.add_subparsers(dest="cluster_command", required=True)
    check = cluster_sub.add_parser("check", help="validate a cluster config (Ray's schema) and that the jobs fit")
    check.add_argument("config", help="Ray cluster launcher config, e.g. cluster.yaml")
    check.add_argument("--jobs", help="directory of job specs to check (default: jobs/ beside the config)")
    check.set_defaults(func=_cluster_check)

    data = command("data", help="benchmark data utilities")
    data_sub = data.add_subparsers(dest="data_command", required=True)
    synth = data_sub.add_parser("synth", help="write a synthetic benchmark set as files")
    synth.add_argument("benchmark", choices=["tofu", "muse", "tdec", "cifar100"])
    synth.add_argument("--out", required=True, help="directory to write")
    synth.add_argument("--seed", type=int, default=0)
    synth.set_defaults(func=_data_synth)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `harness` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    configure_console(getattr(args, "verbose", False))
    with sigterm_raises():
        try:
            return args.func(args)
        except HarnessError as err:
            print(f"error: {err}", file=sys.stderr)
            return err.exit_code
        except KeyboardInterrupt as err:  # Ctrl-C, or SIGTERM (harness.core.signals.Interrupted)
            if "ray" in sys.modules:  # Ray workers and actors of a command not inside a job (tune, between jobs)
                with cleaning_up():
                    stop_ray()
            print(f"interrupted ({describe(err)}): harness {args.command} stopped", file=sys.stderr, flush=True)
            return exit_code(err)


if __name__ == "__main__":
    sys.exit(main())
