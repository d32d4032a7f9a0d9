"""DVC over the Snakemake workflow, with the pipeline graph written once (in workflow/rules).

``dvc.yaml`` is generated from the jobs Snakemake plans for the default target: one stage per job,
running the job's very shell command, with the job's inputs as deps, its outputs as outs (metrics
and plots as marked in the rules) and the config keys the rule declares with ``config_params(...)``
as params. The other functions hand a checkout over between the two tools and make
``dvc plots show`` work offline.
"""

from __future__ import annotations

import logging
import os
import re
import subprocess
from pathlib import Path

import yaml

from gdis.config import read_yaml
from gdis.io import write_text

log = logging.getLogger(__name__)

DVC_YAML = "dvc.yaml"
PLOTS_TEMPLATE = ".dvc/plots/offline.html"
METRICS_FLAG = "dvc_metrics"
PLOTS_FLAG = "dvc_plots"
HEADER = ("# Generated from the Snakemake workflow by `gdis dvc yaml`; do not edit.\n"
          "# Change workflow/rules (or config/config.yaml), then regenerate.\n")
# Vega, Vega-Lite and Vega-Embed as Snakemake ships them for its HTML reports (UMD bundles that set globals).
VEGA_BUNDLES = ("vega/vega.js", "vega-lite/vega-lite.js", "vega-embed/vega-embed.js")


class DvcError(RuntimeError):
    """The two tools disagree, or a rule cannot become a DVC stage; the message says what to do."""


def _configfile_args(configfiles: list[str]) -> list[str]:
    return [arg for path in configfiles for arg in ("--configfile", path)]


def stage_name(job) -> str:
    """The rule's name, then its wildcard values: ``evaluate-guided_distillation-10-1-student``."""
    values = [re.sub(r"[^A-Za-z0-9_-]", "_", str(value)) for value in job.wildcards]
    return "-".join([job.rule.name, *values])


def _has_key(data: dict, dotted: str) -> bool:
    for part in dotted.split("."):
        if not isinstance(data, dict) or part not in data:
            return False
        data = data[part]
    return True


def stage_params(keys: list[str], files: list[str]) -> list[dict]:
    """DVC params: each key under every config file that sets it (a key left to its schema default is in none)."""
    entries = []
    for path in files:
        data = read_yaml(path)
        present = [key for key in keys if _has_key(data, key)]
        if present:
            entries.append({path: present})
    return entries


def _unique(paths) -> list[str]:
    return list(dict.fromkeys(str(path) for path in paths))


def config_files(job) -> list[str]:
    """The config files a job's command receives (its ``config`` param, workflow/rules/common.smk)."""
    return job.params.config.split() if "config" in job.params.keys() else []


def job_stage(job, files: list[str]) -> dict:
    """The DVC stage of one Snakemake job."""
    rule = job.rule.name
    command = job.shellcmd
    if not command:
        raise DvcError(f"rule {rule}: only rules with a shell: command can become DVC stages")
    command = command.strip()
    stage: dict = {}
    log_dirs = _unique(os.path.dirname(path) for path in job.log)
    # Snakemake creates the log folders itself; DVC needs to be told.
    stage["cmd"] = [f"mkdir -p {' '.join(log_dirs)}", command] if log_dirs else command
    deps = _unique(job.input)
    if deps:
        stage["deps"] = deps
    if "config_params" in job.params.keys():
        keys = list(job.params.config_params)
    elif re.search(r"--config\b", command):
        keys = sorted({key for path in files for key in read_yaml(path)})
        log.warning("rule %s passes --config but declares no config_params(...): its stages depend on every key "
                    "of the config files; list the keys it reads in the rule", rule)
    else:
        keys = []
    params = stage_params(keys, files)
    if params:
        stage["params"] = params
    outs, metrics, plots = [], [], []
    for path in job.output:
        flags = path.flags
        if METRICS_FLAG in flags:
            metrics.append({str(path): {"cache": False}})
        elif PLOTS_FLAG in flags:
            plots.append({str(path): {"cache": False, **flags[PLOTS_FLAG]}})
        else:
            outs.append(str(path))
    for key, entries in (("outs", outs), ("metrics", metrics), ("plots", plots)):
        if entries:
            stage[key] = entries
    return stage


def planned_stages(configfiles: list[str]) -> dict:
    """{stage name: stage} of every job of the default target, as `snakemake --forceall` would run them."""
    from snakemake.api import SnakemakeApi
    from snakemake.settings.types import (
        ConfigSettings,
        DAGSettings,
        OutputSettings,
        Quietness,
        ResourceSettings,
    )

    with SnakemakeApi(OutputSettings(quiet={Quietness.ALL})) as api:
        workflow_api = api.workflow(
            resource_settings=ResourceSettings(cores=1),
            config_settings=ConfigSettings(configfiles=[Path(path) for path in configfiles]),
            snakefile=Path("Snakefile"),
        )
        # The public API prints DAGs but does not return them: build it the way its printdag() does.
        workflow = workflow_api._workflow
        workflow.dag_settings = DAGSettings(forceall=True)
        workflow._prepare_dag(forceall=True, ignore_incomplete=True, lock_warn_only=True, nolock=True)
        workflow._build_dag()
        stages = {}
        for level in workflow.dag.toposorted():
            for job in sorted(level, key=stage_name):
                if job.output:  # skips target rules such as `all`
                    stages[stage_name(job)] = job_stage(job, config_files(job))
    return stages


