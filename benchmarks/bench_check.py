"""How long `cnndsl check` takes on large networks (issue: 1,200 layers under 2 s).

Times the whole command in a fresh process (start-up, grammar, IR, shapes, table), median
of several runs, and the in-process front end alone. Prints a table; asserts nothing.

    python benchmarks/bench_check.py
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CASES = {
    "1,200 layers": "input 32x32x3\n(Conv(8, 3) -> BatchNorm -> ReLU) * 400 -> FC(10)\n",
    "12,000 layers": "input 32x32x3\n(Conv(8, 3) -> BatchNorm -> ReLU) * 4000 -> FC(10)\n",
    "DenseNet-121": (ROOT / "examples" / "densenet121.cnn").read_text(),
}


def median_time(fn, repeats: int = 5) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    import cnndsl

    print(f"{'network':14} {'layers':>7} {'front end (s)':>14} {'cnndsl check (s)':>17}")
    with tempfile.TemporaryDirectory() as tmp:
        for name, text in CASES.items():
            path = Path(tmp) / "net.cnn"
            path.write_text(text)
            graph = cnndsl.check_text(text)
            front = median_time(lambda text=text: cnndsl.check_text(text))
            command = [sys.executable, "-m", "cnndsl", "check", str(path)]
            whole = median_time(lambda command=command: subprocess.run(command, check=True,
                                                       stdout=subprocess.DEVNULL))
            print(f"{name:14} {graph.number_of_nodes() - 1:7,} {front:14.3f} {whole:17.3f}")
    probe = ("import sys, cnndsl.cli as c; c.main(['check', 'examples/lenet5.cnn']); "
             "print('numba imported:', 'numba' in sys.modules, file=sys.stderr)")
    out = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True,
                         text=True, check=True)
    print(out.stderr.strip())


if __name__ == "__main__":
    main()
