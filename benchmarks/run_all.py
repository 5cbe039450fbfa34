"""Run every benchmark one after another (one at a time: they measure the machine).

    .venv/bin/python benchmarks/run_all.py [--full]

Each script writes its JSON into benchmarks/results/; `--quick` is passed unless --full.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def main() -> int:
    full = "--full" in sys.argv[1:]
    here = Path(__file__).parent
    failed = []
    for script in sorted(here.glob("bench_*.py")):
        cmd = [sys.executable, str(script)] + ([] if full else ["--quick"])
        print(f"== {script.name}", flush=True)
        if subprocess.run(cmd).returncode != 0:
            failed.append(script.name)
    if failed:
        print(f"failed: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
