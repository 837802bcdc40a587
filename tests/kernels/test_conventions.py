"""The package keeps its own rules: jit options, signatures, references, units, imports, docs."""

from __future__ import annotations

import ast
import inspect
import re
import subprocess
import sys
from pathlib import Path

import numba
import numpy as np
import pytest
from numba.core.registry import CPUDispatcher

import kernels
from kernels import _jit, aggregate, breaker, headroom, reference, tick

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "kernels"
KERNEL_MODULES = (aggregate, breaker, headroom, tick)

# every jitted kernel and its plain-Python twin in kernels.reference
REFERENCE_OF = {
    "_psu_load_va_into": "psu_load_va",
    "_aggregate_tree_into": "aggregate_tree",
    "_phase_current_into": "phase_current_a",
    "_neutral_current_into": "neutral_current_a",
    "_tree_current_into": "tree_current_a",
    "_breaker_step": "breaker_step",
    "_time_to_trip_s": "time_to_trip_s",
    "_headroom_into": "headroom_a",
    "_feed_loss_current_into": "feed_loss_current_a",
    "_worst_case_headroom_into": "worst_case_headroom_a",
    "_worst_case_utilization_into": "worst_case_utilization",
    "_worst_case_current_into": "worst_case_current_a",
    "_worst_case_current_update_into": "worst_case_current_va",
    "_measured_load_into": "measured_load_a",
    "_node_utilization_into": "node_utilization",
    "_measured_at_into": "measured_at",
    "_node_quality_into": "node_quality",
    "_screen_readings_into": "screen_readings",
    "_step_budget_into": "step_budget",
    "_worst_server_power_into": "worst_server_power",
    "_psu_on_into": "psu_on",
    "_guard_servers_into": "guard_servers",
    "_screen_servers_into": "screen_servers",
    "_unknown_since_into": "unknown_since",
}


requires_jit = pytest.mark.skipif(
    numba.config.DISABLE_JIT, reason="NUMBA_DISABLE_JIT=1: the kernels are plain Python"
)


def dispatchers():
    found = {}
    for module in KERNEL_MODULES:
        for name, obj in vars(module).items():
            if isinstance(obj, CPUDispatcher) and obj.py_func.__module__ == module.__name__:
                found[name] = obj
    return found


@requires_jit
def test_every_kernel_is_known_and_has_a_reference():
    assert set(dispatchers()) == set(REFERENCE_OF)
    for ref in REFERENCE_OF.values():
        assert callable(getattr(reference, ref))
        assert not isinstance(getattr(reference, ref), CPUDispatcher)


@requires_jit
@pytest.mark.parametrize("name", sorted(REFERENCE_OF))
def test_kernel_jit_options_and_fixed_signature(name):
    disp = dispatchers()[name]
    assert disp.targetoptions["nogil"] is True
    assert disp.targetoptions["error_model"] == "numpy"
    assert disp.targetoptions["nopython"] is True
    assert type(disp._cache).__name__ == "FunctionCache"  # cache=True
    assert len(disp.signatures) == 1
    assert not disp._can_compile  # nothing compiles later, mid-incident
    params = inspect.signature(disp.py_func).parameters
    for arg_name, arg in zip(params, disp.signatures[0], strict=True):
        if isinstance(arg, numba.types.Array):
            assert arg.layout == "C"
            # inputs read-only (a compiled hall's arrays are), written arrays writeable
            written = arg_name.startswith(("out_", "scratch_"))
            assert arg.mutable is written, arg_name


@requires_jit
@pytest.mark.parametrize("name", sorted(REFERENCE_OF))
def test_kernels_call_kernels_of_their_own_module_only(name):
    # numba's cache is invalidated by the source file of a kernel, not by the files of the
    # kernels it calls: a call across modules could run stale machine code after an edit.
    disp = dispatchers()[name]
    home = disp.py_func.__module__
    for global_name in disp.py_func.__code__.co_names:
        callee = disp.py_func.__globals__.get(global_name)
        if isinstance(callee, CPUDispatcher):
            assert callee.py_func.__module__ == home, f"{name} calls {global_name}"


