"""Figure 4: the built-in demo end to end (``snakemake --cores 2`` on config/config.yaml), wall time and memory.

Runs on a fresh copy of the workflow, from dataset generation to the plots (about a quarter of an
hour of both cores). Peak memory is the largest sum of resident memory over Snakemake and all its
child processes, sampled every half second.
"""

from __future__ import annotations

import subprocess
import threading
import time
from pathlib import Path

from benchmarks._common import copy_workflow, figure

GOAL_SECONDS = 600


def _tree_rss(process) -> int:
    import psutil

    total = 0
    for member in [process, *process.children(recursive=True)]:
        try:
            total += member.memory_info().rss
        except psutil.NoSuchProcess:
            pass
    return total


def run(workdir: Path) -> list[dict]:
    import psutil

    copy_workflow(workdir)
    peak = 0
    started = time.perf_counter()
    with open(workdir / "snakemake.log", "w") as log:
        process = subprocess.Popen(["snakemake", "--cores", "2"], cwd=workdir, stdout=log, stderr=subprocess.STDOUT)
        watched = psutil.Process(process.pid)
        done = threading.Event()

        def sample() -> None:
            nonlocal peak
            while not done.wait(0.5):
                try:
                    peak = max(peak, _tree_rss(watched))
                except psutil.NoSuchProcess:
                    return

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        returncode = process.wait()
        done.set()
        sampler.join()
    seconds = time.perf_counter() - started
    table = workdir / "results" / "tables" / "shapes.md"
    details = {"returncode": returncode, "peak_memory_mib": round(peak / 2**20),
               "table": table.read_text() if table.exists() else None,
               "log_tail": (workdir / "snakemake.log").read_text()[-3000:] if returncode else None}
    return [
        figure("demo end-to-end wall time (snakemake --cores 2)", seconds / 60, "min", f"≤ {GOAL_SECONDS // 60} min",
               returncode == 0 and seconds <= GOAL_SECONDS, **details),
        figure("demo peak memory (all processes)", peak / 2**30, "GiB", "reported", None),
    ]
