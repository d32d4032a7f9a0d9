"""`gdis train` killed with SIGKILL, or stopped by the scheduler's signal, resumes to the uninterrupted weights."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from gdis.checkpoint import load_checkpoint
from gdis.splits import write_split
from tests.conftest import REPO, train_file_args

ITERATIONS = 12


@pytest.fixture(scope="module")
def run_setup(micro_dataset, tmp_path_factory) -> dict:
    """A split and 12-step standard burn-in configs, single-threaded: checkpoints every 3 steps, or none."""
    root = tmp_path_factory.mktemp("preemption")
    write_split(micro_dataset / "annotations" / "train.json", root / "split", 25, fold=1, seed=0)
    config = yaml.safe_load((REPO / "config" / "micro.yaml").read_text())
    config["dataset"] = {"name": "micro", "source": "coco", "train_images": str(micro_dataset / "train"),
                         "train_annotations": str(micro_dataset / "annotations" / "train.json"),
                         "val_images": str(micro_dataset / "val"),
                         "val_annotations": str(micro_dataset / "annotations" / "val.json")}
    config["train"].update(iterations=ITERATIONS, burn_in=4, lr_steps=[9], checkpoint_period=3, threads=1)
    config["dataset"]["train_images"] = "/nonexistent"  # gdis train reads the images folder it is given
    (root / "config.yaml").write_text(yaml.safe_dump(config))
    config["train"]["checkpoint_period"] = ITERATIONS + 1  # only a signal writes a checkpoint
    (root / "no_periodic_checkpoints.yaml").write_text(yaml.safe_dump(config))
    return {"root": root, "split": root / "split", "images": micro_dataset / "train"}


def _command(setup: dict, out_dir: Path, config: str = "config.yaml") -> list[str]:
    return [sys.executable, "-m", "gdis.cli", "train", "--config", str(setup["root"] / config),
            "--method", "standard_burnin",
            "--label-percent", "25", "--fold", "1", *train_file_args(setup["split"], setup["images"]),
            "--out-dir", str(out_dir)]


def _env() -> dict:
    env = {key: value for key, value in os.environ.items() if not key.startswith("SLURM_")}
    return {**env, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}


def _wait_for(predicate, process: subprocess.Popen, what: str, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if process.poll() is not None:
            raise AssertionError(f"training exited ({process.returncode}) before {what}")
        if time.monotonic() > deadline:
            process.kill()
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def _assert_same_networks(a: Path, b: Path) -> None:
    first, second = load_checkpoint(a), load_checkpoint(b)
    assert first["step"] == second["step"] == ITERATIONS
    for network in ("student", "ema_teacher"):
        for key, value in first[network].items():
            assert torch.equal(value, second[network][key]), (network, key)


@pytest.fixture(scope="module")
def uninterrupted(run_setup) -> Path:
    out = run_setup["root"] / "uninterrupted"
    result = subprocess.run(_command(run_setup, out), env=_env(), capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return out / "model_final.pt"


@pytest.mark.slow
def test_sigkill_then_rerun_gives_the_uninterrupted_weights(run_setup, uninterrupted):
    out = run_setup["root"] / "killed"
    process = subprocess.Popen(_command(run_setup, out), env=_env(), stderr=subprocess.DEVNULL)
    _wait_for((out / "work" / "last.pt").exists, process, "the first checkpoint")
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (out / "model_final.pt").exists()
    assert load_checkpoint(out / "work" / "last.pt")["step"] < ITERATIONS

    rerun = subprocess.run(_command(run_setup, out), env=_env(), capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "resuming from" in rerun.stderr
    _assert_same_networks(uninterrupted, out / "model_final.pt")
    assert not (out / "work").exists()


@pytest.mark.slow
def test_preemption_signal_saves_a_checkpoint_and_the_rerun_resumes(run_setup, uninterrupted):
    out = run_setup["root"] / "preempted"
    log = run_setup["root"] / "preempted.log"
    command = _command(run_setup, out, "no_periodic_checkpoints.yaml")
    with log.open("w") as stderr:
        process = subprocess.Popen(command, env=_env(), stderr=stderr)
        _wait_for(lambda: "training steps 1 to" in log.read_text(), process, "training to start")
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=300) == 1
    message = log.read_text()
    assert "stopped by SIGTERM after step" in message and "rerun the same command to resume" in message
    saved = load_checkpoint(out / "work" / "last.pt")
    assert 1 <= saved["step"] < ITERATIONS
    assert not (out / "model_final.pt").exists()

    rerun = subprocess.run(command, env=_env(), capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert f"resuming from {out / 'work' / 'last.pt'} at step {saved['step']}" in rerun.stderr
    _assert_same_networks(uninterrupted, out / "model_final.pt")
