"""Run a command and measure its own peak memory (for the hostile-input tests).

The command runs as a grandchild of the test process, under a small wrapper that waits for
it with os.wait4: ru_maxrss of a direct child of a large process (pytest after many tests)
starts at the parent's size (Linux keeps the forked image's high-water mark across exec),
so only a small parent gives the command's own peak. numba reserves much address space, so
memory is judged by RSS; RLIMIT_AS can still be set for commands that never import it.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

WRAPPER = """import os, resource, subprocess, sys
if os.environ.get("MEASURE_AS"):
    limit = int(os.environ["MEASURE_AS"])
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
child = subprocess.Popen(sys.argv[2:])
_, status, usage = os.wait4(child.pid, 0)
with open(sys.argv[1], "w") as out:
    out.write(str(usage.ru_maxrss))
sys.exit(os.waitstatus_to_exitcode(status))
"""


def run_measured(command: list, cwd, timeout: float = 120, address_space: int | None = None,
                 env: dict | None = None):
    """(exit status, stdout, stderr, peak RSS in MB, seconds) of `command` run in `cwd`;
    killed (with its process group) and an AssertionError after `timeout` seconds."""
    rss = Path(cwd) / ".maxrss"
    environment = {**(env or os.environ), "MEASURE_AS": str(address_space or "")}
    start = time.monotonic()
    child = subprocess.Popen([sys.executable, "-c", WRAPPER, str(rss), *map(str, command)],
                             cwd=cwd, env=environment, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = child.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(child.pid, 9)
        child.communicate()
        raise AssertionError(f"{' '.join(map(str, command))} still running after "
                             f"{timeout} s") from None
    seconds = time.monotonic() - start
    peak = int(rss.read_text()) / 1024 if rss.exists() else float("nan")
    return child.returncode, out, err, peak, seconds
