"""The README's examples are run, so that they stay true."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from controller.cli import EXIT_BAD_INPUT, main

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def test_quickstart_has_exactly_two_commands() -> None:
    block = README.split("<!-- quickstart -->")[1].split("<!-- /quickstart -->")[0]
    commands = [line for line in block.splitlines() if line.strip() and not line.startswith("```")]
    assert len(commands) == 2
    assert "pip install" in commands[0] and "rampguard" in commands[0]
    assert "pytest" in commands[1]


def test_broken_config_example_is_what_validate_prints(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    example = README.split("<!-- readme-example: broken-rig -->")[1].split("```text\n")[1]
    expected = example.split("```")[0].strip()
    rig = (ROOT / "configs" / "rig.toml").read_text()
    broken = rig.replace('parent = "LAB-UTIL"', 'parent = "LAB-UTILL"').replace(
        'zone = "LAB"\nparents', 'zone = "LABB"\nparents')
    (tmp_path / "broken.toml").write_text(broken)
    monkeypatch.chdir(tmp_path)
    assert main(["validate", "broken.toml"]) == EXIT_BAD_INPUT
    assert capsys.readouterr().err.strip() == expected


def test_readme_validate_commands_run(capsys: pytest.CaptureFixture[str]) -> None:
    commands = re.findall(r"^\.venv/bin/rampguard (validate [^\s#]+(?: --json)?)", README, re.M)
    assert commands, "the README shows validate commands"
    for command in commands:
        argv = [str(ROOT / arg) if arg.startswith("configs/") else arg for arg in command.split()]
        assert main(argv) == 0, command
    capsys.readouterr()
