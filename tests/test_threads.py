"""Threads and BLAS are configured at run time, around cnndsl's own work (cnndsl.threads):
`import cnndsl` changes nothing in the process, whatever the import order, and a step leaves
the user's thread settings (BLAS libraries, Numba) and environment as they were.

Each check runs in a fresh interpreter: what is loaded, and when, is the point."""

import ctypes
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from cnndsl import threads

ROOT = Path(__file__).resolve().parent.parent
TINY = "input 8x8x1\nConv(4, 3) -> ReLU -> MaxPool(2) -> FC(3) -> Softmax"
OPENMP_NAMES = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")

#: a step of the tiny network: whole (parallel kernels, one BLAS thread) or cut into shards
STEP = f"""
import cnndsl.model
if SHARDED:
    cnndsl.model.SMALL_NET_MACS = 0  # cut the tiny network as a large one is cut
model = cnndsl.compile({TINY!r})
x = np.random.default_rng(0).normal(size=(32, 8, 8, 1)).astype(np.float32)
model.loss_and_grads(x, np.arange(32) % 3)
"""

C_ENVIRONMENT = """
import ctypes
_libc = ctypes.CDLL(None)
_libc.getenv.restype = ctypes.c_char_p
def c_environment():  # what C code (libgomp's loader) reads, not os.environ's copy
    return {name: _libc.getenv(name.encode()) for name in OPENMP_NAMES}
"""


def run_python(code: str, **environment) -> subprocess.CompletedProcess:
    """`code` in a fresh interpreter that imports this checkout's cnndsl; its last stdout
    line is JSON."""
    env = {k: v for k, v in os.environ.items() if k not in OPENMP_NAMES}
    env.update(environment, PYTHONPATH=str(ROOT))
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            env=env, cwd=ROOT, timeout=300, check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    return result


def last_json(result: subprocess.CompletedProcess):
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("first", ["numpy", "cnndsl"])
def test_import_changes_nothing(first):
    second = "cnndsl" if first == "numpy" else "numpy"
    report = last_json(run_python(f"""
import json, os, sys
OPENMP_NAMES = {OPENMP_NAMES!r}
{C_ENVIRONMENT}
before = dict(os.environ)
import {first}
import {second}
print(json.dumps({{"environment_changed": dict(os.environ) != before,
                  "c_environment": {{k: v is not None for k, v in c_environment().items()}},
                  "numba_loaded": "numba" in sys.modules}}))
"""))
    assert report == {"environment_changed": False,
                      "c_environment": dict.fromkeys(OPENMP_NAMES, False),
                      "numba_loaded": False}


@pytest.mark.parametrize("sharded", [False, True], ids=["whole", "sharded"])
def test_a_step_restores_the_users_thread_settings(sharded):
    """The user's own settings, chosen before the step (3 BLAS threads, Numba's default
    count), are what they were after it; the kernels' BLAS is not left pinned to one
    thread, and no OpenMP variable is left in the environment."""
    report = last_json(run_python(f"""
import json, os
import numpy as np
import scipy.linalg.cython_blas  # the user's SciPy: its BLAS is the kernels' BLAS
import numba
import threadpoolctl
import cnndsl
OPENMP_NAMES = {OPENMP_NAMES!r}
SHARDED = {sharded}
{C_ENVIRONMENT}
threadpoolctl.threadpool_limits(limits=3, user_api="blas")  # the user's choice
def blas_threads():
    return sorted((lib["filepath"], lib["num_threads"])
                  for lib in threadpoolctl.threadpool_info() if lib["user_api"] == "blas")
environment, blas, numba_count = dict(os.environ), blas_threads(), numba.get_num_threads()
{STEP}
print(json.dumps({{"environment_kept": dict(os.environ) == environment,
                  "c_environment": {{k: v is not None for k, v in c_environment().items()}},
                  "blas_before": blas, "blas_after": blas_threads(),
                  "numba_before": numba_count, "numba_after": numba.get_num_threads(),
                  "shards": len(model._last_shards)}}))
"""))
    assert report["shards"] == (2 if sharded else 1)
    assert len(report["blas_before"]) >= 2  # NumPy's and SciPy's (separate in the wheels)
    assert {count for _, count in report["blas_before"]} == {3}
    assert report["blas_after"] == report["blas_before"]
    assert report["numba_after"] == report["numba_before"]
    assert report["environment_kept"]
    assert report["c_environment"] == dict.fromkeys(OPENMP_NAMES, False)


OPENMP_DISPLAYED = f"""
import json
import numpy as np
import numba
import cnndsl
SHARDED = False
if USER_STARTS_NUMBA:
    numba.get_num_threads()  # the user's own parallel work started Numba's layer first
{STEP}
print(json.dumps(numba.threading_layer()))
"""


@pytest.mark.parametrize("user", ["nothing", "wait_policy", "starts_numba"])
def test_openmp_waits_passively_unless_the_user_chose(user):
    """libgomp reads its waiting settings when Numba's layer loads it: cnndsl's first
    parallel work gives it a short spin and passive waiting, unless the user set either
    variable or started Numba's layer first (their choice, or libgomp's default, stands).
    libgomp prints what it read (OMP_DISPLAY_ENV=VERBOSE); it shows an unset policy as
    PASSIVE too, with its default spin count (300000)."""
    environment = {"OMP_DISPLAY_ENV": "VERBOSE"}
    if user == "wait_policy":
        environment["OMP_WAIT_POLICY"] = "ACTIVE"
    code = f"USER_STARTS_NUMBA = {user == 'starts_numba'}\n" + OPENMP_DISPLAYED
    result = run_python(code, **environment)
    if last_json(result) != "omp":
        pytest.skip("Numba's threading layer here is not OpenMP")
    displayed = result.stderr
    if user == "nothing":
        assert "OMP_WAIT_POLICY = 'PASSIVE'" in displayed
        assert "GOMP_SPINCOUNT = '10000'" in displayed
    else:
        assert "GOMP_SPINCOUNT = '10000'" not in displayed
        assert "GOMP_SPINCOUNT = '" in displayed
    if user == "wait_policy":
        assert "OMP_WAIT_POLICY = 'ACTIVE'" in displayed


def c_getenv(name: str):
    libc = ctypes.CDLL(None)
    libc.getenv.restype = ctypes.c_char_p
    return libc.getenv(name.encode())


def test_openmp_waiting_is_in_the_c_environment_only_while_numba_starts(monkeypatch):
    for name in OPENMP_NAMES:
        monkeypatch.delenv(name, raising=False)
    before = dict(os.environ)
    with threads._openmp_waiting():
        assert {name: c_getenv(name) for name in OPENMP_NAMES} == {
            name: value.encode() for name, value in threads.OPENMP_WAITING.items()}
        assert dict(os.environ) == before
    assert [c_getenv(name) for name in OPENMP_NAMES] == [None, None]
    assert dict(os.environ) == before


def test_a_users_openmp_waiting_is_left_alone(monkeypatch):
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    monkeypatch.setenv("GOMP_SPINCOUNT", "123")
    with threads._openmp_waiting():
        assert c_getenv("GOMP_SPINCOUNT") == b"123"
        assert c_getenv("OMP_WAIT_POLICY") is None
    assert c_getenv("GOMP_SPINCOUNT") == b"123"
