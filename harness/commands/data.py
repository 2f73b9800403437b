"""`harness data synth BENCHMARK --out DIR`: write a benchmark's synthetic set as files."""

from __future__ import annotations

import argparse
from pathlib import Path

from harness.benchmarks.muse.data import write_muse
from harness.benchmarks.muse.synth import SyntheticMuseSpec, generate_muse
from harness.benchmarks.tdec.data import write_tdec
from harness.benchmarks.tdec.synth import SyntheticTdecSpec, generate_tdec
from harness.benchmarks.tofu.data import write_tofu
from harness.benchmarks.tofu.synth import SyntheticTofuSpec, generate_tofu
from harness.benchmarks.vision.synth import SyntheticCifarSpec, generate_cifar100, write_cifar100
from harness.core.errors import DataError
from harness.core.io import ensure_writable_dir

SYNTH_BENCHMARKS = ("tofu", "muse", "tdec", "cifar100")


def synth_command(benchmark: str, out: str, seed: int = 0) -> Path:
    """Write the synthetic set of `benchmark` (default size) under `out`, in the published file layout."""
    if benchmark not in SYNTH_BENCHMARKS:
        raise DataError(f"unknown benchmark {benchmark!r} for `harness data synth` "
                        f"(known: {', '.join(SYNTH_BENCHMARKS)})")
    ensure_writable_dir(out)
    if benchmark == "tofu":
        return write_tofu(generate_tofu(SyntheticTofuSpec(), seed), out)
    if benchmark == "muse":
        return write_muse(generate_muse(SyntheticMuseSpec(), seed), out)
    if benchmark == "cifar100":
        return write_cifar100(generate_cifar100(SyntheticCifarSpec(), seed), out)

    return write_tdec(generate_tdec(SyntheticTdecSpec(), seed), out)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """`harness data`'s subcommand (`synth`) and its arguments."""
    sub = parser.add_subparsers(dest="data_command", required=True)
    synth = sub.add_parser("synth", help="write a synthetic benchmark set as files")
    synth.add_argument("benchmark", choices=["tofu", "muse", "tdec", "cifar100"])
    synth.add_argument("--out", required=True, help="directory to write")
    synth.add_argument("--seed", type=int, default=0)


def main(args: argparse.Namespace) -> int:
    """`harness data synth`: write the set; say where."""
    path = synth_command(args.benchmark, args.out, args.seed)
    print(f"wrote synthetic {args.benchmark} to {path}")
    return 0
