"""Send a job spec to a Ray cluster through the Ray Jobs API; follow, inspect and stop submitted jobs.

`harness submit SPEC --address http://HEAD:8265` validates the spec here, uploads the project directory
(the checkout holding `harness/` and `jobs/`) as the job's `working_dir`, and runs
`python -m harness.cli run SPEC [--set ...]` on the cluster, so the uploaded code is what runs.

Token authentication (Ray 2.60): a head started by `ray.init()`, or by `ray start --head` while a token
exists (`RAY_AUTH_TOKEN`, the file named by `RAY_AUTH_TOKEN_PATH`, or `~/.ray/auth_token`) or with
`RAY_AUTH_MODE=token`, answers every dashboard request, `/api/version` included, with 401 when no
`Authorization: Bearer <token>` header comes with it and 403 when the token is wrong. Ray's
`JobSubmissionClient` adds that header only when `RAY_AUTH_MODE=token` is set in the client's own
environment. Here the token is looked up the way Ray's token loader looks it up (the same three
places, in the same order) and sent as an explicit header, whatever `RAY_AUTH_MODE` says, unless it
says `disabled`; auth failures become a `HarnessError` that says where the token goes.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import secrets
import shlex
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from harness.config import load_yaml
from harness.core.errors import HarnessError
from harness.spec import load_spec

# Files the upload leaves out (gitignore-style, relative to the project directory); Ray also skips
# what .gitignore names.
EXCLUDES = [".git", ".venv", "venv", "results", "__pycache__", "*.pyc", "*.egg-info", ".pytest_cache",
            ".ruff_cache", ".mypy_cache", ".cache", ".whl", ".ci"]
# Environment variables passed through to the job when set here (runs stay offline on the cluster too).
PASS_ENV = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE")
TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")
TOKEN_HELP = ("set RAY_AUTH_TOKEN, or RAY_AUTH_TOKEN_PATH to a file holding it, or put it in ~/.ray/auth_token "
              "(on the head node, `ray get-auth-token` prints it)")


class SubmitError(HarnessError):
    """The Ray cluster cannot be reached, refuses the token, or does not know the job."""


@dataclass(frozen=True)
class JobState:
    """A submitted job's status (`PENDING`, `RUNNING`, `SUCCEEDED`, `FAILED`, `STOPPED`) and Ray's message."""

    job_id: str
    status: str
    message: str = ""
    entrypoint: str = ""

    @property
    def terminal(self) -> bool:
        """Whether the job has finished (succeeded, failed or stopped)."""
        return self.status in TERMINAL


# ---- address and token ------------------------------------------------------------------------------


# The token source reported when no token was found anywhere.
NO_TOKEN = "no token"


def default_address() -> str | None:
    """The Jobs API address from the environment: RAY_API_SERVER_ADDRESS, else RAY_ADDRESS (as Ray's CLI)."""
    return os.environ.get("RAY_API_SERVER_ADDRESS") or os.environ.get("RAY_ADDRESS") or None


def _normalise(address: str | None) -> str:
    address = (address or default_address() or "").strip().rstrip("/")
    if not address:
        raise SubmitError("no Ray cluster address: pass --address http://HEAD:8265 "
                          "(or set RAY_API_SERVER_ADDRESS)")
    if "://" not in address:
        address = f"http://{address}"
    if not address.startswith(("http://", "https://")):
        raise SubmitError(f"Ray cluster address {address!r}: the Jobs API needs the dashboard's HTTP address, "
                          "e.g. http://HEAD:8265")
    return address


def find_token() -> tuple[str | None, str]:
    """The cluster token and where it came from, looked up as Ray 2.60's token loader does.

    Order: `RAY_AUTH_TOKEN`, then the file named by `RAY_AUTH_TOKEN_PATH` (an error when set but unreadable
    or empty), then `~/.ray/auth_token`. `RAY_AUTH_MODE=disabled` turns the lookup off.
    """
    if os.environ.get("RAY_AUTH_MODE", "").strip().lower() == "disabled":
        return None, "RAY_AUTH_MODE=disabled"
    token = os.environ.get("RAY_AUTH_TOKEN", "").strip()
    if token:
        return token, "RAY_AUTH_TOKEN"
    path_env = os.environ.get("RAY_AUTH_TOKEN_PATH", "").strip()
    if path_env:
        path = Path(path_env).expanduser()
        try:
            token = path.read_text().strip()
        except OSError as err:
            raise SubmitError(f"RAY_AUTH_TOKEN_PATH={path_env}: cannot read the token file ({err.strerror})") from None
        if not token:
            raise SubmitError(f"RAY_AUTH_TOKEN_PATH={path_env}: the token file is empty")
        return token, f"RAY_AUTH_TOKEN_PATH ({path})"
    default = Path.home() / ".ray" / "auth_token"
    try:
        token = default.read_text().strip()
    except OSError:
        return None, NO_TOKEN
    return (token, str(default)) if token else (None, NO_TOKEN)


@contextlib.contextmanager
def _explicit_address() -> Iterator[None]:
    """Ray's client lets RAY_API_SERVER_ADDRESS / RAY_ADDRESS override its `address` argument; ours wins."""
    saved = {k: os.environ.pop(k) for k in ("RAY_API_SERVER_ADDRESS", "RAY_ADDRESS") if k in os.environ}
    try:
        yield
    finally:
        os.environ.update(saved)


def _translate(err: BaseException, address: str, token_source: str, job_id: str | None = None) -> HarnessError:
    """Turn a Ray Jobs client error into a HarnessError that names the cluster and the cause."""
    import requests
    from ray.exceptions import AuthenticationError

    text = str(err)
    if isinstance(err, AuthenticationError) or "Authentication required" in text or "Authentication failed" in text:
        # Without a token any refusal means the cluster wants one; with one, a 403 means it is wrong.
        if token_source != NO_TOKEN and ("Authentication failed" in text or " 403" in text):
            return SubmitError(f"the Ray cluster at {address} rejected the token from {token_source}: "
                               f"it is not this cluster's token; {TOKEN_HELP}")
        return SubmitError(f"the Ray cluster at {address} requires a token: {TOKEN_HELP}")
    if isinstance(err, ConnectionError | requests.exceptions.ConnectionError | requests.exceptions.Timeout):
        return SubmitError(f"cannot reach the Ray Jobs API at {address}: is the head running and the dashboard "
                           "port (8265 by default) reachable? (`ray dashboard cluster.yaml` opens a tunnel)")
    if job_id is not None and "404" in text:
        return SubmitError(f"no job {job_id!r} on the Ray cluster at {address}")
    if isinstance(err, requests.exceptions.RequestException):
        return SubmitError(f"request to the Ray cluster at {address} failed: {err}")
    return SubmitError(f"the Ray cluster at {address}: {text}")


@contextlib.contextmanager
def _client(address: str | None, job_id: str | None = None) -> Iterator[Any]:
    """A JobSubmissionClient for `address` carrying the cluster token; Ray errors become HarnessErrors."""
    import requests
    from ray.exceptions import RayError
    from ray.job_submission import JobSubmissionClient

    url = _normalise(address)
    token, source = find_token()
    headers = {"Authorization": f"Bearer {token}"} if token else None
    try:
        with _explicit_address():
            client = JobSubmissionClient(url, headers=headers)
        yield client
    except (RayError, RuntimeError, ConnectionError, requests.exceptions.RequestException) as err:
        raise _translate(err, url, source, job_id) from None


# ---- project directory and entrypoint ---------------------------------------------------------------


def project_root(start: Path | None = None) -> Path:
    """The checkout uploaded as the job's working_dir: the directory holding `harness/` and `jobs/`."""
    here = (start or Path.cwd()).resolve()
    candidates = [here, *here.parents, Path(__file__).resolve().parents[2]]
    for c in candidates:
        if (c / "harness" / "__init__.py").is_file() and (c / "jobs").is_dir():
            return c
    raise SubmitError("cannot find the project directory (a checkout with harness/ and jobs/) to upload; "
                      "run harness submit from the repository")


def build_entrypoint(spec_rel: str, overrides: Sequence[str] = (), out: str | None = None,
                     overwrite: bool = False, command: str = "run") -> str:
    """The shell command the job runs on the cluster (in the uploaded project directory): `harness run`, or
    `harness study` for a study spec (its trials then run as Ray Train worker groups on the cluster)."""
    argv = ["python", "-m", "harness.cli", command, spec_rel]
    if out:
        argv += ["--out", out]
    if overwrite and command == "run":
        argv.append("--overwrite")
    for o in overrides:
        argv += ["--set", o]
    return shlex.join(argv)


def build_runtime_env(root: Path) -> dict[str, Any]:
    """Ray runtime_env: the project as working_dir (caches, venvs, results left out) and pass-through env."""
    env = {k: os.environ[k] for k in PASS_ENV if k in os.environ}
    env["PYTHONUNBUFFERED"] = "1"  # logs reach `harness jobs logs` as they are written
    return {"working_dir": str(root), "excludes": list(EXCLUDES), "env_vars": env}


# ---- commands -----------------------------------------------------------------------------------------


def submit_job(spec_path: str | Path, address: str | None, overrides: Sequence[str] = (), wait: bool = False,
               out: str | None = None, stream: TextIO | None = None, poll_s: float = 2.0,
               overwrite: bool = False) -> str:
    """Validate a job spec here, submit `harness run SPEC [--set ...]` to the cluster, return the job id (a study
    spec, one naming its `job`, is submitted as `harness study SPEC`).

    `out` is the results directory on the cluster (`harness run --out`); a relative one lands in the
    job's temporary working directory there. With `wait`, follow the logs until the job ends.
    """

    stream = stream or sys.stdout
    command = "study" if "job" in load_yaml(spec_path, "job spec") else "run"  # a study spec names its `job`
    if command == "study":
        from harness.commands.study.spec import load_study, study_out

        study, spec = load_study(spec_path, list(overrides))  # bad specs fail here, before anything is uploaded
        default_out = str(study_out(study))
    else:
        spec = load_spec(spec_path, list(overrides))  # bad specs fail here, before anything is uploaded
        default_out = spec.out.format(name=spec.name)
    root = project_root(Path(spec_path).resolve().parent)
    resolved = Path(spec_path).resolve()
    try:
        spec_rel = resolved.relative_to(root).as_posix()
    except ValueError:
        raise SubmitError(f"job spec {spec_path} is outside the project directory {root} that is uploaded; "
                          "copy it under jobs/") from None
    results = out or default_out
    if not os.path.isabs(os.path.expanduser(results)):
        print(f"note: results go to {results!r} relative to the job's temporary working directory on the "
              "cluster; pass --out with a shared or absolute path to keep them", file=stream)
    entrypoint = build_entrypoint(spec_rel, overrides, out, overwrite, command)
    job_id = f"harness-{spec.name}-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(3)}"
    # A job that scores on `cuda` needs its driver on a GPU node (a head node often has none).
    gpus = 1 if spec.resources.device == "cuda" else None
    with _client(address) as client:
        job_id = client.submit_job(
            entrypoint=entrypoint, submission_id=job_id, runtime_env=build_runtime_env(root),
            metadata={"harness_spec": spec_rel, "harness_job": spec.name}, entrypoint_num_gpus=gpus)
    print(f"submitted {job_id}: {entrypoint}", file=stream)
    if wait:
        wait_for_job(address, job_id, stream=stream, poll_s=poll_s)
    else:
        print(f"follow it with: harness jobs logs {job_id} --address {_normalise(address)}", file=stream)
    return job_id


def job_status(address: str | None, job_id: str) -> JobState:
    """The status of a submitted job."""
    with _client(address, job_id) as client:
        info = client.get_job_info(job_id)
    return JobState(job_id, str(info.status), info.message or "", info.entrypoint or "")


def job_logs(address: str | None, job_id: str) -> str:
    """All logs of a submitted job so far."""
    with _client(address, job_id) as client:
        return client.get_job_logs(job_id)


def stop_job(address: str | None, job_id: str) -> bool:
    """Ask the cluster to stop a job; False when it had already finished."""
    with _client(address, job_id) as client:
        return bool(client.stop_job(job_id))


def wait_for_job(address: str | None, job_id: str, stream: TextIO | None = None, poll_s: float = 2.0,
                 timeout_s: float | None = None) -> JobState:
    """Stream a job's logs to `stream` until it ends (polling the Jobs API); return its final state."""
    stream = stream or sys.stdout
    shown = 0
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    with _client(address, job_id) as client:
        while True:
            info = client.get_job_info(job_id)  # status first: logs read after a terminal status are complete
            logs = client.get_job_logs(job_id)
            if len(logs) > shown:
                stream.write(logs[shown:])
                stream.flush()
                shown = len(logs)
            status = str(info.status)
            if status in TERMINAL:
                state = JobState(job_id, status, info.message or "", info.entrypoint or "")
                break
            if deadline is not None and time.monotonic() > deadline:
                raise SubmitError(f"job {job_id} still {status} after {timeout_s:g} s")
            time.sleep(poll_s)
    print(f"job {job_id}: {state.status}" + (f" ({state.message})" if state.message else ""), file=stream)
    return state


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """`harness submit`'s arguments."""
    parser.add_argument("spec", help="job spec (YAML) inside the project directory, which is uploaded")
    parser.add_argument("--address", help="Jobs API address, e.g. http://HEAD:8265 "
                        "(default: RAY_API_SERVER_ADDRESS or RAY_ADDRESS)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY.PATH=VALUE",
                        help="override a spec field by its dotted path (repeatable)")
    parser.add_argument("--out", help="results directory on the cluster (passed to `harness run --out`)")
    parser.add_argument("--overwrite", action="store_true", help="pass --overwrite to `harness run`")
    parser.add_argument("--wait", action="store_true", help="follow the logs until the job ends; exit 1 unless it "
                        "succeeded")


def main(args: argparse.Namespace) -> int:
    """Submit the job; with `--wait`, exit 1 unless it succeeded."""
    job_id = submit_job(args.spec, args.address, args.set, wait=args.wait, out=args.out, overwrite=args.overwrite)
    if not args.wait:
        return 0
    return 0 if job_status(args.address, job_id).status == "SUCCEEDED" else 1
