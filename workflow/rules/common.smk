# The plans (config files per dataset and network), wildcard constraints, result paths and input functions.
# A job's dataset and network come from the wildcards of the file asked for; gdis.plans says which config
# files make their plan, and every command receives exactly those files.
import os
import re
import shlex
from pathlib import Path

from gdis.config import (DATASET_PATH_KEYS, OFFICIAL_GROUND_TRUTH, PREPARED_LAYOUTS, ConfigError, dataset_paths,
                         extra_unlabeled_paths, format_percent, official_ground_truth)
from gdis.distill import METHODS, SUPERVISED, SUPERVISED_BURN_IN
from gdis.distributed import SCHEDULER_RESOURCES, launcher, scheduler_resources
from gdis.plans import Plans
from gdis.protocols import list_path

if workflow.config_settings.config:
    raise WorkflowError("--config KEY=VALUE overrides are not passed on to the gdis commands; "
                        "write them in a YAML file and add it with --configfile FILE")

# Files inside the working directory are named relatively, so commands (and dvc.yaml) do not depend on the checkout's place.
USER_CONFIGS = [
    os.path.relpath(path) if Path(path).resolve().is_relative_to(Path.cwd().resolve()) else str(path)
    for path in workflow.config_settings.configfiles
]
PLANS = Plans(USER_CONFIGS)
try:
    DEFAULT_DATASET = PLANS.default_dataset  # the demo's, or the one the user's files name: what `rule all` builds
    # Snakemake's `config` (read by the report's captions) becomes the default dataset's validated plan.
    config.clear()
    config.update(PLANS.config(DEFAULT_DATASET))
except ConfigError as error:
    raise WorkflowError(str(error)) from None


def planned_config(dataset, network=None) -> dict:
    """The validated config of ``dataset`` (and ``network``); a config error stops the workflow, naming the key."""
    try:
        return PLANS.config(dataset, network)
    except ConfigError as error:
        raise WorkflowError(str(error)) from None


def plan(wildcards) -> dict:
    """The validated config of a job's dataset (and network, when the job has one)."""
    return planned_config(wildcards.dataset, wildcards.get("network"))


def config_args(wildcards) -> str:
    """The job's config files, as the --config arguments of its gdis command."""
    plan(wildcards)
    return " ".join(PLANS.files(wildcards.dataset, wildcards.get("network")))


def datasets_of_source(*sources) -> str:
    """Wildcard constraint: the known datasets (the default one and config/datasets/*) with one of ``sources``."""
    names = [name for name in PLANS.known_datasets() if PLANS.source(name) in sources]
    return "|".join(map(re.escape, names)) or "(?!)"


wildcard_constraints:
    dataset=r"[A-Za-z0-9][A-Za-z0-9_-]*",
    network=r"[A-Za-z0-9][A-Za-z0-9_-]*",
    percent=r"[0-9]+(\.[0-9]+)?",
    fold=r"[0-9]+",
    method="|".join(METHODS),
    model="student|ema_teacher",
    subset="train|val",


DATA_DIR = "data/{dataset}"
CHECK_DIR = "results/checks/{dataset}"
SPLIT_DIR = "results/splits/{dataset}/{percent}pct/fold{fold}"
RUN_DIR = "results/models/{dataset}/{network}/{method}/{percent}pct/fold{fold}"
SUPERVISED_RUN_DIR = f"results/models/{{dataset}}/{{network}}/{SUPERVISED}/{{percent}}pct/fold{{fold}}"
EVAL_DIR = "results/eval/{dataset}/{network}/{method}/{percent}pct/fold{fold}"
FIGURE_DIR = "results/figures/{dataset}/{network}/{method}/{percent}pct/fold{fold}"
LOG_DIR = "results/logs/{dataset}"
FULL = format_percent(100)


def dataset_dir(wildcards):
    return DATA_DIR.format(dataset=wildcards.dataset)


