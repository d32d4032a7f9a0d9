"""One trainer for the three methods: supervised, standard burn-in and guided distillation.

A step trains the student on a labelled batch; when a teacher is active (see
``distill.teacher_phase``) it also trains on an unlabelled batch whose targets are the
teacher's pseudo-labels on a weak view, the student seeing a strong view of the same geometry.
The trainer receives its built parts (``gdis.builder.build_run``); ``step()`` is one optimiser
step and ``run()`` the whole run with checkpoints, logs, resume and preemption.
"""

from __future__ import annotations

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
from gdis.builder import RunFiles, RunParts, build_run
from gdis.checkpoint import (
    BURN_IN_CHECKPOINT,
    FINAL_CHECKPOINT,
    LAST_CHECKPOINT,
    TRAINING_STATE,
    check_burn_in_checkpoint,
    check_teacher,
    load_checkpoint,
    resumable,
    save_checkpoint,
    train_config_key,
)
from gdis.augment import step_views_loader, views_loader
from gdis.data import to_float
from gdis.sampling import labeled_batch_sampler
from gdis.io import read_json, write_json, write_text
from gdis.provenance import run_record

log = logging.getLogger(__name__)


class TrainingError(RuntimeError):
    """Training cannot go on (for example a non-finite loss); the last good checkpoint is kept."""


def autocast(model: torch.nn.Module, train: dict):
    """bf16 autocast of forward passes when ``train.precision`` is bf16 (on the device the model is on)."""
    device = next(model.parameters()).device.type
    return torch.autocast(device, dtype=torch.bfloat16, enabled=train["precision"] == "bf16")


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


def weighted_unlabeled_loss(terms: dict[str, torch.Tensor], kinds: dict[str, str],
                            weights: dict[str, float]) -> torch.Tensor:
    """The unlabelled loss: the sum of its terms, each times the ``train.unlabeled_loss_weights`` entry of its kind.

    ``kinds`` maps each term to its kind (the architecture's ``loss_kinds``); a weight of 0 leaves a term out.
    """
    total = 0
    for name, value in terms.items():
        weight = weights.get(kinds[name], 1.0)
        if weight:
            total = total + (value if weight == 1 else weight * value)
    if isinstance(total, int):  # every term left out
        return next(iter(terms.values())).new_zeros(())
    return total


def taught_views(strong: list, pseudo: list[dict], empty_images: str) -> tuple[list, list[dict]]:
    """The strong views the unlabelled loss teaches, with their pseudo-labels: all of them, or
    (``train.pseudo_label.empty_images: skip``) those whose teacher kept at least one pseudo-label."""
    if empty_images == "background":
        return strong, pseudo
    kept = [i for i, target in enumerate(pseudo) if len(target["labels"])]
    return [strong[i] for i in kept], [pseudo[i] for i in kept]


def binarised(targets: list[dict], mask_threshold: float) -> list[dict]:
    """Pseudo-labels with float (soft) masks binarised at ``mask_threshold``, e.g. to measure their quality."""
    return [{**target, "masks": (target["masks"] > mask_threshold).to(torch.uint8)}
            if target["masks"].is_floating_point() else target for target in targets]


def _finite_or_fail(step: int, terms: dict[str, torch.Tensor], world: distributed.World) -> None:
    bad = {name: float(value) for name, value in terms.items() if not torch.isfinite(value)}
    if distributed.any_rank(bool(bad), world):  # every process stops, none waits forever for the others
        raise TrainingError(f"step {step}: non-finite loss term(s) {bad or 'on another process'}; "
                            "the last good checkpoint is kept")


