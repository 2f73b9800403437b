"""`harness jobs status|logs|stop ID`: a job submitted with `harness submit` (harness.commands.submit)."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """`harness jobs`' subcommands and their arguments."""
    sub = parser.add_subparsers(dest="jobs_command", required=True)
    for name, text in (("status", "show a job's status"), ("logs", "print a job's logs"), ("stop", "stop a job")):
        j = sub.add_parser(name, help=text)
        j.add_argument("job_id", metavar="ID", help="job id printed by `harness submit`")
        j.add_argument("--address", help="Jobs API address (default: RAY_API_SERVER_ADDRESS or RAY_ADDRESS)")


def main(args: argparse.Namespace) -> int:
    """Print the job's status or logs, or stop it."""
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
