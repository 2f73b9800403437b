"""`harness study`: every method searched with one budget, selected at matched utility, confirmed on fresh seeds."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """`harness study`'s arguments."""
    parser.add_argument("spec", help="study spec (YAML, e.g. jobs/study_quickstart.yaml) or a job spec")
    parser.add_argument("--space", help="search-space overrides (YAML: params, methods.<name>); default spaces "
                        "come with every bound and objective")
    parser.add_argument("--out", help="output directory (default: the study's `out`, results/study-<name>)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY.PATH=VALUE",
                        help="override a field of the job spec (repeatable)")
    parser.add_argument("--dry-run", action="store_true",
                        help="print the plan (trainings, GPU-hours, memory) offline")
    parser.add_argument("--resume", action="store_true", help="continue an interrupted study in --out: finished "
                        "trials, searches and confirmation trainings are kept")


def main(args: argparse.Namespace) -> int:
    """Run the study (or print its plan with `--dry-run`); say where the results went."""
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
