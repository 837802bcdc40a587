"""Hostile-input tests for the hall config loader, the topology compiler and ``rampguard validate``.

The corpus in ``tests/data/bad_configs`` holds one broken config per file, each a copy of
``configs/rig.toml`` with one thing broken. Every file carries a header line

    # expect: <path substring> | <message substring>

and the loader plus the compiler must refuse it with a :class:`ConfigError` (never anything else)
holding an issue whose field path contains the first part and whose message contains the second
(case-insensitive). The CLI must exit 2 on it, name the file and the field on stderr, and print no
traceback. Files that cannot hold a header (empty, blank) have their expectation here.

``tests/data/bad_configs/accepted`` holds near misses that must load and compile.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest
from pydantic import BaseModel

import controller.model as model_module
from controller.cli import main
from controller.config import load_hall_config, loads_hall_config
from controller.errors import ConfigError
from controller.topology import compile_hall

DATA = Path(__file__).resolve().parents[1] / "data"
CORPUS = DATA / "bad_configs"
ACCEPTED_DIR = CORPUS / "accepted"
CONFIGS = Path(__file__).resolve().parents[2] / "configs"

_EXPECT = re.compile(rb"# expect:([^\r\n]*)")

# Files whose content cannot carry a header line.
HEADERLESS: dict[str, tuple[str, str]] = {
    "empty.toml": ("", "empty file"),
    "whitespace_only.toml": ("", "empty file"),
}


@dataclass(frozen=True)
class Case:
    name: str
    path: Path
    path_sub: str
    msg_sub: str


def _corpus_cases() -> list[Case]:
    cases = []
    for path in sorted(CORPUS.iterdir()):
        if path.is_dir():
            continue
        if path.name in HEADERLESS:
            path_sub, msg_sub = HEADERLESS[path.name]
        else:
            match = _EXPECT.search(path.read_bytes())
            assert match is not None, f"{path.name} has no '# expect: PATH | MESSAGE' header"
            path_sub, sep, msg_sub = match.group(1).decode("ascii").partition("|")
            assert sep, f"{path.name}: header needs 'PATH | MESSAGE'"
        cases.append(Case(path.name, path, path_sub.strip(), msg_sub.strip()))
    # Paths that are not config files at all.
    cases.append(Case("<directory>", CORPUS, "", "is a directory"))
    cases.append(Case("<missing file>", CORPUS / "no-such-config.toml", "", "file not found"))
    return cases


CASES = _corpus_cases()
ACCEPTED = sorted(ACCEPTED_DIR.glob("*.toml")) + sorted(CONFIGS.glob("*.toml"))


def test_corpus_is_populated() -> None:
    assert len(CASES) >= 100
    assert len(ACCEPTED) >= 10
    assert {p.name for p in CONFIGS.glob("*.toml")} >= {"rig.toml", "demo-hall.toml",
                                                        "hall-32k.toml"}


def _load_and_compile(path: Path) -> None:
    config = load_hall_config(path)
    compile_hall(config, source=str(path))


def _describe(exc: ConfigError) -> str:
    return "\n".join(f"  {issue.path!r}: {issue.message!r}" for issue in exc.issues)


def _matches(exc: ConfigError, case: Case) -> bool:
    return any(
        case.path_sub in issue.path and case.msg_sub.lower() in issue.message.lower()
        for issue in exc.issues
    )


# ---------------------------------------------------------------------------------------------
# The library: ConfigError and nothing else, with the right field path and message
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_bad_config_raises_config_error(case: Case) -> None:
    # Anything other than ConfigError propagates and fails the test with its traceback.
    with pytest.raises(ConfigError) as info:
        _load_and_compile(case.path)
    exc = info.value
    assert exc.source == str(case.path)
    assert exc.issues, "a ConfigError needs at least one issue"
    for issue in exc.issues:
        assert isinstance(issue.path, str)
        assert isinstance(issue.message, str)
        assert issue.message.strip(), f"empty message at {issue.path!r}"
    assert _matches(exc, case), (
        f"{case.name}: expected an issue at a path containing {case.path_sub!r} with a message "
        f"containing {case.msg_sub!r}; got:\n{_describe(exc)}"
    )
    assert str(case.path) in str(exc)


def _schema_field_names() -> set[str]:
    names: set[str] = set()
    for obj in vars(model_module).values():
        if isinstance(obj, type) and issubclass(obj, BaseModel) and obj is not BaseModel:
            names.update(obj.model_fields)
    return names


FIELD_NAMES = _schema_field_names()


def _raw_keys(path: Path) -> set[str]:
    """Every key the file itself spells (unknown keys and dict keys such as rack slots)."""
    try:
        raw = tomllib.loads(path.read_bytes().decode("utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError, RecursionError):
        return set()
    keys: set[str] = set()
    stack: list[object] = [raw]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            keys.update(item)
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return keys


def path_components(path: str) -> list[str]:
    """``racks[0].parents.A`` → ``["racks", "parents", "A"]`` (indices dropped)."""
    return [part for part in re.sub(r"\[\d+\]", ".", path).split(".") if part]


def assert_clean_paths(exc: ConfigError, raw_keys: set[str]) -> None:
    """Each path names fields the user can write: no pydantic union tags or validator names."""
    for issue in exc.issues:
        for part in path_components(issue.path):
            assert part in FIELD_NAMES or part in raw_keys, (
                f"issue path {issue.path!r} has {part!r}, which is neither a field of the hall "
                f"config schema nor a key in the file ({issue.message!r})"
            )


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_bad_config_paths_name_real_fields(case: Case) -> None:
    with pytest.raises(ConfigError) as info:
        _load_and_compile(case.path)
    assert_clean_paths(info.value, _raw_keys(case.path) if case.path.is_file() else set())


def test_breaker_curve_field_keeps_its_name() -> None:
    # "curve" is both the discriminator tag of CurveBreaker and one of its fields: the field must
    # survive in the path.
    path = CORPUS / "breaker_bad_curve.toml"
    with pytest.raises(ConfigError) as info:
        _load_and_compile(path)
    assert any(issue.path == "nodes[1].breaker.curve" for issue in info.value.issues), (
        _describe(info.value))


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_bad_config_same_via_loads(case: Case) -> None:
    """loads_hall_config on the same bytes takes the same road (files only)."""
    if not case.path.is_file():
        return
    data = case.path.read_bytes()
    with pytest.raises(ConfigError) as info:
        compile_hall(loads_hall_config(data, source="<bytes>"), source="<bytes>")
    assert info.value.source == "<bytes>"
    assert _matches(info.value, case), _describe(info.value)


def test_nul_in_path_is_a_config_error() -> None:
    with pytest.raises(ConfigError) as info:
        load_hall_config(str(CORPUS / "bad\x00name.toml"))
    assert info.value.issues


def test_oversized_file_is_refused(tmp_path: Path) -> None:
    from controller.config import MAX_CONFIG_BYTES

    path = tmp_path / "huge.toml"
    path.write_bytes((CONFIGS / "rig.toml").read_bytes() + b"#" * MAX_CONFIG_BYTES)
    with pytest.raises(ConfigError) as info:
        load_hall_config(path)
    assert any("larger than" in issue.message for issue in info.value.issues)


# ---------------------------------------------------------------------------------------------
# Near misses and the shipped configs: must load and compile
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("path", ACCEPTED, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_accepted_config_loads_and_compiles(path: Path) -> None:
    config = load_hall_config(path)
    topo = compile_hall(config, source=str(path))
    assert topo.n_nodes > 0
    assert topo.n_servers > 0
    assert topo.n_psus >= topo.n_servers


# ---------------------------------------------------------------------------------------------
# The CLI
# ---------------------------------------------------------------------------------------------
def _exit_code(argv: list[str]) -> int | str | None:
    try:
        return main(argv)
    except SystemExit as exc:  # argparse exits for usage errors
        return exc.code


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_cli_validate_bad_config_exits_2(case: Case, capsys: pytest.CaptureFixture[str]) -> None:
    code = _exit_code(["validate", str(case.path)])
    out, err = capsys.readouterr()
    assert "Traceback" not in err, err
    assert code == 2, f"exit {code}, stderr:\n{err}"
    assert str(case.path) in err
    assert case.path_sub in err, f"stderr does not name {case.path_sub!r}:\n{err}"
    assert out == ""


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_cli_validate_json_bad_config_exits_2(
    case: Case, capsys: pytest.CaptureFixture[str]
) -> None:
    code = _exit_code(["validate", "--json", str(case.path)])
    out, err = capsys.readouterr()
    assert "Traceback" not in err, err
    assert code == 2, f"exit {code}, stderr:\n{err}"
    assert str(case.path) in err
    assert '"valid": true' not in out


@pytest.mark.parametrize(
    "argv",
    [
        pytest.param([], id="no-command"),
        pytest.param(["frobnicate"], id="unknown-command"),
        pytest.param(["validate"], id="missing-config"),
        pytest.param(["validate", "--json"], id="missing-config-json"),
        pytest.param(["validate", "a.toml", "b.toml"], id="two-configs"),
        pytest.param(["validate", "--bogus", "a.toml"], id="unknown-option"),
        pytest.param(["--no-such-flag"], id="unknown-global-option"),
    ],
)
def test_cli_usage_errors_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    code = _exit_code(argv)
    _out, err = capsys.readouterr()
    assert code == 2, f"exit {code}, stderr:\n{err}"
    assert "Traceback" not in err
    assert err.strip(), "a usage error must say something on stderr"
