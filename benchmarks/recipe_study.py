"""Distillation recipes over datasets, networks and seeds: supervised vs guided mask AP and the gap closure.

``python -m benchmarks.recipe_study --work-dir DIR [--datasets D ...] [--networks N ...] [--seeds S ...]
[--percents P ...] [--base YAML ...] [--recipe NAME=YAML ...] [--standard-burnin NAME ...] [--workers 2]``

A recipe is a YAML overlay, a file or inline text (``soft='{train: {pseudo_label: {mask_target: soft}}}'``),
merged after the workflow's files for the dataset and the network (``gdis.plans``: config/config.yaml,
config/datasets/<dataset>.yaml, config/networks/<network>.yaml) and the ``--base`` overlays (e.g. a schedule),
so a recipe is exactly a config change a user could make. Per (dataset, network, seed, recipe):

- the dataset is generated once (``gdis.families.synthesize_configured``) and split once per percentage
  (``gdis.splits.write_configured_split``);
- supervised runs at each percentage and at 100 % are trained once and shared by every recipe whose
  model and training config differ from another's only in what supervised training does not read
  (``SUPERVISED_IGNORES``), or in where the guided switch is (``supervised_config``);
- guided distillation (and, for the recipes named by ``--standard-burnin``, standard burn-in, continuing
  the shared supervised run from its burn_in.pt) is trained per recipe;
- each run is evaluated on the val set (``gdis.evaluate.evaluate_network``): the student, the EMA teacher of
  distillation runs and, with ``--student-at-burn-in``, the guided student at step ``train.burn_in``.

Runs are cached in DIR/runs by a hash of everything they depend on: rerunning the study with more seeds or
recipes trains only what is new. Two worker processes (``--workers``) train at a time, one torch thread each.
Writes DIR/recipe_study.csv (one row per evaluated network, with the CPU seconds of its run) and
DIR/recipe_study.md (gap closure per dataset, network, percentage and recipe, mean ± std over seeds).

Gap closure = (guided − supervised at p) / (supervised at 100 − supervised at p), guided being the better
of the student and the EMA teacher (issue 16). A seed meets the aim (``meets_aim``) when guided closes at
least GAP_CLOSURE_AIM of the gap, or, where supervised at p is within SMALL_GAP_AP of supervised at 100,
loses at most MAX_LOSS_WITHOUT_GAP AP.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import hashlib
import json
import logging
import math
import multiprocessing
import os
import statistics
import sys
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
DEFAULT_CONFIG = REPO / "config" / "config.yaml"
SUPERVISED, STANDARD, GUIDED = "supervised", "standard_burnin", "guided_distillation"
FULL = 100.0
# Keys of the train section that a supervised run does not read: recipes that differ only in them share it.
SUPERVISED_IGNORES = (
    ("pseudo_label",), ("unlabeled_weight",), ("unlabeled_loss_weights",), ("ema_decay",),
    ("unlabeled_batch_size",), ("labeled_sampler", "distillation"),
    # The strong view's photometric noise (gdis.augment.UnlabeledViews); labelled views never get it.
    ("augment", "color_jitter"), ("augment", "color_jitter_probability"), ("augment", "grayscale_probability"),
    ("augment", "blur_sigma"), ("augment", "blur_probability"),
)
BASELINE = "baseline"
log = logging.getLogger("recipe_study")


# -- configuration ---------------------------------------------------------------------------------------
def read_overlay(text: str) -> dict:
    """A YAML overlay from a file path or inline YAML text."""
    path = Path(text)
    if path.suffix in (".yaml", ".yml") or path.is_file():
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    else:
        data = yaml.safe_load(text)
    data = data or {}
    if not isinstance(data, dict):
        raise ValueError(f"overlay {text!r} is not a mapping of config keys")
    return data


def parse_recipe(item: str) -> tuple[str, dict]:
    """``NAME=YAML`` (a file or inline text) -> (name, overlay)."""
    name, sep, text = item.partition("=")
    if not sep or not name:
        raise ValueError(f"--recipe expects NAME=YAML (a file or inline YAML), got {item!r}")
    return name, read_overlay(text)


def run_config(dataset: str, network: str, overlays: list[dict], seed: int) -> dict:
    """The validated config of one run: the workflow's files for ``dataset`` and ``network``, then ``overlays``."""
    from gdis.config import deep_merge, load_config, validate_config
    from gdis.plans import Plans

    plans = Plans([], default=str(DEFAULT_CONFIG))
    merged = load_config(plans.files(dataset, network))
    if network not in merged["networks"]:
        raise ValueError(f"network {network!r} is not among the networks of dataset {dataset!r}")
    for overlay in overlays:
        merged = deep_merge(merged, overlay)
    config = validate_config(deep_merge(merged, {"train": {"seed": seed}}))
    if config["dataset"]["name"] != dataset:
        raise ValueError(f"the overlays renamed dataset {dataset!r} to {config['dataset']['name']!r}")
    return config


