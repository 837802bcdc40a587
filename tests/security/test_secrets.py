"""Secrets come from files or the environment and never show: not in the repr of any config
object, not in an error message; a password in the --mqtt URL is refused; bad secret and TLS
files are one-line errors (exit 2) that name the file, not the secret."""

from __future__ import annotations

import argparse
import os
import stat
from pathlib import Path

import pytest

from controller.agent import AgentConfig
from controller.cli import main
from controller.credentials import command_key, mqtt_config, operator_token
from controller.errors import CredentialError
from controller.service import ServiceOptions
from drivers import MqttConfig, TlsConfig
from drivers.caps import AgentSpec, CapGate
from drivers.payloads import AgentTopics
from tests.security.conftest import TlsBroker

PASSWORD = "hunter2-mqtt-password"
KEY = "command-key-never-shown-0123"
TOKEN = "operator-token-never-shown"
RIG = str(Path(__file__).resolve().parents[2] / "configs" / "rig.toml")


def _args(**kw: str | None) -> argparse.Namespace:
    fields = {"mqtt_password_file": None, "mqtt_ca": None, "mqtt_cert": None, "mqtt_key": None}
    return argparse.Namespace(**{**fields, **kw})


def _file(tmp_path: Path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(text + "\n")
    path.chmod(0o600)
    return str(path)


def test_no_config_object_shows_a_secret(tmp_path: Path) -> None:
    mqtt = MqttConfig(username="u", password=PASSWORD, tls=TlsConfig(ca_file="/ca.pem"))
    topics = AgentTopics("rampguard/agents/S1")
    objects = [
        mqtt,
        ServiceOptions(token=TOKEN, command_key=KEY.encode(), mqtt=mqtt),
        AgentConfig(server="S1", topics=topics, mqtt=mqtt, command_key=KEY.encode()),
        CapGate(AgentSpec("S1", topics, 1, 100.0, 200.0), key=KEY.encode()),
        operator_token(None, tmp_path / "audit.jsonl"),
    ]
    token = (tmp_path / "audit.jsonl.token").read_text().strip()
    for obj in objects:
        text = repr(obj) + str(obj)
        for secret in (PASSWORD, KEY, TOKEN, token):
            assert secret not in text, type(obj).__name__


def test_the_password_comes_from_a_file_or_the_environment(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RAMPGUARD_MQTT_PASSWORD", raising=False)
    url = "mqtts://ctl@127.0.0.1:8883"
    assert mqtt_config(url, _args()).password is None
    cfg = mqtt_config(url, _args(mqtt_password_file=_file(tmp_path, "pw", PASSWORD)))
    assert (cfg.username, cfg.password, cfg.tls) == ("ctl", PASSWORD, TlsConfig())
    monkeypatch.setenv("RAMPGUARD_MQTT_PASSWORD", PASSWORD + "-env")
    assert mqtt_config(url, _args()).password == PASSWORD + "-env"
    with pytest.raises(CredentialError, match="needs a user name"):
        mqtt_config("mqtts://127.0.0.1", _args())


@pytest.mark.parametrize(("url", "kw", "message"), [
    (f"mqtt://ctl:{PASSWORD}@127.0.0.1", {}, "a password in the URL is refused"),
    ("mqtt://ctl@127.0.0.1", {"mqtt_ca": "/ca.pem"}, "need an mqtts:// URL"),
    ("mqtts://ctl@127.0.0.1", {"mqtt_ca": "/nonexistent/ca.pem"}, "--mqtt-ca /nonexistent"),
    ("mqtts://ctl@127.0.0.1", {"mqtt_key": "/k.pem"}, "--mqtt-key needs --mqtt-cert"),
    ("mqtts://ctl@127.0.0.1", {"mqtt_password_file": "/nonexistent/pw"},
     "--mqtt-password-file /nonexistent/pw"),
    ("http://broker", {}, "--mqtt"),
])
def test_unusable_mqtt_options_are_one_line(url: str, kw: dict[str, str], message: str) -> None:
    with pytest.raises(CredentialError, match=message) as info:
        mqtt_config(url, _args(**kw))
    assert PASSWORD not in str(info.value) and "\n" not in str(info.value)


def test_a_pem_that_is_not_one_is_refused_before_connecting(tmp_path: Path,
                                                           tls_broker: TlsBroker) -> None:
    junk = _file(tmp_path, "junk.pem", "not a certificate")
    with pytest.raises(CredentialError, match="not a usable PEM file"):
        mqtt_config("mqtts://u@127.0.0.1", _args(mqtt_ca=junk))
    with pytest.raises(CredentialError, match="--mqtt-cert"):
        mqtt_config("mqtts://u@127.0.0.1", _args(mqtt_cert=junk))
    cfg = mqtt_config("mqtts://u@127.0.0.1", _args(
        mqtt_ca=str(tls_broker.ca), mqtt_cert=str(tls_broker.client_cert),
        mqtt_key=str(tls_broker.client_key)))
    assert cfg.tls == TlsConfig(str(tls_broker.ca), str(tls_broker.client_cert),
                                str(tls_broker.client_key))


def test_secret_files_and_the_command_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                          caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.delenv("RAMPGUARD_COMMAND_KEY", raising=False)
    assert command_key(None) is None
    assert command_key(_file(tmp_path, "key", KEY)) == KEY.encode()
    monkeypatch.setenv("RAMPGUARD_COMMAND_KEY", KEY)
    assert command_key(None) == KEY.encode()
    with pytest.raises(CredentialError, match="shorter than 16 bytes") as info:
        command_key(_file(tmp_path, "short", "abc"))
    assert "abc" not in str(info.value).split("(")[0]
    with pytest.raises(CredentialError, match="is empty"):
        command_key(_file(tmp_path, "empty", "  "))
    loose = tmp_path / "loose"
    loose.write_text(KEY)
    loose.chmod(0o644)
    assert command_key(str(loose)) == KEY.encode()        # used, with a warning
    assert "can be read by other users" in caplog.text and KEY not in caplog.text


def test_the_generated_token_file_is_private(tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RAMPGUARD_API_TOKEN", raising=False)
    old = os.umask(0)                   # even a permissive umask makes a private file
    try:
        token = operator_token(None, tmp_path / "audit.jsonl")
    finally:
        os.umask(old)
    assert token.source == "generated" and token.path == tmp_path / "audit.jsonl.token"
    assert stat.S_IMODE(token.path.stat().st_mode) == 0o600
    assert token.path.read_text().strip() == token.token
    assert [p.name for p in tmp_path.iterdir()] == ["audit.jsonl.token"]   # no temp file
    monkeypatch.setenv("RAMPGUARD_API_TOKEN", TOKEN)
    assert operator_token(None, tmp_path / "audit.jsonl").source == "env"


def test_run_refuses_a_bad_token_without_showing_it(
        tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAMPGUARD_API_TOKEN", "a token with spaces")
    assert main(["run", RIG, "--mqtt", "none", "--audit", str(tmp_path / "a.jsonl")]) == 2
    err = capsys.readouterr().err
    assert "token68" in err and "a token with spaces" not in err and "Traceback" not in err
