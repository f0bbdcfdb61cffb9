"""The CPU path (vector instruction set) the kernels run: what build_info reports, set_cpu_isa, and
PYLTH_CPU_ISA read once when pylth is imported (pylth/ops/native.py, csrc/cpu_dispatch.h)."""
import importlib
import os
import subprocess
import sys

import pytest

import pylth
from pylth.ops import cpu_isa, set_cpu_isa
from pylth.ops.native import CPU_ISA_ENV, CPU_ISAS

# The loader module itself (pylth.ops.native, as an attribute of pylth.ops, is the native module).
native_module = importlib.import_module("pylth.ops.native")

SUPPORTED = pylth.build_info()["cpu_isa_supported"]


def run_python(code, isa=None):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env.pop(CPU_ISA_ENV, None)
    if isa is not None:
        env[CPU_ISA_ENV] = isa
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)


def test_build_info_names_the_path_and_every_path_the_cpu_has():
    info = pylth.build_info()
    assert info["cpu_isa"] == cpu_isa() == (os.environ.get(CPU_ISA_ENV, "").strip() or SUPPORTED[0])
    assert SUPPORTED[-1] == "baseline" and all(name in CPU_ISAS for name in SUPPORTED)
    assert SUPPORTED == [name for name in CPU_ISAS if name in SUPPORTED]  # widest first, no gaps below
    assert SUPPORTED == list(CPU_ISAS[CPU_ISAS.index(SUPPORTED[0]):])


@pytest.mark.skipif(not os.path.exists("/proc/cpuinfo"), reason="reads the CPU's flags from /proc/cpuinfo (Linux)")
def test_the_widest_path_is_what_the_cpu_and_its_os_report():
    with open("/proc/cpuinfo") as f:
        flags = next(line for line in f if line.startswith("flags")).split(":", 1)[1].split()
    if "avx" not in flags and "sse2" not in flags:
        pytest.skip("not an x86-64 CPU")
    # Linux lists avx512* only where the OS saves the ZMM state too; abm is LZCNT.
    avx512 = all(f in flags for f in ("avx512f", "avx512cd", "avx512bw", "avx512dq", "avx512vl"))
    avx2 = all(f in flags for f in ("avx2", "fma", "bmi1", "bmi2", "abm", "popcnt"))
    assert SUPPORTED[0] == ("avx512" if avx512 and avx2 else "avx2" if avx2 else "baseline")


def test_set_cpu_isa_switches_every_supported_path_and_returns_the_previous_one():
    start = cpu_isa()
    try:
        for name in SUPPORTED:
            previous = cpu_isa()
            assert set_cpu_isa(name) == previous
            assert cpu_isa() == name and pylth.build_info()["cpu_isa"] == name
    finally:
        set_cpu_isa(start)


def test_bad_names_are_errors_naming_the_argument():
    with pytest.raises(TypeError, match="name must be a str"):
        set_cpu_isa(2)
    with pytest.raises(ValueError, match=r"name='sse4'.*unknown CPU path; choose one of avx512, avx2, baseline"):
        set_cpu_isa("sse4")
    with pytest.raises(ValueError, match="unknown CPU path"):  # the native module checks too
        native_module.native.set_cpu_isa("AVX2")


def test_a_path_the_cpu_lacks_is_an_error_that_says_what_it_has(monkeypatch):
    start = cpu_isa()
    monkeypatch.setattr(native_module.native, "cpu_isa_supported", lambda: ["avx2", "baseline"])
    with pytest.raises(ValueError, match="this CPU has no avx512 path; it supports avx2, baseline"):
        set_cpu_isa("avx512")
    assert cpu_isa() == start


@pytest.mark.skipif("avx512" in SUPPORTED, reason="this CPU has AVX-512: every path is supported")
def test_the_native_module_refuses_a_path_the_cpu_lacks():
    with pytest.raises(ValueError, match="has no avx512 path; it supports " + ", ".join(SUPPORTED)):
        native_module.native.set_cpu_isa("avx512")


@pytest.mark.parametrize("isa", SUPPORTED)
def test_the_environment_variable_forces_a_path_at_import(isa):
    proc = run_python("import pylth; print(pylth.build_info()['cpu_isa'])", isa)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == [isa]


@pytest.mark.parametrize("value", ["avx1024", "sse2", *[name for name in CPU_ISAS if name not in SUPPORTED]])
def test_a_bad_environment_variable_makes_the_native_module_unavailable_with_one_message(value):
    code = ("import pylth; from pylth.ops.native import NativeUnavailable, require_native; "
            "info = pylth.build_info(); print(info['available']); print(info['error'])\n"
            "try:\n    require_native()\nexcept NativeUnavailable as e:\n    print(e)")
    proc = run_python(code, value)
    assert proc.returncode == 0, proc.stderr
    available, error, raised = proc.stdout.strip().split("\n")
    assert available == "False" and error == raised
    assert error.startswith(f"{CPU_ISA_ENV}={value}: ") and "supports " + ", ".join(SUPPORTED) in error


def test_a_command_reports_a_bad_environment_variable_in_one_line():
    proc = run_python("import sys; from pylth.cka.__main__ import main; sys.exit(main(['a', 'b']))", "avx1024")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"python -m pylth.cka: error: {CPU_ISA_ENV}=avx1024: unknown CPU path; choose one of avx512, avx2, baseline "
        f"(this CPU supports {', '.join(SUPPORTED)})"]