def supervised_config(config: dict, plain: dict, standard_burnin: bool) -> dict:
    """What a recipe's supervised runs train with: its ``config``, with the switch (``train.burn_in``) of
    ``plain`` (the config without the recipe) unless standard burn-in is studied. The switch only places the
    supervised run's burn_in.pt, which standard burn-in alone reads: recipes that move it share the supervised
    runs of the plain config instead of retraining identical ones."""
    from gdis.config import deep_merge

    if standard_burnin:
        return config
    return deep_merge(config, {"train": {"burn_in": plain["train"]["burn_in"]}})


def without(section: dict, paths: tuple[tuple[str, ...], ...]) -> dict:
    """A copy of ``section`` without the nested keys ``paths``."""
    pruned = copy.deepcopy(section)
    for path in paths:
        parent = pruned
        for key in path[:-1]:
            parent = parent.get(key, {})
        parent.pop(path[-1], None)
    return pruned


def without_defaults(value, schema: dict):
    """``value`` without the entries equal to their schema default, recursively: a run's cache key then stays
    the same when an option is added whose default keeps the old behaviour."""
    if not isinstance(value, dict):
        return value
    properties = schema.get("properties", {})
    pruned = {}
    for key, item in value.items():
        subschema = properties.get(key, {})
        if "default" in subschema and item == subschema["default"]:
            continue
        item = without_defaults(item, subschema)
        if isinstance(item, dict) and not item and "default" in subschema:
            continue  # every entry at its default
        pruned[key] = item
    return pruned


def canonical(config: dict, section: str) -> dict:
    """``config[section]`` for cache keys (``without_defaults``)."""
    from gdis.config import load_schema

    return without_defaults(config[section], load_schema()["properties"][section])


def digest(*parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:12]


def file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:12]


def percent_text(percent: float) -> str:
    from gdis.config import format_percent

    return format_percent(percent)


# -- jobs ------------------------------------------------------------------------------------------------
@dataclass
class Job:
    """One training run and its evaluations, run by ``run_job`` in a worker process."""

    key: str
    method: str
    run_dir: str
    config: dict
    files: dict  # RunFiles fields
    val_annotations: str
    val_images: str
    evaluate: list[str]  # student, ema_teacher, student_at_burn_in
    needs: list[str] = field(default_factory=list)  # keys of jobs that must finish first
    estimate: float = 0.0  # relative cost, for ordering
    priority: int = 0  # the recipe's place on the command line: the first recipe's runs go first


def _train(job: Job) -> dict:
    import torch

    from gdis.builder import RunFiles
    from gdis.checkpoint import save_checkpoint
    from gdis.trainer import Trainer

    class SnapshotTrainer(Trainer):
        """Saves the student as it is after ``train.burn_in`` steps (what the EMA teacher starts from)."""

        snapshot: Path | None = None

        def step(self, labeled_batch, unlabeled_batch) -> dict:
            if self.snapshot is not None and self.iteration == self.train["burn_in"]:
                save_checkpoint(self.snapshot, step=self.iteration, method=self.method,
                                category_ids=self.parts.category_ids, student=self.student.state_dict(),
                                ema_teacher=None, train_config="")
            return super().step(labeled_batch, unlabeled_batch)

    torch.set_num_threads(1)
    run_dir = Path(job.run_dir)
    trainer = SnapshotTrainer.from_files(job.config, job.method, RunFiles(**job.files), run_dir / "run")
    if "student_at_burn_in" in job.evaluate:
        trainer.snapshot = run_dir / "student_at_burn_in.pt"
    wall, cpu = time.perf_counter(), time.process_time()
    trainer.run()
    return {"train_cpu_s": time.process_time() - cpu, "train_wall_s": time.perf_counter() - wall,
            "log_summary": summarise_log(trainer.log_records, job.config["train"]["burn_in"])}


