"""The workflow on a real Slurm (munged, slurmctld and slurmd started on this machine), and requeue on preemption.

Every job goes through sbatch (workflow/profiles/slurm) and gives the table a local run gives;
a failing job makes Snakemake fail and name its logs; a training job that gets the preemption
signal checkpoints, requeues itself and finishes from where it stopped.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time

import pandas as pd
import pytest
import yaml

from gdis.checkpoint import load_checkpoint
from gdis.splits import write_split
from tests.conftest import REPO, service_unavailable, train_file_args
from tests.slurm_cluster import SlurmCluster, missing_requirements

pytestmark = pytest.mark.slow
HARD_TIMEOUT = 1500  # seconds; `timeout -s KILL` ends a hung Snakemake whatever it waits for


@pytest.fixture(scope="module")
def slurm():
    if missing_requirements():
        service_unavailable(f"needs Slurm and munge as root: {missing_requirements()}")
    cluster = SlurmCluster()
    try:
        cluster.start()
        yield cluster
    finally:
        pids = [process.pid for process in cluster.daemons.values()]
        cluster.stop()
        for pid in pids:
            assert not os.path.exists(f"/proc/{pid}") or "zombie" in open(f"/proc/{pid}/status").read()


def _env(cluster: SlurmCluster) -> dict:
    return {**cluster.env, "PYTHONPATH": str(REPO)}


def _snakemake(workdir, env, *args) -> subprocess.CompletedProcess:
    return subprocess.run(["timeout", "-s", "KILL", str(HARD_TIMEOUT), "snakemake", *args], cwd=workdir, env=env,
                          capture_output=True, text=True)


def test_micro_pipeline_through_the_slurm_profile_matches_a_local_run(slurm, workflow_copy, micro_config_file,
                                                                       tmp_path_factory):
    local_copy = tmp_path_factory.mktemp("local")
    shutil.copytree(workflow_copy, local_copy, dirs_exist_ok=True)
    remote = _snakemake(workflow_copy, _env(slurm), "--profile", "workflow/profiles/slurm",
                        "--configfile", str(micro_config_file))
    assert remote.returncode == 0, (remote.stdout + remote.stderr)[-4000:]
    local = _snakemake(local_copy, _env(slurm), "--cores", "2", "--configfile", str(micro_config_file))
    assert local.returncode == 0, local.stderr[-3000:]

    output = remote.stdout + remote.stderr
    total = int(re.findall(r"\d+ of (\d+) steps \(100%\) done", output)[-1])  # rule `all` included: no command
    submitted = re.findall(r"has been submitted with SLURM jobid (\d+) \(log: (\S+)\)", output)
    assert len(submitted) == total - 1, output[-4000:]
    rules = {re.search(r"/results/logs/slurm/rule_(\w+?)/", log).group(1) for _, log in submitted}
    assert {"split", "train_supervised", "train_distillation", "evaluate", "table", "plot", "training_curves"} <= rules

    from_slurm = pd.read_csv(workflow_copy / "results" / "tables" / "micro.csv")
    from_local = pd.read_csv(local_copy / "results" / "tables" / "micro.csv")
    networks = yaml.safe_load((REPO / "config" / "config.yaml").read_text())["networks"]
    assert len(from_slurm) == 6 * len(networks)  # per network: 2 supervised rows, student + EMA of 2 distillations
    pd.testing.assert_frame_equal(from_slurm, from_local)


def test_failing_job_fails_snakemake_and_names_its_logs(slurm, workflow_copy, micro_config_file, tmp_path):
    config = yaml.safe_load(micro_config_file.read_text())
    images = tmp_path / "train_images"
    shutil.copytree(config["dataset"]["train_images"], images)
    missing = sorted(images.iterdir())[0]
    missing.unlink()  # training checks its image files first and stops, naming the file
    config["dataset"]["train_images"] = str(images)
    broken = tmp_path / "broken.yaml"
    broken.write_text(yaml.safe_dump(config))

    result = _snakemake(workflow_copy, _env(slurm), "--profile", "workflow/profiles/slurm", "--configfile",
                        str(broken), "--until", "train_supervised")
    output = result.stdout + result.stderr
    assert result.returncode != 0
    # The first job to read the images fails (a dataset check, or training); Snakemake names its logs
    # in the error report (other jobs, listed as they start, name theirs too).
    failure = output[output.index("Error in rule"):]
    rule_log = re.search(r"log: (results/logs/micro/\S+\.log)", failure).group(1)
    assert "results/logs/slurm/" in output
    assert missing.name in (workflow_copy / rule_log).read_text()


def test_preempted_training_job_checkpoints_requeues_and_finishes(slurm, micro_config_file, micro_dataset, tmp_path):
    config = yaml.safe_load(micro_config_file.read_text())
    config["train"].update(iterations=40, checkpoint_period=1000, lr_steps=[30])
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    write_split(micro_dataset / "annotations" / "train.json", tmp_path / "split", 25, fold=1, seed=0)
    log = tmp_path / "job.log"
    train = (f"gdis train --config {tmp_path / 'config.yaml'} --method supervised --label-percent 25 --fold 1 "
             f"{' '.join(train_file_args(tmp_path / 'split', micro_dataset / 'train'))} --out-dir {tmp_path / 'run'}")
    job_id = subprocess.run(
        ["sbatch", "--parsable", "--requeue", "--open-mode=append", "-o", str(log), "-t", "10",
         "--wrap", f"exec srun {train}"],
        env=_env(slurm), capture_output=True, text=True, check=True).stdout.strip()

    deadline = time.monotonic() + HARD_TIMEOUT / 2
    while "training steps 1 to" not in (log.read_text() if log.exists() else ""):
        assert time.monotonic() < deadline, log.read_text() if log.exists() else "no job log"
        time.sleep(0.2)
    # What Slurm does at preemption or at `--signal=TERM@...` before the time limit: SIGTERM to the job's steps.
    subprocess.run(["scancel", "--signal=TERM", job_id], env=slurm.env, check=True)
    while not (tmp_path / "run" / "model_final.pt").exists():
        assert time.monotonic() < deadline, log.read_text()
        time.sleep(0.5)

    # Requeueing ends the job's processes, so the stopped run's last words may not reach the log.
    text = log.read_text()
    assert "received SIGTERM: saving a checkpoint after this step" in text, text
    checkpoint = re.escape(str(tmp_path / "run" / "work" / "last.pt"))
    resumed = re.search(rf"resuming from {checkpoint} at step (\d+)", text)
    assert resumed and 1 <= int(resumed.group(1)) < 40, text
    assert load_checkpoint(tmp_path / "run" / "model_final.pt")["step"] == 40
    job = subprocess.run(["scontrol", "show", "job", job_id], env=slurm.env, capture_output=True, text=True).stdout
    assert "Restarts=1" in job