def runs(dataset):
    """(network, method, percent, fold) of every training run planned for ``dataset``."""
    config = planned_config(dataset)
    percents = [format_percent(p) for p in config["splits"]["label_percents"]]
    folds = config["splits"]["folds"]
    planned = [
        (method, percent, fold)
        for method in config["methods"]
        for percent in percents
        for fold in folds
        if not (percent == FULL and METHODS[method].distills)
    ]
    if config["splits"]["include_full"] and SUPERVISED in config["methods"] and FULL not in percents:
        planned += [(SUPERVISED, FULL, fold) for fold in folds]
    return [(network, *run) for network in config["networks"] for run in planned]


def run_path(template, dataset, network, method, percent, fold):
    return template.format(dataset=dataset, network=network, method=method, percent=percent, fold=fold)


def metrics_files(wildcards):
    """The metrics file of every run of the dataset (one table row per evaluated network)."""
    return [run_path(f"{EVAL_DIR}/metrics.json", wildcards.dataset, *run) for run in runs(wildcards.dataset)]


def gallery_files(dataset):
    return [
        run_path(f"{FIGURE_DIR}/{images}.png", dataset, *run)
        for run in runs(dataset)
        for images in ("val", "unlabeled")
    ]


def train_logs(dataset):
    """{label: train_log.jsonl} of every run, for the training-curves plot."""
    return {
        f"{network} {method} {percent}% fold {fold}": run_path(f"{RUN_DIR}/train_log.jsonl", dataset, network, method,
                                                               percent, fold)
        for network, method, percent, fold in runs(dataset)
    }


def curve_logs(wildcards):
    return list(train_logs(wildcards.dataset).values())


def curve_log_args(wildcards):
    return " ".join(shlex.quote(f"{label}={path}") for label, path in train_logs(wildcards.dataset).items())


def report_outputs(dataset):
    return [
        f"results/tables/{dataset}.csv",
        f"results/tables/{dataset}.md",
        f"results/plots/{dataset}.png",
        f"results/plots/{dataset}_training.png",
        f"results/plots/{dataset}_training.csv",
        f"results/tensorboard/{dataset}",
        *gallery_files(dataset),
    ]


def backbone_weights_file(wildcards):
    """The network's model.backbone_weights when it is a file (made by a rule, or the user's); [] for the caches."""
    weights = plan(wildcards)["model"]["backbone_weights"]
    return [] if weights in (None, "imagenet", "pretrained") else weights


def train_inputs(wildcards):
    inputs = {
        "labeled": f"{SPLIT_DIR}/labeled.json".format(**wildcards),
        "unlabeled": f"{SPLIT_DIR}/unlabeled.json".format(**wildcards),
        "manifest": f"{SPLIT_DIR}/manifest.json".format(**wildcards),
        "images": dataset_paths(plan(wildcards))["train_images"],
        "val_check": f"{CHECK_DIR}/val.json".format(**wildcards),  # also: a broken val set stops the run first
        "val_annotations": dataset_paths(plan(wildcards))["val_annotations"],
        "val_images": dataset_paths(plan(wildcards))["val_images"],
        "backbone_weights": backbone_weights_file(wildcards),
    }
    supervised_run = SUPERVISED_RUN_DIR.format(**wildcards)
    method = METHODS[wildcards.get("method", SUPERVISED)]
    if method.distills:  # hidden annotations: pseudo-label quality
        inputs["hidden_annotations"] = dataset_paths(plan(wildcards))["train_annotations"]
    if method.needs_teacher:
        inputs["teacher"] = f"{supervised_run}/model_final.pt"
    if method.starts_from == SUPERVISED_BURN_IN:
        inputs["burn_in_checkpoint"] = f"{supervised_run}/burn_in.pt"
    return inputs


