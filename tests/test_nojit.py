"""The small `nojit` subset also passes with NUMBA_DISABLE_JIT=1 (kernels run as Python)."""

import os
import subprocess
import sys

from conftest import ROOT


def test_nojit_subset_passes_without_the_jit():
    env = {**os.environ, "NUMBA_DISABLE_JIT": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-m", "nojit", "-p", "no:cacheprovider",
         str(ROOT / "tests")], env=env, capture_output=True, text=True, cwd=ROOT, check=False)
    summary = result.stdout.strip().splitlines()[-1] if result.stdout.strip() else ""
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert " passed" in summary and "deselected" in summary