def summarise_log(records: list[dict], burn_in: int) -> dict:
    """Means of the pseudo-label figures of a run's log, before and from burn-in."""
    names = ("pseudo_labels_per_image", "pseudo_label_precision", "pseudo_label_recall", "pseudo_label_mask_iou",
             "pseudo_label_boundary_iou")
    summary = {}
    for phase, chosen in (("guided_burn_in", [r for r in records if r.get("step", 0) <= burn_in]),
                          ("distillation", [r for r in records if r.get("step", 0) > burn_in])):
        for name in names:
            values = [r[name] for r in chosen if r.get(name) is not None]
            summary[f"{phase}/{name}"] = statistics.fmean(values) if values else None
    return summary


def _evaluate(job: Job, which: str) -> dict:
    from gdis.checkpoint import load_network
    from gdis.evaluate import evaluate_network

    run_dir = Path(job.run_dir)
    path = run_dir / "student_at_burn_in.pt" if which == "student_at_burn_in" else run_dir / "run" / "model_final.pt"
    network = "student" if which == "student_at_burn_in" else which
    cpu = time.process_time()
    model, state = load_network(path, network, job.config["model"])
    metrics = evaluate_network(model, state["category_ids"], job.val_annotations, job.val_images,
                               run_dir / f"predictions_{which}.json", job.config["evaluate"]["batch_size"],
                               job.config["evaluate"]["evaluator"])
    metrics["eval_cpu_s"] = time.process_time() - cpu
    return metrics


def run_job(job: Job) -> dict:
    """Train and evaluate one run (in a worker process); reuse its result when it is already there."""
    done = Path(job.run_dir) / "result.json"
    if done.exists():
        return json.loads(done.read_text())
    with output_to(Path(job.run_dir) / "job.log"):
        logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
        import torch

        torch.set_num_threads(1)
        if job.method == STANDARD:
            adopt_burn_in_checkpoint(job)
        result = {"key": job.key, "method": job.method, **_train(job)}
        result["metrics"] = {which: _evaluate(job, which) for which in job.evaluate}
    tmp = done.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=1))
    tmp.replace(done)
    return result


