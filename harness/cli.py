"""Command line: parse, load the spec, call one function, print where the results went.

Exit codes: 0 ok, 1 a failed run, 2 bad input (spec, data, model).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from harness.errors import HarnessError


def _run(args: argparse.Namespace) -> int:
    from harness.spec import load_spec

    spec = load_spec(args.spec, args.set)
    if args.out:
        spec = spec.model_copy(update={"out": args.out})
    if args.dry_run:
        from harness.plan import describe_plan

        print(describe_plan(spec))
        return 0
    from harness.pipeline import run_job

    result = run_job(spec)
    print(result.summary)
    print(f"results: {result.out_dir}")
    return 0


def _data_synth(args: argparse.Namespace) -> int:
    from harness.cli_data import synth_command

    path = synth_command(args.benchmark, args.out, args.seed)
    print(f"wrote synthetic {args.benchmark} to {path}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The `harness` argument parser."""
    parser = argparse.ArgumentParser(prog="harness", description="Bounded parameter-efficient unlearning harness")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run a job spec: unlearn with each method, score, write results")
    run.add_argument("spec", help="job spec (YAML)")
    run.add_argument("--out", help="output directory (overrides the spec's `out`)")
    run.add_argument("--set", action="append", default=[], metavar="KEY.PATH=VALUE",
                     help="override a spec field by its dotted path (repeatable)")
    run.add_argument("--dry-run", action="store_true", help="validate and print the plan without loading weights")
    run.set_defaults(func=_run)

    data = sub.add_parser("data", help="benchmark data utilities")
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
    try:
        return args.func(args)
    except HarnessError as err:
        print(f"error: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
