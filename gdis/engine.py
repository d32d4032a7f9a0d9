"""One training engine for the three methods: supervised, standard burn-in and guided distillation.

A step trains the student on a labelled batch; when a teacher is active (see
``distill.teacher_phase``) it also trains on an unlabelled batch whose targets are the
teacher's pseudo-labels on a weak view, the student seeing a strong view of the same geometry.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import signal
import sys
import time
from pathlib import Path

import torch
from tqdm import tqdm

from gdis import distill, distributed, pseudo_quality
from gdis.coco import category_ids, load_coco
from gdis.data import CocoInstances, labeled_view, photometric_augmentation, step_loader, unlabeled_views
from gdis.io import atomic_path, write_json, write_text
from gdis.models import build_model
from gdis.models.weights import load_state_dict_file
from gdis.provenance import run_record

log = logging.getLogger(__name__)
CHECKPOINT_FORMAT = "gdis-checkpoint-1"
# A supervised run's full training state at step train.burn_in: where standard_burnin continues from.
BURN_IN_CHECKPOINT = "burn_in.pt"


class TrainingError(RuntimeError):
    """Training cannot go on (for example a non-finite loss); the last good checkpoint is kept."""


def lr_factor(step: int, warmup: int, milestones: list[int], gamma: float, poly: tuple[int, float] | None = None) -> float:
    """Learning-rate multiplier: linear warm-up from 0.001, then ``gamma`` at each milestone passed,
    or, with ``poly`` = (iterations, power), the polynomial decay (1 - step / iterations) ** power."""
    decay = gamma ** sum(step >= milestone for milestone in milestones)
    if poly is not None:
        decay = max(0.0, 1 - step / poly[0]) ** poly[1]
    if step < warmup:
        return decay * (0.001 + (1 - 0.001) * step / warmup)
    return decay


def build_optimizer(model: torch.nn.Module, train: dict) -> torch.optim.Optimizer:
    """The optimiser; the backbone's parameters form a second group at ``backbone_lr_multiplier`` times the rate."""
    in_backbone = {id(p) for p in model.backbone_parameters()}
    rest = [p for p in model.parameters() if p.requires_grad and id(p) not in in_backbone]
    backbone = [p for p in model.parameters() if p.requires_grad and id(p) in in_backbone]
    params = [{"params": rest}, {"params": backbone, "lr": train["lr"] * train["backbone_lr_multiplier"]}]
    if train["optimizer"] == "adamw":
        return torch.optim.AdamW(params, lr=train["lr"], weight_decay=train["weight_decay"])
    return torch.optim.SGD(params, lr=train["lr"], momentum=train["momentum"], weight_decay=train["weight_decay"])


def autocast(model: torch.nn.Module, train: dict):
    """bf16 autocast of forward passes when ``train.precision`` is bf16 (on the device the model is on)."""
    device = next(model.parameters()).device.type
    return torch.autocast(device, dtype=torch.bfloat16, enabled=train["precision"] == "bf16")


def save_checkpoint(path: Path, **state) -> None:
    with atomic_path(path, suffix=".pt") as tmp, open(tmp, "wb") as handle:
        try:
            torch.save({"format": CHECKPOINT_FORMAT, **state}, handle)
        except RuntimeError as error:  # torch reports a failed write (disk full) as a RuntimeError around the OSError
            if isinstance(error.__context__, OSError):
                raise error.__context__ from None
            raise


def load_checkpoint(path: str | Path) -> dict:
    state = load_state_dict_file(path)
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path} is not a gdis checkpoint")
    return state


def load_network(path: str | Path, which: str, model_config: dict):
    """The student or EMA teacher of a finished gdis checkpoint, ready for inference, with its category ids."""
    state = load_checkpoint(path)
    weights = state.get(which)
    if weights is None:
        raise ValueError(f"checkpoint {path} holds no '{which}' network (method {state['method']})")
    model = build_model(model_config, len(state["category_ids"]), load_weights=False)
    model.load_state_dict(weights)
    return model, state