def file_options(*names):
    """Params function: `` --name path`` for each of ``names`` the job's input has (names with _ as -).

    Each option starts with its space, so a rule writes ``{params.files}`` right after the previous word
    and a job without such files gets no double space (DVC would see another command in dvc.lock).
    """

    def options(wildcards, input):
        given = [name for name in names if name in input.keys() and input[name]]
        return "".join(f" --{name.replace('_', '-')} {shlex.quote(str(input[name]))}" for name in given)

    return options


def training_priority(wildcards):
    """Longest first, once its inputs exist, so that short jobs fill the cores at the end.

    Supervised runs that distillation waits for, then guided distillation (the longest runs), then the
    100 % upper bound, then standard burn-in (which continues a supervised run for the last few steps).
    """
    method = METHODS[wildcards.get("method", SUPERVISED)]
    if method.name == SUPERVISED:
        return 4 if wildcards.percent == FULL else 10
    return 8 if method.needs_teacher else 2


def split_inputs(wildcards):
    """The training annotations, the dataset check, extra unlabelled images and the user's list of labelled images.

    A list not yet placed (protocol 'list') is no input, so a dry run plans on a machine without the data;
    the split job itself then stops with the path it looked for.
    """
    config = plan(wildcards)
    inputs = {
        "annotations": dataset_paths(config)["train_annotations"],
        "images": dataset_paths(config)["train_images"],
        "check": f"{CHECK_DIR}/train.json".format(**wildcards),
    }
    extra = extra_unlabeled_paths(config)
    if extra:
        inputs["extra_unlabeled_info"] = extra["image_info"]
        inputs["extra_unlabeled_images"] = extra["images"]
    if config["splits"]["protocol"] == "list":
        path = list_path(config["splits"]["list_file"], float(wildcards.percent), int(wildcards.fold))
        if path.exists():
            inputs["label_list"] = str(path)
    return inputs


def config_params(*keys):
    """Params function: {key: value} of the dotted config keys a rule's command reads. A changed value reruns
    the rule (Snakemake's params trigger), and `gdis dvc yaml` lists the keys as the stage's DVC params."""

    def values(wildcards):
        config, found = plan(wildcards), {}
        for key in keys:
            value = config
            for part in key.split("."):
                value = value[part]
            found[key] = value
        return found

    return values


def config_value(key):
    """Params function: one dotted config key of the job's plan."""
    return lambda wildcards: config_params(key)(wildcards)[key]


def metrics(path):
    """Mark an output as a metrics file: dvc.yaml declares it a DVC metric (`cache: false`)."""
    return flag(path, "dvc_metrics")


def plot(path, **properties):
    """Mark an output as a plot (an image, or data with DVC plot properties such as x, y, template)."""
    return flag(path, "dvc_plots", properties)


def job_resources(kind):
    """Resources of a job of ``kind`` (train, evaluate, prepare, light) from its plan's `resources` section."""
    return {
        name: (lambda wildcards, name=name: scheduler_resources(plan(wildcards)["resources"][kind])[name])
        for name in SCHEDULER_RESOURCES
    }


def threads_of(section):
    return lambda wildcards: plan(wildcards)[section]["threads"]


def train_launcher(wildcards):
    """One training process per GPU given to the job (torchrun; srun across nodes), or a plain process,
    started with `exec` so a scheduler's signal reaches training itself, not a shell in between."""
    train = plan(wildcards)["resources"]["train"]
    return " ".join(filter(None, ["exec", launcher(train["nodes"], train["gpus"])]))


def write_report_after_run():
    """The HTML report, after a run of the default target that ran jobs (config report.after_run)."""
    config = planned_config(DEFAULT_DATASET)
    if set(workflow.dag_settings.targets) - {"all"} or not config["report"]["after_run"]:
        return
    # One --configfile with every file: a repeated --configfile keeps only its last list.
    configfiles = " ".join(["--configfile", *map(shlex.quote, USER_CONFIGS)]) if USER_CONFIGS else ""
    shell(f"snakemake --snakefile {workflow.main_snakefile} --nolock --report {config['report']['path']} {configfiles}")
