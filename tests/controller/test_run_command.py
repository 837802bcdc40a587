"""`rampguard run` refuses bad input with exit code 2 and one line, before touching anything."""

from __future__ import annotations

from pathlib import Path

import pytest

from controller.cli import main

RIG = str(Path(__file__).resolve().parents[2] / "configs" / "rig.toml")


@pytest.mark.parametrize("args, message", [
    (["--http", "nonsense"], "--http must be ADDR:PORT"),
    (["--http", "127.0.0.1:70000"], "--http must be ADDR:PORT"),
    (["--http", ":8080"], "--http must be ADDR:PORT"),
    (["--metrics", "127.0.0.1:-1"], "--metrics must be ADDR:PORT"),
    (["--mqtt", "http://broker"], "--mqtt"),
    (["--clock-speed", "nan"], "--clock-speed"),
    (["--clock-speed", "0"], "--clock-speed"),
    (["--clock-speed", "-3"], "--clock-speed"),
    (["--startup-wait-s", "inf"], "--startup-wait-s"),
    (["--token-file", "/nonexistent/token"], "--token-file"),
    (["--mqtt", "mqtt://user:pw@127.0.0.1:1883"], "a password in the URL is refused"),
    (["--mqtt", "mqtt://127.0.0.1:1883", "--mqtt-ca", "/nonexistent/ca.pem"], "mqtts://"),
    (["--mqtt", "mqtts://127.0.0.1:8883", "--mqtt-ca", "/nonexistent/ca.pem"], "--mqtt-ca"),
    (["--mqtt", "mqtts://u@127.0.0.1:8883", "--mqtt-password-file", "/nonexistent/pw"],
     "--mqtt-password-file"),
])
def test_bad_options_exit_2_with_one_line(args: list[str], message: str,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["run", RIG, *args] if "--mqtt" in args else ["run", RIG, "--mqtt", "none", *args]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err
    assert "Traceback" not in err


def test_empty_token_file_and_bad_config_and_unusable_audit_path(
        tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAMPGUARD_API_TOKEN", "from-the-environment")
    empty = tmp_path / "token"
    empty.write_text("  \n")
    assert main(["run", RIG, "--mqtt", "none", "--token-file", str(empty)]) == 2
    assert "is empty" in capsys.readouterr().err
    assert main(["run", str(tmp_path / "missing.toml"), "--mqtt", "none"]) == 2
    assert "file not found" in capsys.readouterr().err
    # a directory where the audit log should be: refused before any device is contacted
    assert main(["run", RIG, "--mqtt", "none", "--http", "127.0.0.1:0", "--metrics", "off",
                 "--audit", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert str(tmp_path) in err and "Traceback" not in err
