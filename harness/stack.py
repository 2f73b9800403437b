"""The locked package stacks (locks/<stack>.txt): what they pin, and how far an environment is from one.

A lock lists every distribution of a stack as `name==version`, in `pip freeze --all --exclude-editable`
form; the harness itself (installed editable) is not in it. Its header says how it was resolved, with two
lines read back here: `# extras:` (the harness extras resolved with it) and `# removed:` (distributions
uninstalled after resolving, whose absence is expected). `make lock` writes both locks; `make demo` and
`make test` install `locks/cpu.txt` with `pip install --no-deps -r` and check the venv with
`python -m harness.stack check`.

    python -m harness.stack check [LOCK]      # exit 1, listing the differences, unless the venv is the lock
    python -m harness.stack unlocked [LOCK]   # installed distributions the lock does not list (to uninstall)
    python -m harness.stack write LOCK --extras E,F [--removed A,B] [--report PIP_REPORT.json] --how TEXT
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.metadata
import json
import re
import subprocess
import sys
import sysconfig
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name
from packaging.version import InvalidVersion, Version

import harness
from harness.core.io import atomic_write_text

LOCK_DIR = Path(harness.__file__).resolve().parent.parent / "locks"
DEFAULT_LOCK = LOCK_DIR / "cpu.txt"
PROJECT = "harness"


def canonical(name: str) -> str:
    """PEP 503 normalised distribution name (`PyYAML` and `pyyaml`, `typing_extensions` and `typing-extensions`)."""
    return str(canonicalize_name(name))


@dataclass(frozen=True)
class Lock:
    """A parsed lock file: pins by canonical name, and its header's extras and removed distributions."""

    path: Path
    pins: dict[str, tuple[str, str]]  # canonical name -> (name as written, version)
    extras: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()

    @property
    def name(self) -> str:
        """The stack's name: the file's stem (`cpu`, `gpu`)."""
        return self.path.stem

    def sha256(self) -> str:
        """sha256 of the lock file's bytes."""
        return hashlib.sha256(self.path.read_bytes()).hexdigest()


_NAME = re.compile(r"[A-Za-z0-9]([A-Za-z0-9._-]*[A-Za-z0-9])?")  # PEP 508 distribution names


def _is_version(text: str) -> bool:
    try:
        Version(text)
    except InvalidVersion:
        return False
    return True


def _header_list(line: str) -> tuple[str, ...]:
    return tuple(x.strip() for x in line.split(":", 1)[1].split("#")[0].split(",") if x.strip())


def read_lock(path: str | Path) -> Lock:
    """Parse a lock file (ValueError naming the file and line for anything but comments and `name==version`)."""
    path = Path(path)
    pins: dict[str, tuple[str, str]] = {}
    extras: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()
    for number, raw in enumerate(path.read_text().splitlines(), start=1):
        line = raw.strip()
        if line.startswith("# extras:"):
            extras = _header_list(line)
        elif line.startswith("# removed:"):
            removed = tuple(canonical(x) for x in _header_list(line))
        if not line or line.startswith("#"):
            continue
        name, sep, version = (part.strip() for part in line.partition("=="))
        if not (sep and _NAME.fullmatch(name) and _is_version(version)):
            raise ValueError(f"{path}:{number}: expected `name==version`, got {raw!r}")
        pins[canonical(name)] = (name, version)
    return Lock(path, pins, extras, removed)


def _is_editable(dist: importlib.metadata.Distribution) -> bool:
    text = dist.read_text("direct_url.json")
    if not text:
        return False
    try:
        return bool(json.loads(text).get("dir_info", {}).get("editable"))
    except (ValueError, AttributeError):
        return False


def installed_distributions() -> dict[str, tuple[str, str]]:
    """The environment's distributions as `pip freeze --all --exclude-editable` lists them (canonical name keys)."""
    out: dict[str, tuple[str, str]] = {}
    for dist in _site_distributions():
        name = dist.metadata["Name"]
        if name and not _is_editable(dist):
            out.setdefault(canonical(name), (name, dist.version))  # the first on the path wins, as for imports
    return out


