# Validated config, wildcard constraints, result paths and input functions shared by all rules.
import shlex
import sys
from pathlib import Path

from snakemake.io import flag

from gdis.config import ConfigError, dataset_paths, dataset_plans, extra_unlabeled_paths, format_percent, load_config, validate_config
from gdis.distill import DISTILLATION_METHODS, GUIDED, METHODS, SUPERVISED, SUPERVISED_BURN_IN
from gdis.distributed import launcher, scheduler_resources
from gdis.protocols import list_path

DEFAULT_CONFIG = "config/config.yaml"

if workflow.config_settings.config:
    raise WorkflowError(
        "--config KEY=VALUE overrides are not passed on to the gdis commands; "
        "write them in a YAML file and add it with --configfile FILE"
    )


def requested_targets():
    """The targets asked for. Snakemake sets its DAG settings only after reading the Snakefile,
    so on the command line they are read from the arguments with Snakemake's own parser."""
    if workflow.dag_settings is not None:
        return list(workflow.dag_settings.targets)
    from snakemake.cli import get_argument_parser

    argv = sys.argv[1:]
    explicit = argv[argv.index("--") + 1 :] if "--" in argv else []
    try:
        known, _ = get_argument_parser().parse_known_args(argv[: len(argv) - len(explicit) - bool(explicit)])
    except SystemExit:
        return explicit
    return list(known.targets) + explicit


# A target under results/ or data/ that names a dataset with a plan, config/<name>.yaml (e.g.
# results/tables/coco.csv), adds that plan right after the default config; --configfile files still win.
try:
    DATASET_PLANS = dataset_plans(requested_targets(), "config")
except ValueError as error:
    raise WorkflowError(str(error)) from None
# Files inside the working directory are named relatively, so commands (and dvc.yaml) do not depend on the checkout's place.
USER_CONFIGS = [
    os.path.relpath(path) if Path(path).resolve().is_relative_to(Path.cwd().resolve()) else str(path)
    for path in workflow.config_settings.configfiles
]
# The gdis commands receive the same files, merged in the same order, as this workflow.
CONFIG_FILES = [DEFAULT_CONFIG] + [plan for plan in DATASET_PLANS if plan not in USER_CONFIGS] + USER_CONFIGS
try:
    validated = load_config(CONFIG_FILES)
    if CONFIG_FILES == [DEFAULT_CONFIG] + USER_CONFIGS:
        assert validate_config(config) == validated, "merged config files differ from Snakemake's config"
except ConfigError as error:
    raise WorkflowError(str(error)) from None
config.clear()
config.update(validated)
CONFIG_ARGS = " ".join(CONFIG_FILES)
SOFTWARE_ENV = "../../environment.yml"

DATASET = config["dataset"]["name"]
NETWORK = f"{config['model']['arch']}/{config['model']['backbone']}"
DATA = dataset_paths(config)
EXTRA_UNLABELED = extra_unlabeled_paths(config)
PERCENTS = [format_percent(p) for p in config["splits"]["label_percents"]]
FOLDS = config["splits"]["folds"]
FULL = format_percent(100)


wildcard_constraints:
    dataset=r"[A-Za-z0-9][A-Za-z0-9_-]*",
    percent=r"[0-9]+(\.[0-9]+)?",
    fold=r"[0-9]+",
    method="|".join(METHODS),
    model="student|ema_teacher",


SPLIT_DIR = f"results/splits/{DATASET}/{{percent}}pct/fold{{fold}}"
RUN_DIR = f"results/models/{DATASET}/{NETWORK}/{{method}}/{{percent}}pct/fold{{fold}}"
SUPERVISED_RUN_DIR = f"results/models/{DATASET}/{NETWORK}/{SUPERVISED}/{{percent}}pct/fold{{fold}}"
EVAL_DIR = f"results/eval/{DATASET}/{NETWORK}/{{method}}/{{percent}}pct/fold{{fold}}"
LOG_DIR = f"results/logs/{DATASET}"
FIGURE_DIR = f"results/figures/{DATASET}/{NETWORK}/{{method}}/{{percent}}pct/fold{{fold}}"
CHECK_DIR = f"results/checks/{DATASET}"


def runs():
    """(method, percent, fold) of every training run the config asks for."""
    planned = [
        (method, percent, fold)
        for method in config["methods"]
        for percent in PERCENTS
        for fold in FOLDS
        if not (percent == FULL and method in DISTILLATION_METHODS)
    ]
    if config["splits"]["include_full"] and SUPERVISED in config["methods"] and FULL not in PERCENTS:
        planned += [(SUPERVISED, FULL, fold) for fold in FOLDS]
    return planned


def evaluated_networks():
    """(method, percent, fold, model): the student of every run, and the EMA teacher of distillation runs."""
    for method, percent, fold in runs():
        yield method, percent, fold, "student"
        if method in DISTILLATION_METHODS:
            yield method, percent, fold, "ema_teacher"