class Trainer:
    """Trains one run and writes ``model_final.pt``, ``train_log.jsonl`` and ``run.json`` into ``out_dir``.

    A supervised run also writes ``burn_in.pt``, its state at step ``train.burn_in`` (where standard_burnin
    continues from; at the last step when ``train.burn_in`` is beyond it).

    Work in progress lives in ``out_dir/work``: a rerun of a killed job resumes from its last checkpoint.
    With several processes (``world``, see ``gdis.distributed``) each trains on its share of every
    batch and only rank 0 writes files.
    """

    def __init__(self, parts: RunParts, config: dict, out_dir: str | Path, world: distributed.World | None = None,
                 run_info: dict | None = None) -> None:
        self.parts = parts
        self.config, self.train, self.method = config, config["train"], parts.method
        self.world = world or distributed.World()
        self.out_dir = Path(out_dir)
        self.work_dir = self.out_dir / "work"
        self.run_info = run_info or {}
        self.student, self.teacher = parts.student, parts.teacher
        self.optimizer, self.scheduler = parts.optimizer, parts.scheduler
        self.student_losses = distributed.data_parallel(StudentLosses(self.student, self.train["shared_backbone"]),
                                                        self.world)
        self.iteration = 0
        self.nonfinite_skips = 0
        self.log_records: list[dict] = []

    @classmethod
    def from_files(cls, config: dict, method: str, files: RunFiles, out_dir: str | Path,
                   world: distributed.World | None = None, run_info: dict | None = None) -> Trainer:
        """Build the run's parts from the config and ``files``, then the trainer."""
        world = world or distributed.World()
        return cls(build_run(config, method, files, world), config, out_dir, world, run_info)

    # -- checkpoints -------------------------------------------------------------------------
    def _state(self) -> dict:
        distilling = self.teacher is not None and self.iteration > self.train["burn_in"]
        return {
            "step": self.iteration,
            "method": self.method,
            "category_ids": self.parts.category_ids,
            "student": self.student.state_dict(),
            "ema_teacher": self.teacher.state_dict() if distilling else None,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "rng_states": distributed.gather_rng_states(self.world),  # one per process, in rank order
            "log_records": json.dumps(self.log_records),
            "nonfinite_skips": self.nonfinite_skips,
            "train_config": train_config_key(self.train),
        }

    def _resume(self) -> torch.Tensor | None:
        """Restore the last checkpoint, if any; return its RNG state, to be set once the data iterators exist."""
        path = self.work_dir / LAST_CHECKPOINT
        if not path.exists():
            return None
        state = load_checkpoint(path)
        if not resumable(state, self.method, self.train):
            log.warning("ignoring %s: it was written with another method or training config", path)
            return None
        self._restore(state)
        log.info("resuming from %s at step %d", path, self.iteration)
        return self._own_rng_state(state, path)

    def _continue_supervised_run(self) -> torch.Tensor:
        """standard_burnin's first ``burn_in`` steps are a supervised run's: start from its checkpoint at that step."""
        path = self.parts.files.burn_in_checkpoint
        state = load_checkpoint(path)
        check_burn_in_checkpoint(state, path, self.train, self.parts.category_ids)
        self._restore(state)
        log.info("continuing the supervised run of %s from step %d", path, self.iteration)
        return self._own_rng_state(state, path)

    def _restore(self, state: dict) -> None:
        self.student.load_state_dict(state["student"])
        if state["ema_teacher"] is not None:
            self.teacher.load_state_dict(state["ema_teacher"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.log_records = json.loads(state["log_records"])
        self.nonfinite_skips = state.get("nonfinite_skips", 0)
        self.iteration = state["step"]

    def _own_rng_state(self, state: dict, path) -> torch.Tensor | None:
        """This process's RNG state in a checkpoint; None when another number of processes wrote it."""
        if len(state["rng_states"]) != self.world.size:
            log.warning("%s was written by %d process(es), not %d: augmentation restarts from fresh RNG states",
                        path, len(state["rng_states"]), self.world.size)
            return None
        return state["rng_states"][self.world.rank]

    def _load_pretrained_teacher(self) -> None:
        path = self.parts.files.teacher
        state = load_checkpoint(path)
        check_teacher(state, path, self.parts.category_ids)
        self.teacher.load_state_dict(state["student"])
        log.info("pre-trained teacher loaded from %s", path)

    # -- training ----------------------------------------------------------------------------
    def _pseudo_label(self, weak: list[torch.Tensor], infos: list[dict]) -> tuple[list, float, dict]:
        """The teacher's pseudo-labels of the weak views, at the students' training resolution, and their quality."""
        thresholds = self.train["pseudo_label"]
        with autocast(self.teacher, self.train):
            targets = self.teacher.pseudo_labels(weak, thresholds, short_side=self._view_short_side(weak))
        per_image = sum(len(t["labels"]) for t in targets) / len(targets)
        quality = {}
        measured_every = thresholds["quality_interval"] * self.train["log_period"]
        if self.parts.hidden_truth is not None and (self.iteration + 1) % measured_every == 0:
            quality = pseudo_quality.measure_views(self.parts.hidden_truth, infos,
                                                   binarised(targets, thresholds["mask_threshold"]))
        return targets, per_image, quality

    def _view_short_side(self, views: list[torch.Tensor]) -> int | None:
        """Whole images (geometry 'flip') are pseudo-labelled at model.test_size, as evaluated; crops (large-scale
        jitter, short-side crops) as they are, the very pixels the student sees (the reference's teacher)."""
        if self.train["augment"]["geometry"]["kind"] == "flip":
            return None
        return min(min(view.shape[-2:]) for view in views)

    def step(self, labeled_batch, unlabeled_batch) -> dict:
        """One optimiser step of the student (and the teacher's switch or EMA update); returns its log record."""
        step, train = self.iteration, self.train
        if distill.copies_student(self.method, step, train["burn_in"]):
            distill.ema_update(self.teacher, self.student, decay=0.0)
        views, targets = distributed.to_device(*labeled_batch, self.world.device)
        groups = [([to_float(view) for view in views], targets)]
        phase = distill.teacher_phase(self.method, step, train["burn_in"])
        if phase is not None:
            weak, strong, infos = unlabeled_batch
            weak, _ = distributed.to_device(weak, [], self.world.device)
            strong, _ = distributed.to_device(strong, [], self.world.device)
            pseudo, per_image, quality = self._pseudo_label([to_float(view) for view in weak], infos)
            strong, pseudo = taught_views(strong, pseudo, train["pseudo_label"]["empty_images"])
            if pseudo:
                groups.append(([to_float(view) for view in strong], pseudo))
        with autocast(self.student, train):
            supervised, *unsupervised_losses = self.student_losses(groups)
        terms = {f"loss_supervised/{k}": v for k, v in supervised.items()}
        loss_supervised = sum(supervised.values())
        loss = loss_supervised
        record = {"loss_supervised": loss_supervised.item()}
        if phase is not None:
            loss_unsupervised = loss_supervised.new_zeros(())
            if unsupervised_losses:
                unsupervised = unsupervised_losses[0]
                terms.update({f"loss_unsupervised/{k}": v for k, v in unsupervised.items()})
                loss_unsupervised = weighted_unlabeled_loss(unsupervised, self.student.loss_kinds,
                                                            train["unlabeled_loss_weights"])
                loss = loss + train["unlabeled_weight"] * loss_unsupervised
            record.update(loss_unsupervised=loss_unsupervised.item(), pseudo_labels_per_image=per_image,
                          unlabeled_images_taught=len(pseudo), **quality)
        nonfinite = not all(torch.isfinite(value) for value in terms.values())
        if train["on_nonfinite"] == "skip" and distributed.any_rank(nonfinite, self.world):
            record = self._skip_update(step, terms)
        else:
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
        self.iteration += 1
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
        return "distillation" if self.iteration >= self.train["burn_in"] else "burn_in"

    def run(self) -> None:
        train = self.train
        rng_state = self._resume()
        if self.iteration == 0 and self.parts.files.burn_in_checkpoint:  # not resumed: start from the supervised run
            rng_state = self._continue_supervised_run()
        if self.parts.files.teacher and self.iteration <= train["burn_in"]:
            self._load_pretrained_teacher()
        remaining = train["iterations"] - self.iteration
        shard = {"rank": self.world.rank, "world_size": self.world.size}
        parts = self.parts
        image_ids = [image["id"] for image in parts.labeled.images.images]
        labeled_sampler = labeled_batch_sampler(train["labeled_sampler"], self.method, parts.labeled_coco, image_ids,
                                                train["batch_size"], train["seed"], self.iteration, remaining, **shard)
        labeled = iter(views_loader(parts.labeled, labeled_sampler, train["num_workers"]))
        unlabeled = iter(())
        if parts.unlabeled is not None:
            unlabeled = iter(step_views_loader(parts.unlabeled, train["unlabeled_batch_size"], train["seed"] + 1,
                                               self.iteration, remaining, train["num_workers"], **shard))
        if rng_state is not None:  # creating the iterators draws from the RNG, in a fresh run too
            torch.set_rng_state(rng_state)
        progress = tqdm(total=train["iterations"], initial=self.iteration, desc=f"train {self.method}", unit="step",
                        file=sys.stderr, mininterval=2.0 if sys.stderr.isatty() else 20.0, dynamic_ncols=True,
                        disable=not self.world.is_main)
        started = time.perf_counter()
        with distributed.preemption_signals() as preemption:
            log.info("training steps %d to %d on %d process(es)", self.iteration + 1, train["iterations"],
                     self.world.size)
            if self.method == distill.SUPERVISED and self.iteration == self._burn_in_save_step() == 0:
                self._save(self.work_dir / BURN_IN_CHECKPOINT)
            self._loop(labeled, unlabeled, progress, preemption)
        progress.close()
        self._finish(time.perf_counter() - started)

    def _loop(self, labeled, unlabeled, progress, preemption: dict) -> None:
        train = self.train
        window_start, window_steps = time.perf_counter(), 0
        for labeled_batch in labeled:
            unlabeled_batch = next(unlabeled, None)
            phase_name = self._phase_name()
            record = self.step(labeled_batch, unlabeled_batch)
            window_steps += 1
            progress.update(1)
            if self.iteration % train["log_period"] == 0 or self.iteration == train["iterations"]:
                now = time.perf_counter()
                record.update(step=self.iteration, phase=phase_name, seconds_per_step=(now - window_start) / window_steps)
                record.update(self._validation_record())
                window_start = time.perf_counter()  # evaluation time does not count as training time
                window_steps = 0
                self.log_records.append(record)
                progress.set_postfix(loss=f"{record.get('loss', float('nan')):.3f}", refresh=False)
            if self.iteration % train["checkpoint_period"] == 0 and self.iteration < train["iterations"]:
                self._save(self.work_dir / LAST_CHECKPOINT)
            if self.method == distill.SUPERVISED and self.iteration == self._burn_in_save_step():
                self._save(self.work_dir / BURN_IN_CHECKPOINT)
            if self.iteration < train["iterations"] and distributed.any_rank(preemption["signal"] is not None,
                                                                             self.world):
                self._stop_for_preemption(preemption["signal"])

    def _validation_record(self) -> dict:
        """Every ``train.eval_period`` steps (and at the last): val mask AP and AP75 of the student and of the
        teacher giving pseudo-labels now, as ``val_<network>_mask_AP``, ``val_<network>_mask_AP75``."""
        period, validation = self.train["eval_period"], self.parts.validation
        if validation is None or not (self.iteration % period == 0 or self.iteration == self.train["iterations"]):
            return {}
        networks = {"student": self.student}
        if distill.teacher_phase(self.method, self.iteration, self.train["burn_in"]) is not None:
            networks["teacher"] = self.teacher
        record = {}
        for name, network in networks.items():
            metrics = validation.metrics(network, self.parts.category_ids, self.config["evaluate"]["batch_size"],
                                         self.config["evaluate"]["evaluator"])
            record.update({f"val_{name}_{key}": metrics[key] for key in ("mask_AP", "mask_AP75")})
        return record

    def _burn_in_save_step(self) -> int:
        """The step of a supervised run's burn_in.pt: train.burn_in, or the last step when training stops before."""
        return min(self.train["burn_in"], self.train["iterations"])

    def _save(self, path: Path) -> None:
        state = self._state()  # every process takes part (RNG states are gathered)
        if self.world.is_main:
            save_checkpoint(path, **state)

    def _stop_for_preemption(self, signum: int | None) -> None:
        """Checkpoint now and requeue the Slurm job, if any; the rerun resumes from this step."""
        self._save(self.work_dir / LAST_CHECKPOINT)
        requeued = distributed.requeue_slurm_job() if self.world.is_main else None
        name = signal.Signals(signum).name if signum else "a signal to another process"
        then = f"Slurm job {requeued} requeued" if requeued else "rerun the same command to resume"
        raise distributed.Preempted(f"stopped by {name} after step {self.iteration} of {self.train['iterations']}; "
                                    f"checkpoint saved to {self.work_dir / LAST_CHECKPOINT}; {then}")

    def _finish(self, seconds: float) -> None:
        state = self._state()
        if not self.world.is_main:
            return
        for key in TRAINING_STATE:
            state.pop(key)
        save_checkpoint(self.out_dir / FINAL_CHECKPOINT, **state)
        write_text(self.out_dir / "train_log.jsonl", "".join(json.dumps(r, sort_keys=True) + "\n" for r in self.log_records))
        files = self.parts.files
        write_json(self.out_dir / "run.json", run_record(
            self.config, method=self.method, iterations=self.iteration, weights=self.student.weights,
            seconds=round(seconds, 1), teacher_checkpoint=str(files.teacher) if files.teacher else None,
            burn_in_checkpoint=str(files.burn_in_checkpoint) if files.burn_in_checkpoint else None,
            num_labeled_images=len(self.parts.labeled), category_ids=self.parts.category_ids,
            nonfinite_skips=self.nonfinite_skips, **self.run_info,
        ), indent=1)
        if (self.work_dir / BURN_IN_CHECKPOINT).exists():
            os.replace(self.work_dir / BURN_IN_CHECKPOINT, self.out_dir / BURN_IN_CHECKPOINT)
        (self.work_dir / LAST_CHECKPOINT).unlink(missing_ok=True)
        if self.work_dir.is_dir() and not any(self.work_dir.iterdir()):
            self.work_dir.rmdir()
        log.info("finished %d steps in %.0f s; wrote %s", self.iteration, seconds, self.out_dir / FINAL_CHECKPOINT)


def train_run(config: dict, method: str, files: RunFiles, out_dir: str | Path, manifest: str | Path | None = None,
              run_info: dict | None = None) -> None:
    """Train one run as ``gdis train`` does: in this process, or in each process torchrun started.

    The split's ``manifest`` (what the dataset check left out of it) is recorded in run.json.
    """
    torch.set_num_threads(distributed.threads_per_process(config["train"]["threads"]))
    run_info = dict(run_info or {})
    if manifest:
        dataset_check = read_json(manifest, "split manifest").get("dataset_check")
        if dataset_check and (dataset_check["skipped_images"] or dataset_check["skipped_annotations"]):
            log.warning("training without %d unusable image(s) and %d annotation(s) of %s (dataset.on_bad_input: skip)",
                        dataset_check["skipped_images"], dataset_check["skipped_annotations"],
                        dataset_check["annotations"])
        run_info.update(split_manifest=str(manifest), dataset_check=dataset_check)
    world = distributed.init_world()  # several processes when started by torchrun
    try:
        Trainer.from_files(config, method, files, out_dir, world, run_info).run()
    finally:
        distributed.close_world(world)
