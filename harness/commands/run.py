"""`harness run SPEC`: run a job spec (unlearn with each method, score, write results), or print its plan."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """`harness run`'s arguments."""
    parser.add_argument("spec", help="job spec (YAML)")
    parser.add_argument("--out", help="output directory (overrides the spec's `out`)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY.PATH=VALUE",
                        help="override a spec field by its dotted path (repeatable)")
    parser.add_argument("--dry-run", action="store_true",
                        help="validate and print the plan without loading weights")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace a finished run's results in the out dir (kept until the new run finishes)")
    parser.add_argument("--resume", action="store_true", help="continue the interrupted or failed run in the out "
                        "dir (same spec but resources and output): finished trainings and scores are reused")


def main(args: argparse.Namespace) -> int:
    """Run the job (or print its plan with `--dry-run`); print its summary and where the results went."""
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