def generate_dvc_yaml(configfiles: list[str]) -> str:
    """The text of dvc.yaml for the workflow run with these extra config files (none: the default demo)."""
    return HEADER + yaml.safe_dump({"stages": planned_stages(configfiles)}, sort_keys=False, width=10**6)


def write_dvc_yaml(configfiles: list[str], out: str = DVC_YAML, check: bool = False) -> bool:
    """Write dvc.yaml, or with ``check`` only compare; return whether the file was already up to date."""
    text = generate_dvc_yaml(configfiles)
    current = Path(out).read_text(encoding="utf-8") if Path(out).exists() else None
    if check:
        return current == text
    if current != text:
        write_text(out, text)
    return current == text


def write_plots_template(out: str = PLOTS_TEMPLATE) -> None:
    """An HTML template for `dvc plots show` with the Vega libraries inlined, so the page needs no network."""
    from snakemake.assets import Assets

    scripts = []
    for asset in VEGA_BUNDLES:
        notice = Assets.get_content(str(Path(asset).parent / "LICENSE")).replace("*/", "* /")
        code = Assets.get_content(asset).replace("</script", "<\\/script")
        scripts.append(f"<script>\n/* {asset} {Assets.get_version(asset)}\n{notice}\n*/\n{code}\n</script>")
    page = "\n".join([
        "<!DOCTYPE html>", "<html>", "<head>", "{refresh_tag}", "<meta charset=\"utf-8\">", "<title>DVC Plot</title>",
        *scripts, "<style>table { border-spacing: 15px; }</style>", "</head>", "<body>", "{plot_divs}", "</body>",
        "</html>", ""])
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    write_text(out, page)


def _check_dvc_yaml(configfiles: list[str]) -> None:
    if not write_dvc_yaml(configfiles, check=True):
        extra = "".join(f" --configfile {path}" for path in configfiles)
        raise DvcError(f"{DVC_YAML} does not describe the workflow run with these config files: "
                       f"regenerate it with `gdis dvc yaml{extra}`")


def dvc_changes() -> dict:
    """`dvc status` of the workspace: {stage: changes}, empty when every output matches dvc.lock."""
    from dvc.repo import Repo

    with Repo() as repo:
        return repo.status()


def touch_after_pull(configfiles: list[str]) -> None:
    """After `dvc pull` (or `dvc checkout`): mark Snakemake's outputs up to date, once DVC agrees they are."""
    _check_dvc_yaml(configfiles)
    changes = dvc_changes()
    if changes:
        raise DvcError(f"dvc status is not clean ({', '.join(sorted(changes))}): run `dvc pull` or `dvc repro` "
                       "first; touching now would mark stale outputs as up to date")
    _snakemake_touch(configfiles)


def _snakemake_touch(configfiles: list[str]) -> None:
    touched = subprocess.run(["snakemake", "--touch", "--cores", "1", "--quiet", *_configfile_args(configfiles)])
    if touched.returncode != 0:
        raise DvcError(f"snakemake --touch failed (exit status {touched.returncode})")


def commit_after_snakemake(configfiles: list[str]) -> list[str]:
    """After a Snakemake run: record its outputs in dvc.lock, once Snakemake has nothing left to do.

    Returns the files staged in git: dvc.lock, and the metrics and plots, which dvc.yaml keeps out of
    the DVC cache (git-ignored like all results, hence added with --force).
    """
    from dvc.repo import Repo

    _check_dvc_yaml(configfiles)
    dry_run = subprocess.run(["snakemake", "--dry-run", "--cores", "1", *_configfile_args(configfiles)],
                             capture_output=True, text=True)
    output = dry_run.stdout + dry_run.stderr
    if dry_run.returncode != 0 or "Nothing to be done" not in output:
        raise DvcError("snakemake --dry-run still plans jobs; finish the Snakemake run first:\n" + output[-2000:])
    with Repo() as repo:
        repo.commit(force=True)
        kept_in_git = ["dvc.lock", *sorted({out.def_path for out in repo.index.outs if not out.use_cache})]
        repo.scm.add(kept_in_git, force=True)
    # Adopting an output rewrites it from the cache, with a new modification time that would
    # make Snakemake rerun what depends on it; Snakemake was up to date a moment ago.
    _snakemake_touch(configfiles)
    return kept_in_git