@contextlib.contextmanager
def output_to(path: Path):
    """This process's stdout and stderr (file descriptors 1 and 2, so C-level output too) into ``path``."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    with open(path, "a") as handle:
        os.dup2(handle.fileno(), 1)
        os.dup2(handle.fileno(), 2)
        try:
            yield
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)


def adopt_burn_in_checkpoint(job: Job) -> None:
    """The shared supervised run's burn_in.pt, recorded with this recipe's train config.

    The supervised run was trained with a config that may differ from this recipe's in keys supervised
    training does not read (``SUPERVISED_IGNORES``); standard_burnin checks the recorded config, so the copy
    records this run's.
    """
    from gdis.checkpoint import load_checkpoint, save_checkpoint, train_config_key

    source = Path(job.files["burn_in_checkpoint"])
    target = Path(job.run_dir) / "burn_in.pt"
    state = load_checkpoint(source)
    state.pop("format")
    state["train_config"] = train_config_key(job.config["train"])
    save_checkpoint(target, **state)
    job.files = {**job.files, "burn_in_checkpoint": str(target)}


# -- the study ---------------------------------------------------------------------------------------------
@dataclass
class Cell:
    """One (dataset, network, recipe, seed): its config and the keys of its runs by (method, percent)."""

    dataset: str
    network: str
    recipe: str
    seed: int
    config: dict
    supervised_config: dict  # what the cell's supervised runs train with (shared between recipes)
    runs: dict = field(default_factory=dict)


class Study:
    def __init__(self, work_dir: Path, backbone_weights: Path | None) -> None:
        self.work_dir = work_dir
        self.backbone_weights = backbone_weights
        self.jobs: dict[str, Job] = {}
        self.cells: list[Cell] = []

    def dataset_files(self, config: dict) -> dict:
        """Generate the dataset once per ``dataset`` section; its file paths."""
        from gdis.families import synthesize_configured

        dataset = config["dataset"]
        if dataset["source"] != "synthetic":
            raise ValueError(f"dataset {dataset['name']!r}: the study generates synthetic datasets only")
        root = self.work_dir / "data" / f"{dataset['name']}-{digest(dataset)}"
        if not (root / "annotations" / "val.json").exists():
            synthesize_configured(dataset, root)
        return {"root": root, "train_images": root / "train", "train_annotations": root / "annotations" / "train.json",
                "val_images": root / "val", "val_annotations": root / "annotations" / "val.json"}

    def split_dir(self, config: dict, data: dict, percent: float) -> Path:
        from gdis.splits import write_configured_split

        fold = config["splits"]["folds"][0]
        out = (self.work_dir / "splits" / f"{config['dataset']['name']}-{digest(config['dataset'], config['splits'])}"
               / f"{percent_text(percent)}pct_fold{fold}")
        if not (out / "manifest.json").exists():
            write_configured_split(config["splits"], data["train_annotations"], data["train_images"], out, percent,
                                   fold)
        return out

    def weights_for(self, config: dict) -> tuple[str | None, str | None]:
        """The backbone weights file of a run (absolute) and its digest."""
        spec = config["model"]["backbone_weights"]
        if spec is None:
            return None, None
        path = self.backbone_weights if self.backbone_weights else Path(spec)
        if not path.is_absolute():
            path = REPO / path
        if not path.exists():
            raise FileNotFoundError(f"backbone weights {path} not found: run `gdis pretrain` first or pass "
                                    "--backbone-weights")
        return str(path), file_digest(path)

    def add_cell(self, cell: Cell, percents: list[float], methods: list[str], standard_burnin: bool,
                 student_at_burn_in: bool, full: bool = True, priority: int = 0) -> None:
        config = cell.config
        data = self.dataset_files(config)
        weights, weights_digest = self.weights_for(config)
        arch = config["model"]["arch"]
        for percent in percents + ([FULL] if full else []):
            split = self.split_dir(config, data, percent)
            files = {"labeled": str(split / "labeled.json"), "unlabeled": str(split / "unlabeled.json"),
                     "images": str(data["train_images"]), "backbone_weights": weights}
            supervised_config = cell.supervised_config
            supervised_train = without(canonical(supervised_config, "train"), SUPERVISED_IGNORES)
            supervised_key = digest(SUPERVISED, config["dataset"], config["splits"], percent,
                                    canonical(config, "model"), supervised_train, weights_digest)
            self._add(Job(key=supervised_key, method=SUPERVISED, run_dir=self._run_dir(cell, SUPERVISED, percent,
                                                                                        supervised_key),
                          config=supervised_config, files=files, val_annotations=str(data["val_annotations"]),
                          val_images=str(data["val_images"]), evaluate=["student"],
                          estimate=config["train"]["iterations"] * (2 if arch == "mask_rcnn" else 1),
                          priority=priority))
            cell.runs[(SUPERVISED, percent)] = supervised_key
            if percent == FULL:
                continue
            teacher = Path(self.jobs[supervised_key].run_dir) / "run" / "model_final.pt"
            distill_files = {**files, "hidden_annotations": str(data["train_annotations"])}
            wanted = [(GUIDED, {"teacher": str(teacher)})] if GUIDED in methods else []
            if standard_burnin:
                burn_in = Path(self.jobs[supervised_key].run_dir) / "run" / "burn_in.pt"
                wanted.append((STANDARD, {"burn_in_checkpoint": str(burn_in)}))
            for method, extra in wanted:
                key = digest(method, supervised_key, canonical(config, "model"), canonical(config, "train"))
                evaluate = ["student", "ema_teacher"]
                if method == GUIDED and student_at_burn_in:
                    evaluate.append("student_at_burn_in")
                steps = config["train"]["iterations"] - (config["train"]["burn_in"] if method == STANDARD else 0)
                self._add(Job(key=key, method=method, run_dir=self._run_dir(cell, method, percent, key), config=config,
                              files={**distill_files, **extra}, val_annotations=str(data["val_annotations"]),
                              val_images=str(data["val_images"]), evaluate=evaluate, needs=[supervised_key],
                              estimate=2 * steps * (2 if arch == "mask_rcnn" else 1), priority=priority))
                cell.runs[(method, percent)] = key
        self.cells.append(cell)

    def _run_dir(self, cell: Cell, method: str, percent: float, key: str) -> str:
        return str(self.work_dir / "runs" / cell.dataset / cell.network / method / f"{percent_text(percent)}pct"
                   / f"seed{cell.seed}-{key}")

    def _add(self, job: Job) -> None:
        if job.key in self.jobs:
            extra = [which for which in job.evaluate if which not in self.jobs[job.key].evaluate]
            self.jobs[job.key].evaluate += extra
            return
        Path(job.run_dir).mkdir(parents=True, exist_ok=True)
        (Path(job.run_dir) / "config.yaml").write_text(yaml.safe_dump(job.config, sort_keys=False))
        self.jobs[job.key] = job

    def run(self, workers: int) -> dict[str, dict]:
        """Every job, ``workers`` at a time, each once what it needs is done."""
        results = {key: json.loads((Path(job.run_dir) / "result.json").read_text())
                   for key, job in self.jobs.items() if (Path(job.run_dir) / "result.json").exists()}
        pending = {key: job for key, job in self.jobs.items() if key not in results}
        log.info("%d runs cached, %d to train", len(results), len(pending))
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
            running = {}
            while pending or running:
                ready = sorted((job for job in pending.values() if all(need in results for need in job.needs)),
                               key=lambda job: (job.method != SUPERVISED, job.priority, -job.estimate))
                for job in ready[: workers - len(running)]:
                    running[pool.submit(run_job, job)] = job
                    del pending[job.key]
                if not running:
                    raise RuntimeError(f"{len(pending)} run(s) wait for runs that failed")
                finished, _ = wait(running, return_when=FIRST_COMPLETED)
                for future in finished:
                    job = running.pop(future)
                    try:
                        results[job.key] = future.result()
                    except Exception:  # one failed run must not lose the others
                        log.exception("run %s failed (%s)", job.run_dir, job.method)
                        continue
                    result = results[job.key]
                    log.info("done %s: %.0f CPU-s, mask AP %s", job.run_dir, result["train_cpu_s"],
                             {k: round(v["mask_AP"], 1) for k, v in result["metrics"].items()})
        return results


# -- tables ------------------------------------------------------------------------------------------------
def rows(study: Study, results: dict[str, dict]) -> list[dict]:
    """One row per evaluated network of every cell's runs (a shared supervised run appears in each cell)."""
    table = []
    for cell in study.cells:
        for (method, percent), key in sorted(cell.runs.items(), key=lambda item: (item[0][1], item[0][0])):
            result = results.get(key)
            if result is None:
                continue
            for which, metrics in result["metrics"].items():
                table.append({
                    "dataset": cell.dataset, "network": cell.network, "recipe": cell.recipe, "seed": cell.seed,
                    "label_percent": percent, "method": method, "model": which,
                    **{name: metrics.get(name) for name in ("mask_AP", "mask_AP50", "mask_AP75", "box_AP")},
                    "train_cpu_s": round(result["train_cpu_s"], 1), "train_wall_s": round(result["train_wall_s"], 1),
                    "eval_cpu_s": round(metrics["eval_cpu_s"], 1),
                    "steps": _steps_trained(study.jobs[key]),
                    **{name: value for name, value in result.get("log_summary", {}).items()},
                    "run_key": key,
                })
    return table


