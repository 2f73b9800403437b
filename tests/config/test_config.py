"""One YAML loader for every command's input file (harness.config): a malformed file or an invalid field exits 2
with a message naming the file and its line, or the field, never a traceback, whichever command reads it."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.cli import main

ROOT = Path(__file__).resolve().parents[2]
JOB = str(ROOT / "jobs/quickstart.yaml")
#: Line 3 is indented one space less than the mapping it continues: a YAML parse error there.
MALFORMED = "objectives:\n  - metric: x\n   split: y\n"


@pytest.fixture
def malformed(tmp_path: Path) -> Path:
    path = tmp_path / "bad.yaml"
    path.write_text(MALFORMED)
    return path


def _argv(command: str, bad: Path) -> list[str]:
    """The command line that gives `bad` to `command` as its input file."""
    return {"run": ["run", str(bad)],
            "eval": ["eval", str(bad), "--model", "x=builtin:tiny-llama"],
            "tune": ["tune", JOB, "--space", str(bad)],
            "sweep": ["sweep", JOB, "--space", str(bad)],
            "nightly": ["nightly", str(bad)]}[command]


@pytest.mark.parametrize("command", ["run", "eval", "tune", "sweep", "nightly"])
def test_malformed_yaml_exits_2_naming_the_file_and_line(command: str, malformed: Path,
                                                         capsys: pytest.CaptureFixture) -> None:
    assert main(_argv(command, malformed)) == 2
    err = capsys.readouterr().err
    assert f"{malformed} is not valid YAML: line 3, column 4:" in err, err
    assert "Traceback" not in err


@pytest.mark.parametrize("command, what", [("run", "job spec"), ("eval", "job spec"), ("tune", "search space"),
                                           ("sweep", "sweep file"), ("nightly", "suite spec")])
def test_an_unknown_field_exits_2_naming_the_file_and_field(command: str, what: str, tmp_path: Path,
                                                            capsys: pytest.CaptureFixture) -> None:
    bad = tmp_path / "unknown.yaml"
    bad.write_text("bogus_field: 1\n")
    assert main(_argv(command, bad)) == 2
    err = capsys.readouterr().err
    assert f"invalid {what} {bad}:" in err and "bogus_field: Extra inputs are not permitted" in err, err
    assert "Traceback" not in err


@pytest.mark.parametrize("text, message", [("- a\n- b\n", "expected a mapping at the top level, got list"),
                                           ("name: [unclosed\n", "is not valid YAML: line 2, column 1:")])
def test_load_yaml_names_the_file(tmp_path: Path, text: str, message: str) -> None:
    from harness.config import load_yaml
    from harness.core.errors import SpecError

    path = tmp_path / "x.yaml"
    path.write_text(text)
    with pytest.raises(SpecError, match=f"{path}.*{message.replace('[', '.').replace('(', '.').replace(')', '.')}"):
        load_yaml(path, "job spec")
    with pytest.raises(SpecError, match=f"job spec {tmp_path / 'none.yaml'} does not exist"):
        load_yaml(tmp_path / "none.yaml", "job spec")
