"""What a run used: configuration, package versions, git revision, machine."""

from __future__ import annotations

import platform
import subprocess
import sys
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

PACKAGES = ("torch", "torchvision", "numpy", "pycocotools", "snakemake", "gdis")


def git_revision(directory: str | Path = ".") -> dict:
    """HEAD commit and whether the work tree has uncommitted changes ('unknown' outside a git checkout)."""
    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], cwd=directory, capture_output=True, text=True, check=True, timeout=10
        ).stdout.strip()

    try:
        return {"commit": git("rev-parse", "HEAD"), "dirty": bool(git("status", "--porcelain", "--untracked-files=no"))}
    except (OSError, subprocess.SubprocessError):
        return {"commit": "unknown", "dirty": None}


def versions() -> dict:
    found = {"python": sys.version.split()[0]}
    for package in PACKAGES:
        try:
            found[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            found[package] = None
    return found


def run_record(config: dict, **details) -> dict:
    """A JSON-ready record of one job: its arguments, the full config, versions, revision, host and time."""
    return {
        **details,
        "config": config,
        "versions": versions(),
        "git": git_revision(),
        "host": platform.node(),
        "platform": platform.platform(),
        "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
