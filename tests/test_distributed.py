"""Multi-process training: sharded global batches, averaged gradients, identical networks on every process."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from gdis import distributed
from gdis.data import StepBatchSampler
from gdis.splits import write_split
from tests.conftest import REPO

# One training run, as a process of its own; torchrun starts it twice. Every anchor and proposal
# enters the losses (no random subsampling), so the losses do not depend on which process draws
# the samples and one process can be compared with two.
WORKER = """
import sys, torch
from gdis import distributed
from gdis.config import load_config
from gdis.builder import RunFiles
from gdis.trainer import Trainer
from gdis.models import mask_rcnn

config_file, split_dir, images, out_dir, states, norm = sys.argv[1:]
build_tiny = mask_rcnn.build_tiny
if norm == "batch":  # the tiny body with batch norm: statistics that each process computes on its own images
    def conv_with_batch_norm(in_channels, out_channels, stride):
        return torch.nn.Sequential(torch.nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False),
                                   torch.nn.BatchNorm2d(out_channels), torch.nn.ReLU(inplace=True))
    mask_rcnn._conv = conv_with_batch_norm

def build_without_sampling(num_classes, model_config):
    net = build_tiny(num_classes, model_config)
    net.rpn.fg_bg_sampler.batch_size_per_image = 10**6
    net.roi_heads.fg_bg_sampler.batch_size_per_image = 10**6
    return net

mask_rcnn.BUILDERS["tiny"] = build_without_sampling
torch.set_num_threads(1)
world = distributed.init_world()
files = RunFiles(labeled=split_dir + "/labeled.json", unlabeled=split_dir + "/unlabeled.json", images=images)
trainer = Trainer.from_files(load_config([config_file]), "standard_burnin", files, out_dir, world,
                             run_info={"label_percent": 25.0, "fold": 1})
initial = {k: v.clone() for k, v in trainer.student.state_dict().items()}
trainer.run()
torch.save({"initial": initial, "student": trainer.student.state_dict(), "ema_teacher": trainer.teacher.state_dict()},
           f"{states}.rank{world.rank}")
