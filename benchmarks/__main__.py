"""Run the benchmarks: ``python -m benchmarks [NAME ...] [--skip NAME ...] [--out FILE]``.

Prints each figure with its goal and writes all of them, with the machine and the git revision,
to ``results/benchmarks/<UTC time>.json``.
"""

from __future__ import annotations

import argparse
import ast
import datetime
import importlib
import os
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

from benchmarks._common import REPO, machine
from gdis.io import write_json

HERE = Path(__file__).resolve().parent


def discover() -> list[str]:
    return sorted(path.stem for path in HERE.glob("*.py") if not path.stem.startswith("_"))


def _has_run_function(name: str) -> bool:
    tree = ast.parse((HERE / f"{name}.py").read_text())
    return any(isinstance(node, ast.FunctionDef) and node.name == "run" for node in tree.body)


def _run_script(name: str, workdir: Path) -> list[dict]:
    """A benchmark written as a script (called with ``--work-dir``): its exit status, wall time and output."""
    started = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", f"benchmarks.{name}", "--work-dir", str(workdir)], cwd=REPO,
                            capture_output=True, text=True)
    seconds = time.perf_counter() - started
    output = (result.stdout + result.stderr)[-4000:]
    return [{"figure": f"{name} (script)", "value": round(seconds, 2), "unit": "s wall", "goal": "see its output",
             "met": None if result.returncode == 0 else False, "details": {"returncode": result.returncode,
                                                                         "output_tail": output}}]


def run_benchmark(name: str, workdir: Path) -> list[dict]:
    if not _has_run_function(name):
        return _run_script(name, workdir)
    try:
        return importlib.import_module(f"benchmarks.{name}").run(workdir)
    except Exception:  # one broken benchmark must not lose the others' numbers
        return [{"figure": name, "value": None, "unit": "", "goal": "", "met": False,
                 "error": traceback.format_exc(limit=5), "details": {}}]


def describe(result: dict) -> str:
    if "skipped" in result:
        return f"{result['figure']}: skipped ({result['skipped']}); goal {result['goal']}"
    if "error" in result:
        return f"{result['figure']}: FAILED\n{result['error']}"
    verdict = {True: "met", False: "MISSED", None: "no verdict"}[result["met"]]
    value = result["value"]
    shown = f"{value:.4g}" if isinstance(value, float) else str(value)
    line = f"{result['figure']}: {shown} {result['unit']} (goal {result['goal']}: {verdict})"
    if "output_tail" in result["details"]:  # a script prints its own figures
        line += "\n" + "\n".join(result["details"]["output_tail"].strip().splitlines()[-10:])
    return line


def main(argv: list[str] | None = None) -> int:
    names = discover()
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.splitlines()[0])
    parser.add_argument("only", nargs="*", metavar="NAME", help=f"benchmarks to run (default: all of {', '.join(names)})")
    parser.add_argument("--skip", nargs="+", default=[], metavar="NAME", help="benchmarks not to run")
    parser.add_argument("--out", help="results JSON (default: results/benchmarks/<UTC time>.json)")
    args = parser.parse_args(argv)
    unknown = sorted(set(args.only + args.skip) - set(names))
    if unknown:
        parser.error(f"unknown benchmark(s) {', '.join(unknown)}; known: {', '.join(names)}")
    selected = [name for name in (args.only or names) if name not in args.skip]
    started = datetime.datetime.now(datetime.timezone.utc)
    out = Path(args.out) if args.out else REPO / "results" / "benchmarks" / f"{started:%Y-%m-%dT%H%M%SZ}.json"
    revision = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
    report = {"started": started.isoformat(timespec="seconds"), "git_revision": revision,
              "machine": machine(), "benchmarks": {}}
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    for name in selected:
        print(f"== {name}", flush=True)
        with tempfile.TemporaryDirectory(prefix=f"gdis-bench-{name}-") as workdir:
            results = run_benchmark(name, Path(workdir))
        report["benchmarks"][name] = results
        for result in results:
            print("  " + describe(result).replace("\n", "\n  "), flush=True)
    report["load_average_at_end"] = list(os.getloadavg())
    write_json(out, report, indent=1)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