def _site_distributions() -> Iterable[importlib.metadata.Distribution]:
    """Distributions installed in this environment's site directories.

    Only the install locations count, not everything on `sys.path`: importing setuptools appends its
    `_vendor` directory (with its own *.dist-info) to `sys.path`, and a checkout on `sys.path` may hold a
    project's *.egg-info; neither is installed here, and `pip freeze` lists neither.
    """
    paths = dict.fromkeys(sysconfig.get_paths()[key] for key in ("purelib", "platlib"))
    return importlib.metadata.distributions(path=list(paths))


@dataclass
class LockDiff:
    """How an environment differs from a lock; empty lists everywhere means the environment is the lock."""

    missing: list[str] = field(default_factory=list)  # pinned, not installed
    wrong_version: list[str] = field(default_factory=list)  # installed at another version
    unlocked: list[str] = field(default_factory=list)  # installed, not pinned
    unmet: list[str] = field(default_factory=list)  # requirements of installed distributions left unsatisfied

    @property
    def clean(self) -> bool:
        """True when the environment is exactly the lock and every requirement in it is met."""
        return not (self.missing or self.wrong_version or self.unlocked or self.unmet)

    def lines(self) -> list[str]:
        """One human-readable line per difference."""
        return ([f"missing: {x}" for x in self.missing] + [f"wrong version: {x}" for x in self.wrong_version]
                + [f"not in the lock: {x}" for x in self.unlocked] + [f"unmet requirement: {x}" for x in self.unmet])


def version_diff(lock: Lock, installed: Mapping[str, tuple[str, str]]) -> LockDiff:
    """Pins missing or at another version, and installed distributions the lock does not list."""
    diff = LockDiff()
    for key, (name, version) in sorted(lock.pins.items()):
        if key not in installed:
            diff.missing.append(f"{name}=={version}")
        elif installed[key][1] != version:
            diff.wrong_version.append(f"{name}: installed {installed[key][1]}, locked {version}")
    diff.unlocked = [f"{name}=={version}" for key, (name, version) in sorted(installed.items())
                     if key not in lock.pins and key != PROJECT]
    return diff


def unmet_requirements(requirements: Mapping[str, Sequence[str]], installed: Mapping[str, tuple[str, str]],
                       extras: Mapping[str, Iterable[str]], ignore: Iterable[str] = ()) -> list[str]:
    """Requirements (`Requires-Dist` strings by distribution) that the installed versions do not satisfy.

    Only base requirements count, as in `pip check`, plus those of the extras named for a distribution
    (the harness's locked extras). Requirements on a distribution in `ignore` (the lock's removed ones) are
    skipped.
    """
    skip = {canonical(x) for x in ignore}
    out = []
    for dist, reqs in sorted(requirements.items()):
        active = ("", *extras.get(dist, ()))
        for text in reqs:
            try:
                req = Requirement(text)
            except InvalidRequirement:
                out.append(f"{dist} has an unreadable requirement {text!r}")
                continue
            key = canonical(req.name)
            if key in skip or (req.marker and not any(req.marker.evaluate({"extra": e}) for e in active)):
                continue
            if key not in installed:
                out.append(f"{dist} requires {req} ({req.name} is not installed)")
            elif not req.specifier.contains(installed[key][1], prereleases=True):
                out.append(f"{dist} requires {req} (installed {installed[key][1]})")
    return out


def installed_requirements() -> dict[str, list[str]]:
    """`Requires-Dist` of every installed distribution, the editable harness included (canonical name keys)."""
    out: dict[str, list[str]] = {}
    for dist in _site_distributions():
        name = dist.metadata["Name"]
        if name:
            out.setdefault(canonical(name), list(dist.requires or []))
    return out


def check(lock: Lock) -> LockDiff:
    """The full comparison of this environment with `lock`: versions, plus every requirement being met."""
    installed = installed_distributions()
    diff = version_diff(lock, installed)
    project = installed_requirements()
    if PROJECT not in project:
        diff.missing.append(f"{PROJECT} (the project itself: pip install --no-deps -e .)")
    diff.unmet = unmet_requirements(project, installed, {PROJECT: lock.extras}, ignore=lock.removed)
    return diff