@requires_jit
def test_a_wrong_dtype_does_not_compile_a_new_kernel():
    parent = np.array([-1, 0], np.int64)  # not int32
    with pytest.raises(TypeError):
        aggregate._aggregate_tree_into(parent, np.zeros((2, 3)))


def test_jit_options_live_in_one_place():
    assert _jit.JIT_OPTIONS == {"cache": True, "nogil": True, "error_model": "numpy"}
    for path in PACKAGE.glob("*.py"):
        if path.name == "_jit.py":
            continue
        text = path.read_text(encoding="utf-8")
        assert "njit" not in text and "numba.jit" not in text, path.name
    with pytest.raises(TypeError, match="explicit"):
        _jit.kernel()
    with pytest.raises(TypeError, match="explicit"):
        _jit.kernel("void(float64[::1])")  # type: ignore[arg-type]


UNIT_WORDS = re.compile(r"\b(VA|A|W|V|s|1)\b|×rating|\(×rating\)²")


@requires_jit
@pytest.mark.parametrize("name", sorted(REFERENCE_OF))
def test_kernel_docstring_states_maths_and_units(name):
    doc = dispatchers()[name].__doc__ or ""
    assert len(doc) > 80
    assert UNIT_WORDS.search(doc), name
    assert "Units" in doc or "units" in doc, name


def test_public_api_is_named_and_documented():
    for name in kernels.__all__:
        obj = getattr(kernels, name)
        assert not isinstance(obj, CPUDispatcher), name
        if callable(obj) and not isinstance(obj, type):
            assert obj.__doc__ and len(obj.__doc__) > 40, name


def test_array_arguments_carry_units():
    unit = re.compile(r"_(va|a|w|s|v|x)$")
    unitless = {
        "parent_idx",
        "psu_server",
        "psu_node",
        "psu_phase",
        "psu_alive",
        "psu_feed",
        "node_feed",
        "server_pf",
        "n_nodes",
        "theta",
        "out_theta",
        "out_tripped",
        "out_cause",
        "thermal_k",
        "curve",
        "magnetic",
        "tolerance",
        "params",
        "scratch_alive",
        "out_utilization",
    }
    for module in KERNEL_MODULES:
        for name in module.__all__:
            obj = getattr(module, name)
            if not inspect.isfunction(obj):
                continue
            for arg in inspect.signature(obj).parameters:
                assert arg in unitless or unit.search(arg), f"{name}({arg})"


ALLOWED_IMPORTS = {
    "__future__",
    "math",
    "typing",
    "collections",
    "functools",
    "numpy",
    "numba",
    "kernels",
}


@pytest.mark.parametrize("path", sorted(PACKAGE.glob("*.py")), ids=lambda p: p.name)
def test_kernels_import_nothing_else_of_ours(path):
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            names = [node.module or ""]
        else:
            continue
        for name in names:
            assert name.split(".")[0] in ALLOWED_IMPORTS, f"{path.name} imports {name}"
    for banned in ("print(", "logging", "time.", "open("):
        assert banned not in path.read_text(encoding="utf-8"), f"{path.name}: {banned}"


def test_reference_uses_no_numba():
    tree = ast.parse((PACKAGE / "reference.py").read_text(encoding="utf-8"))
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            imported.add((node.module or "").split(".")[0])
    assert imported <= {"__future__", "math", "typing", "numpy"}


def test_documentation_examples_run():
    doc = ROOT / "docs" / "kernels.md"
    blocks = re.findall(r"```python\n(.*?)```", doc.read_text(encoding="utf-8"), flags=re.S)
    assert blocks, "docs/kernels.md has no python example"
    for block in blocks:
        exec(compile(block, str(doc), "exec"), {"__name__": "docs_example"})


def test_kernels_do_not_import_the_rest_of_rampguard():
    code = (
        "import sys, kernels, kernels.reference; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in "
        "{'controller', 'drivers', 'sim'}))"
    )
    done = subprocess.run(
        [sys.executable, "-W", "error", "-c", code],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    assert done.stdout.strip() == "[]"