def _steps_trained(job: Job) -> int:
    """Steps the run trained itself: standard burn-in continues the supervised run from step burn_in."""
    train = job.config["train"]
    return train["iterations"] - (train["burn_in"] if job.method == STANDARD else 0)


def gap_closure(guided: float, supervised: float, full: float) -> float | None:
    """(guided − supervised) / (full − supervised); None when supervised is not below the 100 % row."""
    gap = full - supervised
    return (guided - supervised) / gap if gap > 0 else None


# The aim a recipe is judged by on every family (docs/recipe-study.md): close at least this share of the gap ...
GAP_CLOSURE_AIM = 0.25
# ... unless supervised training is within this many AP of its 100 % row: then it must merely not lose more than
# MAX_LOSS_WITHOUT_GAP AP (mask AP, guided = the better of student and EMA teacher).
SMALL_GAP_AP = 2.0
MAX_LOSS_WITHOUT_GAP = 0.5


def meets_aim(guided: float, supervised: float, full: float) -> bool:
    """Whether one seed's guided run meets the held-out aim (GAP_CLOSURE_AIM, or not losing where the gap is small)."""
    if full - supervised <= SMALL_GAP_AP:
        return guided - supervised >= -MAX_LOSS_WITHOUT_GAP
    return gap_closure(guided, supervised, full) >= GAP_CLOSURE_AIM


