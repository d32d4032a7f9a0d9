"""The real Snakemake workflow: lint, dry run on the default config, a micro run end to end, bad config."""

from __future__ import annotations

import re
import subprocess

import pandas as pd
import pytest

from gdis.report import CSV_COLUMNS


def _snakemake(workdir, *args, timeout=600) -> subprocess.CompletedProcess:
    return subprocess.run(["snakemake", *args], cwd=workdir, capture_output=True, text=True, timeout=timeout)


# Rules run in the environment gdis is installed in (README: pip, or conda with environment.yml), so no rule
# names a conda environment or container; that is the one lint the workflow is allowed.
ENVIRONMENT_LINT = "Specify a conda environment or container for each rule."


@pytest.mark.slow
def test_lint_is_clean(workflow_copy):
    result = _snakemake(workflow_copy, "--lint")
    out = result.stdout + result.stderr
    titles = re.findall(r"^    \* (.+?):?$", out, flags=re.MULTILINE)
    assert titles, out  # the environment lint, once per rule
    assert set(titles) == {ENVIRONMENT_LINT}, out


@pytest.mark.slow
def test_dry_run_plans_the_default_demo(workflow_copy):
    result = _snakemake(workflow_copy, "-n", "--cores", "2")
    assert result.returncode == 0, result.stderr
    out = result.stdout + result.stderr
    for rule in ("pretrain", "synthesize", "split", "train_supervised", "train_distillation", "evaluate", "table",
                 "plot", "training_curves"):
        assert rule in out


@pytest.mark.slow
def test_bad_config_fails_before_running_anything(workflow_copy):
    (workflow_copy / "typo.yaml").write_text("train:\n  burnin: 10\n")
    result = _snakemake(workflow_copy, "-n", "--cores", "1", "--configfile", "typo.yaml")
    assert result.returncode != 0
    assert "unknown key train.burnin" in result.stdout + result.stderr
    overridden = _snakemake(workflow_copy, "-n", "--cores", "1", "--config", "methods=[supervised]")
    assert overridden.returncode != 0 and "--configfile FILE" in overridden.stdout + overridden.stderr


@pytest.mark.slow
def test_micro_pipeline_end_to_end(micro_workflow_run):
    workflow_copy, result = micro_workflow_run
    assert result.returncode == 0, result.stderr[-3000:]
    table = pd.read_csv(workflow_copy / "results" / "tables" / "micro.csv")
    assert list(table.columns) == CSV_COLUMNS
    rows = set(zip(table["arch"], table["method"], table["label_percent"], table["model"]))
    assert rows == {(arch, *row) for arch in ("mask_rcnn", "mask2former") for row in [  # the demo's two networks
        ("supervised", 25, "student"), ("supervised", 100, "student"),
        ("standard_burnin", 25, "student"), ("standard_burnin", 25, "ema_teacher"),
        ("guided_distillation", 25, "student"), ("guided_distillation", 25, "ema_teacher")]}
    for name in ("micro.md",):
        assert (workflow_copy / "results" / "tables" / name).read_text().startswith("## micro")
    for name in ("micro.png", "micro_training.png"):
        assert (workflow_copy / "results" / "plots" / name).read_bytes().startswith(b"\x89PNG")
    again = _snakemake(workflow_copy, "-n", "--cores", "2", "--configfile", "config/micro.yaml")
    assert "Nothing to be done" in again.stdout + again.stderr