def metrics_files():
    return [
        f"{EVAL_DIR}/{model}.json".format(method=method, percent=percent, fold=fold)
        for method, percent, fold, model in evaluated_networks()
    ]


def gallery_files():
    return [
        f"{FIGURE_DIR}/{images}.png".format(method=method, percent=percent, fold=fold)
        for method, percent, fold in runs()
        for images in ("val", "unlabeled")
    ]


def train_logs():
    """{label: train_log.jsonl} of every run, for the training-curves plot."""
    return {
        f"{method} {percent}% fold {fold}": f"{RUN_DIR}/train_log.jsonl".format(method=method, percent=percent, fold=fold)
        for method, percent, fold in runs()
    }


def train_inputs(wildcards):
    inputs = {
        "labeled": f"{SPLIT_DIR}/labeled.json".format(**wildcards),
        "unlabeled": f"{SPLIT_DIR}/unlabeled.json".format(**wildcards),
        "images": DATA["train_images"],
        "val_check": f"{CHECK_DIR}/val.json",  # a broken val set stops the run before training, not after
    }
    supervised_run = SUPERVISED_RUN_DIR.format(percent=wildcards.percent, fold=wildcards.fold)
    method = METHODS[wildcards.get("method", SUPERVISED)]
    if method.distills:  # hidden annotations: pseudo-label quality
        inputs["annotations"] = DATA["train_annotations"]
    if method.needs_teacher:
        inputs["teacher"] = f"{supervised_run}/model_final.pt"
    if method.starts_from == SUPERVISED_BURN_IN:
        inputs["burn_in_checkpoint"] = f"{supervised_run}/burn_in.pt"
    return inputs


def start_options(wildcards, input):
    """gdis train options naming what a distillation run starts from: its teacher or the supervised burn-in."""
    if "teacher" in input.keys():
        return f"--teacher {input.teacher}"
    return f"--burn-in-checkpoint {input.burn_in_checkpoint}"


def supervised_burn_in_output():
    """A supervised run saves its state at step burn_in, which standard_burnin continues from."""
    if config["train"]["burn_in"] < config["train"]["iterations"]:
        return {"burn_in": f"{SUPERVISED_RUN_DIR}/burn_in.pt"}
    return {}


def training_priority(wildcards):
    """Longest first, once its inputs exist, so that short jobs fill the cores at the end.

    Supervised runs that distillation waits for, then guided distillation (the longest runs), then the
    100 % upper bound, then standard burn-in (which continues a supervised run for the last few steps).
    """
    method = wildcards.get("method", SUPERVISED)
    if method == SUPERVISED:
        return 4 if wildcards.percent == FULL else 10
    return 8 if method == GUIDED else 2


def split_list_file(wildcards):
    """The user's list of labelled images of this split (protocol 'list'), tracked once it exists.

    A list not yet placed is no input, so a dry run plans on a machine without the data; the
    split job itself then stops with the path it looked for.
    """
    if config["splits"]["protocol"] != "list":
        return []
    path = list_path(config["splits"]["list_file"], float(wildcards.percent), int(wildcards.fold))
    return str(path) if path.exists() else []


def report_outputs():
    return [
        f"results/tables/{DATASET}.csv",
        f"results/tables/{DATASET}.md",
        f"results/plots/{DATASET}.png",
        f"results/plots/{DATASET}_training.png",
        f"results/plots/{DATASET}_training.csv",
        f"results/tensorboard/{DATASET}",
        *gallery_files(),
    ]


def config_params(*keys):
    """{key: value} of the dotted config keys a rule's command reads. A changed value reruns the rule
    (Snakemake's params trigger), and `gdis dvc yaml` lists the keys as the stage's DVC params."""
    values = {}
    for key in keys:
        value = config
        for part in key.split("."):
            value = value[part]
        values[key] = value
    return values


def metrics(path):
    """Mark an output as a metrics file: dvc.yaml declares it a DVC metric (`cache: false`)."""
    return flag(path, "dvc_metrics")


def plot(path, **properties):
    """Mark an output as a plot (an image, or data with DVC plot properties such as x, y, template)."""
    return flag(path, "dvc_plots", properties)


def write_report_after_run():
    """The HTML report, after a run of the default target that ran jobs (config report.after_run)."""
    if requested_targets() not in ([], ["all"]) or not config["report"]["after_run"]:
        return
    # One --configfile with every file: a repeated --configfile keeps only its last list.
    configfiles = " ".join(["--configfile", *map(shlex.quote, USER_CONFIGS)]) if USER_CONFIGS else ""
    shell(f"snakemake --snakefile {workflow.main_snakefile} --nolock --report {config['report']['path']} {configfiles}")


def resources_of(kind):
    return scheduler_resources(config["resources"][kind])


# One training process per GPU given to the job (torchrun; srun across nodes), or a plain process,
# started with `exec` so a scheduler's signal reaches training itself, not a shell in between.
TRAIN_LAUNCHER = " ".join(filter(None, ["exec", launcher(config["resources"]["train"]["nodes"],
                                                         config["resources"]["train"]["gpus"])]))