distributed.close_world(world)
"""


def test_shards_of_a_step_make_up_the_single_process_batch():
    single = StepBatchSampler(10, 4, seed=7, start_step=0, num_steps=5)
    shards = [StepBatchSampler(10, 4, seed=7, start_step=0, num_steps=5, rank=r, world_size=2) for r in (0, 1)]
    for step in range(5):
        batch = single.batch(step)
        assert shards[0].batch(step) == batch[0::2] and shards[1].batch(step) == batch[1::2]


def test_global_batch_must_split_over_the_processes():
    world = distributed.World(rank=0, size=3)
    with pytest.raises(ValueError, match=r"train.unlabeled_batch_size: 4 images per step do not split over 3"):
        distributed.check_batch_sizes({"batch_size": 6, "unlabeled_batch_size": 4}, world, with_unlabeled=True)
    distributed.check_batch_sizes({"batch_size": 6, "unlabeled_batch_size": 4}, world, with_unlabeled=False)


def test_launcher_starts_one_process_per_gpu():
    assert distributed.launcher(nodes=1, processes_per_node=0) == ""
    assert distributed.launcher(nodes=1, processes_per_node=1) == ""
    assert "torchrun --standalone --nnodes=1 --nproc-per-node=4 --no-python" == distributed.launcher(1, 4)
    across = distributed.launcher(nodes=2, processes_per_node=8)
    assert across.startswith("srun --overlap --nodes=2 --ntasks-per-node=1")
    assert "torchrun --nnodes=2 --nproc-per-node=8" in across and "--rdzv-id=$SLURM_JOB_ID" in across


def test_processes_of_a_node_share_its_threads(monkeypatch):
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    assert distributed.threads_per_process(8) == 8
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    assert distributed.threads_per_process(8) == 2 and distributed.threads_per_process(2) == 1


def test_scheduler_resources_use_the_slurm_plugin_names():
    job = {"mem_mb": 8000, "runtime": 120, "gpus": 4, "nodes": 2, "partition": "gpu", "account": None,
           "slurm_extra": "--exclusive"}
    assert distributed.scheduler_resources(job) == {
        "mem_mb": 8000, "runtime": 120, "nodes": 2, "gpu": 8, "slurm_partition": "gpu", "slurm_account": "",
        "slurm_extra": "--exclusive"}
    cpu_only = {**job, "gpus": 0, "nodes": 1, "partition": None, "slurm_extra": ""}
    # Unset values are empty (0 GPUs), which the Slurm executor leaves out of sbatch.
    assert distributed.scheduler_resources(cpu_only) == {"mem_mb": 8000, "runtime": 120, "nodes": 1, "gpu": 0,
                                                         "slurm_partition": "", "slurm_account": "", "slurm_extra": ""}


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGUSR1])
def test_preemption_signal_is_recorded_not_fatal(signum):
    before = signal.getsignal(signum)
    with distributed.preemption_signals() as preemption:
        os.kill(os.getpid(), signum)
        assert preemption["signal"] == signum
    assert signal.getsignal(signum) == before


def _worker_args(micro_config_file, micro_dataset, tmp_path, preset: str | None = None) -> list[str]:
    config = yaml.safe_load(micro_config_file.read_text())
    if preset:
        overlay = yaml.safe_load((REPO / "config" / "networks" / preset).read_text())
        for section, values in overlay.items():
            config[section] = {**config.get(section, {}), **values}
        config["model"]["backbone_weights"] = None  # random weights: the preset's pre-trained file is not made here
    config["train"]["augment"] = {"flip_probability": 0.0, "color_jitter_probability": 0.0,
                                  "grayscale_probability": 0.0, "blur_probability": 0.0}
    config_file = tmp_path / "config.yaml"
    config_file.write_text(yaml.safe_dump(config))
    write_split(micro_dataset / "annotations" / "train.json", tmp_path / "split", 25, fold=1, seed=0)
    return [str(config_file), str(tmp_path / "split"), str(micro_dataset / "train")]


def _environment() -> dict:
    return {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}


def _two_processes(args: list[str], out: Path, norm: str) -> tuple[dict, dict]:
    two = subprocess.run(["torchrun", "--standalone", "--nproc-per-node=2", "--no-python", sys.executable, "-c",
                          WORKER, *args, str(out), str(out), norm],
                         env=_environment(), capture_output=True, text=True, timeout=600)
    assert two.returncode == 0, two.stderr[-3000:]
    rank0, rank1 = (torch.load(f"{out}.rank{r}", weights_only=True) for r in (0, 1))
    for network in ("student", "ema_teacher"):
        for key, value in rank0[network].items():
            assert torch.equal(value, rank1[network][key]), f"{network}.{key} differs between the ranks"
    return rank0, rank1


@pytest.mark.slow
def test_batch_norm_statistics_stay_identical_across_processes(micro_config_file, micro_dataset, tmp_path):
    """Each process normalises its own images, so only the buffer broadcast keeps the networks equal."""
    rank0, _ = _two_processes(_worker_args(micro_config_file, micro_dataset, tmp_path), tmp_path / "two", "batch")
    statistics = [key for key in rank0["student"] if key.endswith("running_mean")]
    assert statistics, "the worker's model has no batch norm"
    assert any(not torch.equal(rank0["initial"][key], rank0["student"][key]) for key in statistics)
    assert any(not torch.equal(rank0["initial"][key], rank0["ema_teacher"][key]) for key in statistics)


@pytest.mark.slow
def test_mask2former_trains_under_ddp_without_unused_parameters(micro_config_file, micro_dataset, tmp_path):
    """Every trainable Mask2Former parameter gets a gradient each step, as DDP without find_unused_parameters needs."""
    args = _worker_args(micro_config_file, micro_dataset, tmp_path, preset="mask2former_tiny.yaml")
    rank0, _ = _two_processes(args, tmp_path / "two", "group")
    assert any(not torch.equal(rank0["initial"][k], v) for k, v in rank0["student"].items())


@pytest.mark.slow
def test_two_gloo_processes_match_one_process_with_the_same_global_batch(micro_config_file, micro_dataset, tmp_path):
    args = _worker_args(micro_config_file, micro_dataset, tmp_path)
    single = subprocess.Popen([sys.executable, "-c", WORKER, *args, str(tmp_path / "one"), str(tmp_path / "one"),
                               "group"], env=_environment(), stderr=subprocess.PIPE, text=True)
    rank0, _ = _two_processes(args, tmp_path / "two", "group")
    assert single.wait(timeout=600) == 0, single.stderr.read()[-3000:]
    one = torch.load(tmp_path / "one.rank0", weights_only=True)
    # Only rank 0 wrote the run's files.
    assert (tmp_path / "two" / "model_final.pt").exists()
    written = torch.load(tmp_path / "two" / "model_final.pt", weights_only=True)
    assert all(torch.equal(written["student"][k], v) for k, v in rank0["student"].items())

    # Against one process: the same steps up to how the losses weight images. Box and mask losses are
    # means over a batch's proposals and positive boxes, whose number varies by image: one process
    # averages over the whole batch, two average the means of their halves. That moves the weights
    # 12 % of the way they travel here (measured); summing instead of averaging gradients doubles each step.
    floats = [k for k, v in one["student"].items() if v.dtype.is_floating_point]
    flat = {name: torch.cat([states[k].flatten() for k in floats])
            for name, states in (("initial", one["initial"]), ("one", one["student"]), ("two", rank0["student"]))}
    assert torch.equal(flat["initial"], torch.cat([rank0["initial"][k].flatten() for k in floats]))
    moved = (flat["one"] - flat["initial"]).norm()
    assert moved > 0
    assert (flat["two"] - flat["one"]).norm() < 0.25 * moved