def _mean_std(values: list[float]) -> tuple[float | None, float | None]:
    values = [v for v in values if v is not None and not math.isnan(v)]
    if not values:
        return None, None
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else None)


def _fmt(mean: float | None, std: float | None = None, scale: float = 1.0, digits: int = 1) -> str:
    if mean is None:
        return "–"
    text = f"{mean * scale:.{digits}f}"
    return text + (f" ± {std * scale:.{digits}f}" if std is not None else "")


def summary(table: list[dict]) -> list[dict]:
    """Per (dataset, network, recipe, percent below 100): the APs and the gap closure, per seed and over seeds."""
    def ap(dataset, network, recipe, seed, percent, method, model, metric="mask_AP"):
        for row in table:
            if (row["dataset"], row["network"], row["recipe"], row["seed"], row["label_percent"], row["method"],
                    row["model"]) == (dataset, network, recipe, seed, percent, method, model):
                return row[metric]
        return None

    groups = sorted({(r["dataset"], r["network"], r["recipe"], r["label_percent"]) for r in table
                     if r["label_percent"] != FULL})
    out = []
    for dataset, network, recipe, percent in groups:
        seeds = sorted({r["seed"] for r in table
                        if (r["dataset"], r["network"], r["recipe"]) == (dataset, network, recipe)})
        per_seed = []
        for seed in seeds:
            args = (dataset, network, recipe, seed)
            supervised, full = ap(*args, percent, SUPERVISED, "student"), ap(*args, FULL, SUPERVISED, "student")
            student, ema = ap(*args, percent, GUIDED, "student"), ap(*args, percent, GUIDED, "ema_teacher")
            if supervised is None:
                continue
            best = max((v for v in (student, ema) if v is not None), default=None)
            per_seed.append({
                "seed": seed, "supervised": supervised, "full": full, "student": student, "ema": ema, "best": best,
                "closure": gap_closure(best, supervised, full) if best is not None and full is not None else None,
                "difference": best - supervised if best is not None else None,
                "meets_aim": meets_aim(best, supervised, full) if best is not None and full is not None else None,
                "relative": best / supervised - 1 if best is not None and supervised > 0 else None,
                "supervised_AP75": ap(*args, percent, SUPERVISED, "student", "mask_AP75"),
                "best_AP75": max((v for v in (ap(*args, percent, GUIDED, m, "mask_AP75")
                                              for m in ("student", "ema_teacher")) if v is not None), default=None),
                "standard_ema": ap(*args, percent, STANDARD, "ema_teacher"),
                "standard_student": ap(*args, percent, STANDARD, "student"),
                "student_at_burn_in": ap(*args, percent, GUIDED, "student_at_burn_in"),
            })
        if not per_seed:
            continue
        entry = {"dataset": dataset, "network": network, "recipe": recipe, "label_percent": percent,
                 "seeds": [s["seed"] for s in per_seed], "per_seed": per_seed}
        judged = [s["meets_aim"] for s in per_seed if s["meets_aim"] is not None]
        entry["meets_aim"] = (sum(judged), len(judged))
        entry["seeds_with_gap"] = sum(s["closure"] is not None for s in per_seed)
        for name in ("supervised", "full", "student", "ema", "best", "closure", "difference", "relative",
                     "supervised_AP75",
                     "best_AP75", "standard_ema", "standard_student", "student_at_burn_in"):
            entry[name] = _mean_std([s[name] for s in per_seed])
        out.append(entry)
    return out