class StudentLosses(torch.nn.Module):
    """The student's loss dict on each (images, targets) group of a step, as one forward.

    DistributedDataParallel wraps this module: its forward covers the labelled and the unlabelled
    group, so the step's single backward reduces every gradient once. The groups share one backbone
    forward when the model can (``grouped_losses``) and ``train.shared_backbone`` allows it.
    """

    def __init__(self, student: torch.nn.Module, shared_backbone: bool) -> None:
        super().__init__()
        self.student = student
        self.shared_backbone = shared_backbone

    def forward(self, groups: list[tuple[list, list]]) -> list[dict]:
        if len(groups) > 1 and self.shared_backbone and hasattr(self.student, "grouped_losses"):
            return self.student.grouped_losses(groups)
        return [self.student.losses(images, targets) for images, targets in groups]


def _finite_or_fail(step: int, terms: dict[str, torch.Tensor], world: distributed.World) -> None:
    bad = {name: float(value) for name, value in terms.items() if not torch.isfinite(value)}
    if distributed.any_rank(bool(bad), world):  # every process stops, none waits forever for the others
        raise TrainingError(f"step {step}: non-finite loss term(s) {bad or 'on another process'}; "
                            "the last good checkpoint is kept")


class Trainer:
    """Trains one run and writes ``model_final.pt``, ``train_log.jsonl`` and ``run.json`` into ``out_dir``.

    A supervised run also writes ``burn_in.pt`` when ``burn_in`` is below the iteration count.

    Work in progress lives in ``out_dir/work``: a rerun of a killed job resumes from its last checkpoint.
    With several processes (``world``, see ``gdis.distributed``) each trains on its share of every
    batch and only rank 0 writes files.
    """

    def __init__(self, config: dict, method: str, labeled_json: str, unlabeled_json: str, images_dir: str,
                 out_dir: str, teacher_checkpoint: str | None = None, burn_in_checkpoint: str | None = None,
                 run_info: dict | None = None, hidden_annotations: str | None = None,
                 world: distributed.World | None = None) -> None:
        self.config, self.method, self.train = config, method, config["train"]
        self.world = world or distributed.World()
        distributed.check_batch_sizes(self.train, self.world, with_unlabeled=method != distill.SUPERVISED)
        self.out_dir = Path(out_dir)
        self.work_dir = self.out_dir / "work"
        self.run_info = run_info or {}
        if method == distill.GUIDED and not teacher_checkpoint:
            raise ValueError("guided_distillation needs --teacher, the supervised checkpoint of the same split")
        if burn_in_checkpoint and method != distill.STANDARD:
            raise ValueError(f"--burn-in-checkpoint is for standard_burnin, not {method}")
        self.teacher_checkpoint = str(teacher_checkpoint) if teacher_checkpoint else None
        self.burn_in_checkpoint = str(burn_in_checkpoint) if burn_in_checkpoint else None

        labeled = load_coco(labeled_json)
        self.category_ids = category_ids(labeled)
        self.labeled = CocoInstances(labeled, images_dir, with_targets=True)
        self.unlabeled = None
        if method != distill.SUPERVISED:
            self.unlabeled = CocoInstances(load_coco(unlabeled_json), images_dir, with_targets=False)
        for dataset in (d for d in (self.labeled, self.unlabeled) if d is not None):
            dataset.check_files()
        torch.manual_seed(self.train["seed"])
        self.student = build_model(config["model"], len(self.category_ids)).to(self.world.device)
        distributed.seed_augmentation(self.train["seed"], self.world)
        self.teacher = None
        if method != distill.SUPERVISED:
            self.teacher = copy.deepcopy(self.student).requires_grad_(False)
        self.hidden_truth = None  # full training annotations, to measure pseudo-label quality
        if method != distill.SUPERVISED and hidden_annotations and self.train["pseudo_label"]["quality_interval"]:
            self.hidden_truth = pseudo_quality.HiddenGroundTruth(hidden_annotations, self.category_ids)
        self.student_losses = distributed.data_parallel(StudentLosses(self.student, self.train["shared_backbone"]),
                                                        self.world)
        self.optimizer = build_optimizer(self.student, self.train)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer,
            lambda step: lr_factor(step, self.train["warmup_iterations"], self.train["lr_steps"], self.train["lr_gamma"],
                                   poly=(self.train["iterations"], self.train["poly_power"])
                                   if self.train["lr_schedule"] == "poly" else None),
        )
        self.strong = photometric_augmentation(self.train["augment"])
        self.step = 0
        self.nonfinite_skips = 0
        self.log_records: list[dict] = []

    # -- checkpoints -------------------------------------------------------------------------
    def _state(self) -> dict:
        distilling = self.teacher is not None and self.step > self.train["burn_in"]
        return {
            "step": self.step,
            "method": self.method,
            "category_ids": self.category_ids,
            "student": self.student.state_dict(),
            "ema_teacher": self.teacher.state_dict() if distilling else None,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "rng_states": distributed.gather_rng_states(self.world),  # one per process, in rank order
            "log_records": json.dumps(self.log_records),
            "nonfinite_skips": self.nonfinite_skips,
            "train_config": json.dumps(self.train, sort_keys=True),
        }

    def _resume(self) -> torch.Tensor | None:
        """Restore the last checkpoint, if any; return its RNG state, to be set once the data iterators exist."""
        path = self.work_dir / "last.pt"
        if not path.exists():
            return None
        state = load_checkpoint(path)
        if state["train_config"] != json.dumps(self.train, sort_keys=True) or state["method"] != self.method:
            log.warning("ignoring %s: it was written with another method or training config", path)
            return None
        self._restore(state)
        log.info("resuming from %s at step %d", path, self.step)
        return self._own_rng_state(state, path)

    def _continue_supervised_run(self) -> torch.Tensor:
        """standard_burnin's first ``burn_in`` steps are a supervised run's: start from its checkpoint at that step."""
        path, burn_in = self.burn_in_checkpoint, self.train["burn_in"]
        state = load_checkpoint(path)
        found = (state["method"], state["step"], state["train_config"], state["category_ids"])
        if found != (distill.SUPERVISED, burn_in, json.dumps(self.train, sort_keys=True), self.category_ids):
            raise ValueError(f"{path} is not the step-{burn_in} checkpoint of a supervised run with this training "
                             f"config and categories (it has method {state['method']}, step {state['step']})")
        self._restore(state)
        log.info("continuing the supervised run of %s from step %d", path, self.step)
        return self._own_rng_state(state, path)

    def _restore(self, state: dict) -> None:
        self.student.load_state_dict(state["student"])
        if state["ema_teacher"] is not None:
            self.teacher.load_state_dict(state["ema_teacher"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.log_records = json.loads(state["log_records"])
        self.nonfinite_skips = state.get("nonfinite_skips", 0)
        self.step = state["step"]

    def _own_rng_state(self, state: dict, path) -> torch.Tensor | None:
        """This process's RNG state in a checkpoint; None when another number of processes wrote it."""
        if len(state["rng_states"]) != self.world.size:
            log.warning("%s was written by %d process(es), not %d: augmentation restarts from fresh RNG states",
                        path, len(state["rng_states"]), self.world.size)
            return None
        return state["rng_states"][self.world.rank]

    def _load_pretrained_teacher(self) -> None:
        state = load_checkpoint(self.teacher_checkpoint)
        if state["category_ids"] != self.category_ids:
            raise ValueError(f"teacher {self.teacher_checkpoint} was trained on other categories")
        self.teacher.load_state_dict(state["student"])
        log.info("pre-trained teacher loaded from %s", self.teacher_checkpoint)

    # -- training ----------------------------------------------------------------------------
    def _pseudo_label(self, images: list[torch.Tensor], image_ids: list[int]) -> tuple[list, list, float, dict]:
        weak, strong = unlabeled_views(images, self.train["augment"], self.strong)
        thresholds = self.train["pseudo_label"]
        with autocast(self.teacher, self.train):
            targets = self.teacher.pseudo_labels(weak, thresholds)
        per_image = sum(len(t["labels"]) for t in targets) / len(targets)
        quality = {}
        measured_every = thresholds["quality_interval"] * self.train["log_period"]
        if self.hidden_truth is not None and (self.step + 1) % measured_every == 0:
            quality = pseudo_quality.measure(self.hidden_truth, image_ids, images, weak, targets)
        return strong, targets, per_image, quality

    def _train_step(self, labeled_batch, unlabeled_batch) -> dict:
        step, train = self.step, self.train
        if distill.copies_student(self.method, step, train["burn_in"]):
            distill.ema_update(self.teacher, self.student, decay=0.0)
        images, targets = distributed.to_device(*labeled_view(*labeled_batch, train["augment"]), self.world.device)
        groups = [(images, targets)]
        phase = distill.teacher_phase(self.method, step, train["burn_in"])
        if phase is not None:
            unlabeled_images, infos = unlabeled_batch
            unlabeled_images, _ = distributed.to_device(unlabeled_images, [], self.world.device)
            strong, pseudo, per_image, quality = self._pseudo_label(unlabeled_images,
                                                                    [info["image_id"] for info in infos])
            groups.append((strong, pseudo))
        with autocast(self.student, train):
            supervised, *unsupervised_losses = self.student_losses(groups)
        terms = {f"loss_supervised/{k}": v for k, v in supervised.items()}
        loss_supervised = sum(supervised.values())
        loss = loss_supervised
        record = {"loss_supervised": loss_supervised.item()}
        if phase is not None:
            unsupervised = unsupervised_losses[0]
            terms.update({f"loss_unsupervised/{k}": v for k, v in unsupervised.items()})
            loss_unsupervised = sum(unsupervised.values())
            loss = loss + train["unlabeled_weight"] * loss_unsupervised
            record.update(loss_unsupervised=loss_unsupervised.item(), pseudo_labels_per_image=per_image, **quality)
        nonfinite = not all(torch.isfinite(value) for value in terms.values())
        if train["on_nonfinite"] == "skip" and distributed.any_rank(nonfinite, self.world):
            return self._skip_update(step, terms)
        _finite_or_fail(step, terms, self.world)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()  # under DDP, the gradients arrive averaged over the processes
        if train["grad_clip"]:
            torch.nn.utils.clip_grad_norm_(self.student.parameters(), train["grad_clip"])
        self.optimizer.step()
        self.scheduler.step()
        distributed.broadcast_buffers(self.student, self.world)
        if phase == "ema":
            distill.ema_update(self.teacher, self.student, train["ema_decay"])
        record.update({k: v.item() for k, v in terms.items()})
        record.update(loss=loss.item(), lr=self.optimizer.param_groups[0]["lr"])
        return record

    def _skip_update(self, step: int, terms: dict[str, torch.Tensor]) -> dict:
        """Drop this step's update (train.on_nonfinite: skip); the schedule advances so later steps keep their place."""
        self.nonfinite_skips += 1
        bad = {name: value.item() for name, value in terms.items() if not torch.isfinite(value)}
        log.warning("step %d: non-finite loss term(s) %s; update skipped (%d so far)", step, bad, self.nonfinite_skips)
        self.scheduler.step()
        distributed.broadcast_buffers(self.student, self.world)  # the forward moved batch-norm statistics
        return {"nonfinite_skips": self.nonfinite_skips, "lr": self.optimizer.param_groups[0]["lr"]}

    def _phase_name(self) -> str:
        if self.method == distill.SUPERVISED:
            return "supervised"
        return "distillation" if self.step >= self.train["burn_in"] else "burn_in"

    def run(self) -> None:
        train = self.train
        rng_state = self._resume()
        if self.step == 0 and self.burn_in_checkpoint:  # not resumed: start from the supervised run
            rng_state = self._continue_supervised_run()
        if self.method == distill.GUIDED and self.step <= train["burn_in"]:
            self._load_pretrained_teacher()
        remaining = train["iterations"] - self.step
        shard = {"rank": self.world.rank, "world_size": self.world.size}
        labeled = iter(step_loader(self.labeled, train["batch_size"], train["seed"], self.step, remaining,
                                   train["num_workers"], **shard))
        unlabeled = iter(())
        if self.unlabeled is not None:
            unlabeled = iter(step_loader(self.unlabeled, train["unlabeled_batch_size"], train["seed"] + 1,
                                         self.step, remaining, train["num_workers"], **shard))
        if rng_state is not None:  # creating the iterators draws from the RNG, in a fresh run too
            torch.set_rng_state(rng_state)
        progress = tqdm(total=train["iterations"], initial=self.step, desc=f"train {self.method}", unit="step",
                        file=sys.stderr, mininterval=2.0 if sys.stderr.isatty() else 20.0, dynamic_ncols=True,
                        disable=not self.world.is_main)
        started = time.perf_counter()
        with distributed.preemption_signals() as preemption:
            log.info("training steps %d to %d on %d process(es)", self.step + 1, train["iterations"], self.world.size)
            self._loop(labeled, unlabeled, progress, preemption)
        progress.close()
        self._finish(time.perf_counter() - started)

    def _loop(self, labeled, unlabeled, progress, preemption: dict) -> None:
        train = self.train
        window_start, window_steps = time.perf_counter(), 0
        for labeled_batch in labeled:
            unlabeled_batch = next(unlabeled, None)
            phase_name = self._phase_name()
            record = self._train_step(labeled_batch, unlabeled_batch)
            self.step += 1
            window_steps += 1
            progress.update(1)
            if self.step % train["log_period"] == 0 or self.step == train["iterations"]:
                now = time.perf_counter()
                record.update(step=self.step, phase=phase_name, seconds_per_step=(now - window_start) / window_steps)
                window_start, window_steps = now, 0
                self.log_records.append(record)
                progress.set_postfix(loss=f"{record.get('loss', float('nan')):.3f}", refresh=False)
            if self.step % train["checkpoint_period"] == 0 and self.step < train["iterations"]:
                self._save(self.work_dir / "last.pt")
            if self.method == distill.SUPERVISED and self.step == train["burn_in"]:
                self._save(self.work_dir / BURN_IN_CHECKPOINT)
            if self.step < train["iterations"] and distributed.any_rank(preemption["signal"] is not None, self.world):
                self._stop_for_preemption(preemption["signal"])

    def _save(self, path: Path) -> None:
        state = self._state()  # every process takes part (RNG states are gathered)
        if self.world.is_main:
            save_checkpoint(path, **state)

    def _stop_for_preemption(self, signum: int | None) -> None:
        """Checkpoint now and requeue the Slurm job, if any; the rerun resumes from this step."""
        self._save(self.work_dir / "last.pt")
        requeued = distributed.requeue_slurm_job() if self.world.is_main else None
        name = signal.Signals(signum).name if signum else "a signal to another process"
        then = f"Slurm job {requeued} requeued" if requeued else "rerun the same command to resume"
        raise distributed.Preempted(f"stopped by {name} after step {self.step} of {self.train['iterations']}; "
                                    f"checkpoint saved to {self.work_dir / 'last.pt'}; {then}")

    def _finish(self, seconds: float) -> None:
        state = self._state()
        if not self.world.is_main:
            return
        for key in ("optimizer", "scheduler", "rng_states", "log_records"):
            state.pop(key)
        save_checkpoint(self.out_dir / "model_final.pt", **state)
        write_text(self.out_dir / "train_log.jsonl", "".join(json.dumps(r, sort_keys=True) + "\n" for r in self.log_records))
        write_json(self.out_dir / "run.json", run_record(
            self.config, method=self.method, iterations=self.step, weights=self.student.weights,
            seconds=round(seconds, 1), teacher_checkpoint=self.teacher_checkpoint,
            burn_in_checkpoint=self.burn_in_checkpoint,
            num_labeled_images=len(self.labeled), category_ids=self.category_ids, nonfinite_skips=self.nonfinite_skips,
            **self.run_info,
        ), indent=1)
        if (self.work_dir / BURN_IN_CHECKPOINT).exists():
            os.replace(self.work_dir / BURN_IN_CHECKPOINT, self.out_dir / BURN_IN_CHECKPOINT)
        (self.work_dir / "last.pt").unlink(missing_ok=True)
        if self.work_dir.is_dir() and not any(self.work_dir.iterdir()):
            self.work_dir.rmdir()
        log.info("finished %d steps in %.0f s; wrote %s", self.step, seconds, self.out_dir / "model_final.pt")

