"""How long `cnndsl render` takes (issue: DenseNet-121 under 10 s, collapsed or not).

Times the whole command in a fresh process, median of 3 runs, for several examples and
formats. Prints a table; asserts nothing.

    python benchmarks/bench_render.py
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CASES = [("densenet121", False), ("densenet121", True), ("googlenet", False),
         ("resnet18", False), ("vgg16", True)]


def main() -> None:
    print(f"{'network':12} {'collapse':>8} {'svg (s)':>8} {'png (s)':>8} {'pdf (s)':>8}")
    with tempfile.TemporaryDirectory() as tmp:
        for name, collapse in CASES:
            row = []
            for fmt in ("svg", "png", "pdf"):
                command = [sys.executable, "-m", "cnndsl", "render",
                           str(ROOT / "examples" / f"{name}.cnn"), "-o",
                           str(Path(tmp) / f"{name}.{fmt}")] + (["--collapse"] if collapse else [])
                times = []
                for _ in range(3):
                    start = time.perf_counter()
                    subprocess.run(command, check=True, stderr=subprocess.DEVNULL)
                    times.append(time.perf_counter() - start)
                row.append(statistics.median(times))
            print(f"{name:12} {collapse!s:>8} " + " ".join(f"{t:8.2f}" for t in row))


if __name__ == "__main__":
    main()