def markdown(table: list[dict], groups: list[dict], title: str) -> str:
    explanation = ("Mask AP on the val set; mean ± std over the seeds listed (std only with 2 or more). Gap closure = "
                   "(guided − supervised@p) / (supervised@100 − supervised@p), guided = better of student and EMA "
                   "teacher (per seed, then averaged over the seeds with a gap, i.e. supervised@p below "
                   "supervised@100; their count is given when some have none). Relative = guided / supervised − 1. "
                   f"Aim met: seeds where guided closes at least {GAP_CLOSURE_AIM * 100:.0f} % of the gap, or, where "
                   f"supervised@p is within {SMALL_GAP_AP:g} AP of supervised@100, loses at most "
                   f"{MAX_LOSS_WITHOUT_GAP:g} AP.")
    header = ("| dataset | network | recipe | label % | seeds | supervised | sup. 100 % | guided student | guided EMA "
              "| guided − sup. | gap closure | aim met | relative | AP75 sup. → guided | std. burn-in EMA "
              "| student at burn-in |")
    lines = [f"# {title}", "", explanation, "", header,
             "|---|---|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|"]
    for g in groups:
        closure = f"{_fmt(*g['closure'], scale=100, digits=0)} %"
        if g["seeds_with_gap"] < len(g["seeds"]):
            closure += f" ({g['seeds_with_gap']} of {len(g['seeds'])} seeds)"
        met, judged = g["meets_aim"]
        lines.append(
            f"| {g['dataset']} | {g['network']} | {g['recipe']} | {percent_text(g['label_percent'])} "
            f"| {','.join(map(str, g['seeds']))} | {_fmt(*g['supervised'])} | {_fmt(*g['full'])} "
            f"| {_fmt(*g['student'])} | {_fmt(*g['ema'])} | {_fmt(*g['difference'])} | {closure} "
            f"| {f'{met} of {judged}' if judged else '–'} | {_fmt(*g['relative'], scale=100, digits=0)} % "
            f"| {_fmt(g['supervised_AP75'][0])} → {_fmt(g['best_AP75'][0])} | {_fmt(*g['standard_ema'])} "
            f"| {_fmt(*g['student_at_burn_in'])} |")
    cpu_header = ("| network | method | label % | steps trained | runs | train CPU s (mean) | per step "
                  "| eval CPU s (mean) |")
    lines += ["", "## CPU seconds per run (training; evaluation separately)", "", cpu_header,
              "|---|---|---:|---:|---:|---:|---:|---:|"]
    seen = {}
    for row in table:
        if row["model"] != "student":
            continue
        group = (row["network"], row["method"], row["label_percent"], row["steps"])
        seen.setdefault(group, {})[row["run_key"]] = row
    for (network, method, percent, steps), runs in sorted(seen.items()):
        cpu = statistics.fmean(r["train_cpu_s"] for r in runs.values())
        evaluation = statistics.fmean(r["eval_cpu_s"] for r in runs.values())
        lines.append(f"| {network} | {method} | {percent_text(percent)} | {steps} | {len(runs)} | {cpu:.0f} "
                     f"| {cpu / steps:.3f} | {evaluation:.1f} |")
    return "\n".join(lines) + "\n"