def lock_record(lock_dir: Path = LOCK_DIR) -> dict[str, object] | None:
    """For env.json: the lock this environment matches best (fewest pins missing or at another version).

    `matches` is true when the environment holds exactly the lock's versions (nothing else installed);
    `differences` lists up to 20 of the differences otherwise. None when there is no lock directory.
    """
    paths = sorted(lock_dir.glob("*.txt")) if lock_dir.is_dir() else []
    if not paths:
        return None
    installed = installed_distributions()
    scored = []
    for path in paths:
        lock = read_lock(path)
        diff = version_diff(lock, installed)
        scored.append((len(diff.missing) + len(diff.wrong_version), path.name, lock, diff))
    _, _, lock, diff = min(scored, key=lambda item: item[:2])
    lines = diff.lines()
    return {"name": lock.name, "file": f"{lock_dir.name}/{lock.path.name}", "sha256": lock.sha256(),
            "matches": not lines, "differences": lines[:20]}


def freeze_lines() -> list[str]:
    """`pip freeze --all --exclude-editable` of this interpreter's environment."""
    out = subprocess.run([sys.executable, "-m", "pip", "freeze", "--all", "--exclude-editable"],
                         capture_output=True, text=True, check=True).stdout
    return [line for line in out.splitlines() if line and not line.startswith("#")]


def report_lines(report: Mapping[str, object]) -> list[str]:
    """`name==version` of every distribution a `pip install --dry-run --report` would install, in freeze order."""
    items = [(item["metadata"]["name"], item["metadata"]["version"]) for item in report["install"]  # type: ignore[index]
             if canonical(item["metadata"]["name"]) != PROJECT]
    return [f"{name}=={version}" for name, version in sorted(items, key=lambda nv: nv[0].lower())]


def write_lock(path: str | Path, lines: Sequence[str], extras: Sequence[str], removed: Sequence[str],
               how: str) -> Path:
    """Write a lock: a header (how it was resolved, `# extras:`, `# removed:`) then `lines`."""
    header = [f"# The {Path(path).stem} stack, every distribution at an exact version. Generated by `make lock`",
              "# (README, 'Regenerating the locks'); do not edit by hand.", f"# Resolved: {how}",
              f"# extras: {','.join(extras)}".rstrip(), f"# removed: {','.join(removed)}".rstrip()]
    return atomic_write_text(path, "\n".join(header + list(lines)) + "\n")


def _split(text: str) -> list[str]:
    return [x for x in (t.strip() for t in text.split(",")) if x]


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m harness.stack check|unlocked|write` (see the module docstring)."""
    parser = argparse.ArgumentParser(prog="python -m harness.stack", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("check", "unlocked"):
        p = sub.add_parser(name)
        p.add_argument("lock", nargs="?", default=str(DEFAULT_LOCK))
    w = sub.add_parser("write")
    w.add_argument("lock")
    w.add_argument("--extras", type=_split, default=[])
    w.add_argument("--removed", type=_split, default=[])
    w.add_argument("--report", help="a `pip install --dry-run --report` file; default: this environment's freeze")
    w.add_argument("--how", required=True, help="one line: how the stack was resolved")
    args = parser.parse_args(argv)

    if args.command == "write":
        lines = report_lines(json.loads(Path(args.report).read_text())) if args.report else freeze_lines()
        path = write_lock(args.lock, lines, args.extras, args.removed, args.how)
        print(f"{path}: {len(lines)} distributions, sha256 {read_lock(path).sha256()}")
        return 0
    try:
        lock = read_lock(args.lock)
    except (OSError, ValueError) as err:
        print(f"cannot read the lock: {err}", file=sys.stderr)
        return 2
    if args.command == "unlocked":
        print("\n".join(x.split("==")[0] for x in version_diff(lock, installed_distributions()).unlocked))
        return 0
    diff = check(lock)
    if diff.clean:
        print(f"{args.lock}: this environment is the lock ({len(lock.pins)} distributions, sha256 {lock.sha256()})")
        return 0
    print(f"{args.lock}: this environment differs from the lock (`rm -f .venv/.installed && make check-lock` "
          "brings .venv back to it):",
          *(f"  {line}" for line in diff.lines()), sep="\n", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