def write_tables(study: Study, results: dict[str, dict], out_dir: Path, title: str) -> str:
    import csv

    table = rows(study, results)
    groups = summary(table)
    out_dir.mkdir(parents=True, exist_ok=True)
    if table:
        columns = list(dict.fromkeys(key for row in table for key in row))
        with open(out_dir / "recipe_study.csv", "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=columns)
            writer.writeheader()
            writer.writerows(table)
    (out_dir / "recipe_study.json").write_text(json.dumps(groups, indent=1))
    text = markdown(table, groups, title)
    (out_dir / "recipe_study.md").write_text(text)
    return text


# -- command line ------------------------------------------------------------------------------------------
DEFAULT_RECIPES = [f"{BASELINE}={{}}", "soft_masks={train: {pseudo_label: {mask_target: soft}}}"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.recipe_study", description=__doc__.splitlines()[0])
    parser.add_argument("--work-dir", type=Path, required=True, help="datasets, runs (cached) and the tables")
    parser.add_argument("--out-dir", type=Path, help="where the CSV and Markdown go (default: the work dir)")
    parser.add_argument("--datasets", nargs="+", default=["shapes"],
                        help="dataset names: the demo's (config/config.yaml) or a plan in config/datasets")
    parser.add_argument("--networks", nargs="+", default=["mask_rcnn_tiny"], help="presets in config/networks")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="train.seed values")
    parser.add_argument("--percents", type=float, nargs="+", default=[5.0],
                        help="label percentages (supervised at 100 %% is always added)")
    parser.add_argument("--base", nargs="*", default=[], metavar="YAML",
                        help="overlays (files or inline YAML) applied to every run before the recipe, e.g. a schedule")
    parser.add_argument("--network-overlay", nargs="*", default=[], metavar="NETWORK=YAML",
                        help="overlays for one network's runs only, after --base (a change to its preset)")
    parser.add_argument("--recipe", nargs="+", default=DEFAULT_RECIPES, metavar="NAME=YAML",
                        help="recipes: name=overlay (a file or inline YAML); '{}' is the config as it is")
    parser.add_argument("--methods", nargs="+", default=[SUPERVISED, GUIDED], choices=[SUPERVISED, GUIDED],
                        help="supervised only, or with guided distillation")
    parser.add_argument("--no-full", dest="full", action="store_false",
                        help="no supervised run at 100 %% (no gap closure then)")
    parser.add_argument("--standard-burnin", nargs="*", default=[], metavar="NAME",
                        help="recipes for which standard burn-in is trained too")
    parser.add_argument("--student-at-burn-in", action="store_true",
                        help="also evaluate the guided student at step train.burn_in (the EMA teacher's start)")
    parser.add_argument("--backbone-weights", type=Path,
                        help="weights file for model.backbone_weights (default: the configured path, under the repo)")
    parser.add_argument("--workers", type=int, default=2, help="training processes at a time (one thread each)")
    parser.add_argument("--title", default="Recipe study")
    parser.add_argument("--plan-only", action="store_true", help="list the runs and stop")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", stream=sys.stderr)
    sys.path.insert(0, str(REPO))
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))

    work_dir = args.work_dir.resolve()
    base = [read_overlay(text) for text in args.base]
    recipes = dict(parse_recipe(item) for item in args.recipe)
    network_overlays = dict(parse_recipe(item) for item in args.network_overlay)
    unknown = sorted(set(args.standard_burnin) - set(recipes))
    if unknown:
        parser.error(f"--standard-burnin names unknown recipe(s) {', '.join(unknown)}")
    study = Study(work_dir, args.backbone_weights.resolve() if args.backbone_weights else None)
    (work_dir).mkdir(parents=True, exist_ok=True)
    record = {"argv": sys.argv[1:] if argv is None else argv, "base": base, "network_overlays": network_overlays,
              "recipes": recipes}
    (work_dir / f"study-{time.strftime('%Y%m%dT%H%M%S')}.json").write_text(json.dumps(record, indent=1))
    for dataset in args.datasets:
        for network in args.networks:
            for priority, (recipe, overlay) in enumerate(recipes.items()):
                for seed in args.seeds:
                    overlays = [*base, network_overlays.get(network, {}), overlay]
                    config = run_config(dataset, network, overlays, seed)
                    plain = run_config(dataset, network, overlays[:-1], seed)
                    supervised = supervised_config(config, plain, recipe in args.standard_burnin)
                    cell = Cell(dataset, network, recipe, seed, config, supervised)
                    study.add_cell(cell, list(args.percents), args.methods, recipe in args.standard_burnin,
                                   args.student_at_burn_in, args.full, priority)
    if args.plan_only:
        for job in study.jobs.values():
            print(job.method, job.run_dir)
        return 0
    results = study.run(args.workers)
    print(write_tables(study, results, (args.out_dir or work_dir).resolve(), args.title))
    failed = len(study.jobs) - sum(key in results for key in study.jobs)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
