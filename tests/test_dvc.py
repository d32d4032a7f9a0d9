"""DVC over the workflow: the generated dvc.yaml, the offline plots page, and a real reproduction
on a new clone through a local directory remote (run -> push -> clone -> pull -> nothing to do)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from gdis import dvc
from gdis.config import read_yaml

REPO = Path(__file__).resolve().parents[1]
MICRO = "config/micro.yaml"


def _run(cwd: Path, *command: str, timeout: int = 1800) -> str:
    result = subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"{' '.join(command)} failed:\n{output[-4000:]}"
    return output


def _stages(workdir: Path) -> dict:
    return yaml.safe_load((workdir / "dvc.yaml").read_text())["stages"]


def _rule(stage_name: str) -> str:
    return stage_name.split("-")[0]


def _written(stage: dict) -> set[str]:
    return {next(iter(out)) if isinstance(out, dict) else out
            for key in ("outs", "metrics", "plots") for out in stage.get(key, [])}


def _downstream(stages: dict, names: set[str]) -> set[str]:
    """The stages that depend, directly or not, on the outputs of ``names``."""
    found, frontier = set(), set(names)
    while frontier:
        outputs = set().union(*(_written(stages[name]) for name in frontier))
        frontier = {name for name, stage in stages.items()
                    if name not in found and outputs & set(stage.get("deps", []))}
        found |= frontier
    return found


def _ran(output: str) -> set[str]:
    return set(re.findall(r"Running stage '([^']+)'", output))


def test_committed_dvc_yaml_is_generated_from_the_workflow(monkeypatch):
    monkeypatch.chdir(REPO)
    assert dvc.write_dvc_yaml([], check=True), "dvc.yaml differs from the workflow: regenerate it with `gdis dvc yaml`"


def test_committed_dvc_lock_matches_dvc_yaml():
    """dvc.lock is written by running the default pipeline; when present it must cover the current stages."""
    lock = REPO / "dvc.lock"
    if not lock.exists():
        pytest.skip("no dvc.lock yet: run the default pipeline, then `gdis dvc commit` (README, Reproduce with DVC)")
    assert set(yaml.safe_load(lock.read_text())["stages"]) == set(_stages(REPO))


def test_stages_run_the_workflow_commands_with_the_keys_they_read(monkeypatch):
    monkeypatch.chdir(REPO)
    stages = dvc.planned_stages([MICRO])
    by_rule: dict[str, list[dict]] = {}
    for name, stage in stages.items():
        by_rule.setdefault(_rule(name), []).append(stage)
    assert {"synthesize", "split", "train_supervised", "train_distillation", "evaluate", "table", "plot",
            "training_curves"} <= set(by_rule)
    network = "config/networks/mask_rcnn_tiny.yaml"
    assert stages["split-micro-25-1"]["params"] == [{"config/config.yaml": ["splits.seed", "splits.unlabeled"]}]
    assert stages["train_supervised-micro-mask_rcnn_tiny-25-1"]["params"] == [
        {"config/config.yaml": ["model", "train"]}, {network: ["model", "train"]}, {MICRO: ["model", "train"]}]
    assert stages["evaluate-micro-mask_rcnn_tiny-supervised-25-1"]["params"] == [
        {"config/config.yaml": ["model", "evaluate", "train.pseudo_label"]}, {network: ["model", "train.pseudo_label"]},
        {MICRO: ["model", "evaluate", "train.pseudo_label"]}]
    assert "params" not in stages["table-micro"]  # reads no config, only the metrics files it is given
    evaluate = stages["evaluate-micro-mask_rcnn_tiny-guided_distillation-25-1"]
    assert evaluate["cmd"][1].startswith(f"gdis evaluate --config config/config.yaml {network} {MICRO} --checkpoint ")
    run = "results/models/micro/mask_rcnn_tiny"
    assert f"{run}/guided_distillation/25pct/fold1/model_final.pt" in evaluate["deps"]
    assert evaluate["metrics"] == [
        {"results/eval/micro/mask_rcnn_tiny/guided_distillation/25pct/fold1/metrics.json": {"cache": False}}]
    assert evaluate["outs"] == ["results/eval/micro/mask_rcnn_tiny/guided_distillation/25pct/fold1/predictions"] + [
        f"results/figures/micro/mask_rcnn_tiny/guided_distillation/25pct/fold1/{name}.png" for name in ("val", "unlabeled")]
    train = stages["train_distillation-micro-mask_rcnn_tiny-guided_distillation-25-1"]
    assert f"{run}/supervised/25pct/fold1/model_final.pt" in train["deps"]
    assert f"{run}/guided_distillation/25pct/fold1/model_final.pt" in train["outs"]
    assert stages["table-micro"]["plots"] == [{"results/tables/micro.csv": {"cache": False, "x": "label_percent",
                                                                            "y": "mask_AP", "template": "scatter"}}]
    # cache: false only for metrics and plots; splits and checkpoints go to the DVC cache
    for stage in stages.values():
        assert all(isinstance(out, str) for out in stage.get("outs", []))


def test_params_name_only_keys_each_file_sets(tmp_path):
    (tmp_path / "base.yaml").write_text("train: {lr: 0.1}\nsplits: {seed: 0}\n")
    (tmp_path / "over.yaml").write_text("train: {lr: 0.2}\n")
    files = [str(tmp_path / "base.yaml"), str(tmp_path / "over.yaml")]
    assert dvc.stage_params(["train.lr", "splits.seed", "evaluate"], files) == [
        {files[0]: ["train.lr", "splits.seed"]}, {files[1]: ["train.lr"]}]


def test_dvc_is_configured_for_offline_shared_use():
    config = (REPO / ".dvc" / "config").read_text()
    for line in ("analytics = false", "check_update = false", "remote = storage", "html_template = plots/offline.html"):
        assert line in config
    assert ".snakemake_timestamp" in (REPO / ".dvcignore").read_text().splitlines()


def test_offline_plots_template_inlines_vega(tmp_path):
    out = tmp_path / "offline.html"
    dvc.write_plots_template(str(out))
    page = out.read_text()
    assert "{plot_divs}" in page and "{scripts}" not in page  # {scripts} is where DVC would add CDN links
    assert "<script src" not in page
    for global_name in ("global.vega =", "global.vegaLite =", "global.vegaEmbed ="):
        assert global_name in page.replace(" = {}", " =")


def _set_git_identity(repo: Path) -> None:  # dvc exp run commits experiments
    _run(repo, "git", "config", "user.name", "gdis test")
    _run(repo, "git", "config", "user.email", "test@gdis.invalid")


def _workspace_copy(target: Path) -> None:
    """The repository's files as a fresh git repository, without dvc.yaml/dvc.lock of the default demo."""
    listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=REPO, capture_output=True,
                            text=True, check=True).stdout.splitlines()
    for name in listed:
        source = REPO / name
        if name in ("dvc.yaml", "dvc.lock") or not (source.exists() or source.is_symlink()):
            continue
        (target / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(source, target / name, follow_symlinks=False)
    _run(target, "git", "init", "-q")
    _set_git_identity(target)
    _run(target, "git", "add", "-A")
    _run(target, "git", "commit", "-qm", "gdis")


@pytest.mark.slow
def test_reproduce_on_a_new_clone_through_a_dvc_remote(tmp_path, monkeypatch):
    pytest.importorskip("dvc", reason="install the dvc extra: pip install -e '.[dvc]' -c constraints.txt")
    monkeypatch.setenv("DVC_SITE_CACHE_DIR", str(tmp_path / "dvc-site-cache"))
    work, clone = tmp_path / "work", tmp_path / "clone"
    work.mkdir()
    _workspace_copy(work)
    _run(work, "gdis", "dvc", "yaml", "--configfile", MICRO)
    _run(work, "snakemake", "--cores", "2", "--configfile", MICRO)
    _run(work, "gdis", "dvc", "commit", "--configfile", MICRO)
    assert "Nothing to be done" in _run(work, "snakemake", "--dry-run", "--cores", "1", "--configfile", MICRO)
    _run(work, "git", "add", "dvc.yaml")
    _run(work, "git", "commit", "-qm", "micro results")
    _run(work, "dvc", "push")  # to the default remote, ../gdis-dvc-storage
    assert (tmp_path / "gdis-dvc-storage" / "files" / "md5").is_dir()

    _run(tmp_path, "git", "clone", "-q", str(work), str(clone))
    _set_git_identity(clone)
    _run(clone, "dvc", "pull")
    assert json.loads(_run(clone, "dvc", "status", "--json")) == {}
    repro = _run(clone, "dvc", "repro")
    assert not _ran(repro) and "Data and pipelines are up to date" in repro
    wrong_config = subprocess.run(["gdis", "dvc", "touch"], cwd=clone, capture_output=True, text=True)
    assert wrong_config.returncode != 0 and f"gdis dvc yaml --configfile {MICRO}" not in wrong_config.stderr
    assert "regenerate it with `gdis dvc yaml`" in wrong_config.stderr
    _run(clone, "gdis", "dvc", "touch", "--configfile", MICRO)
    assert "Nothing to be done" in _run(clone, "snakemake", "--dry-run", "--cores", "1", "--configfile", MICRO)

    metrics = json.loads(_run(clone, "dvc", "metrics", "show", "--json"))
    shown = {path: entry for path, entry in next(iter(metrics.values()))["data"].items() if path.startswith("results/eval/")}
    assert len(shown) == len([n for n in _stages(clone) if _rule(n) == "evaluate"])
    assert all("mask_AP" in row for entry in shown.values() for row in entry["data"].values())
    _run(clone, "gdis", "dvc", "plots-template")
    _run(clone, "dvc", "plots", "show", "-o", "plots_page")
    page = (clone / "plots_page" / "index.html").read_text()
    assert "vegaEmbed('#results_tables_micro_csv'" in page and "<script src" not in page
    assert len(list((clone / "plots_page" / "static").glob("*.png"))) == 2

    stages = _stages(clone)
    evaluate = {name for name in stages if _rule(name) == "evaluate"}
    ran = _ran(_run(clone, "dvc", "exp", "run", "-S", f"{MICRO}:evaluate.batch_size=2"))
    assert evaluate <= ran <= evaluate | _downstream(stages, evaluate), ran

    splits = {name for name in stages if _rule(name) == "split"}
    manifest = clone / "results/splits/micro/25pct/fold1/manifest.json"
    labelled_before = json.loads(manifest.read_text())["labeled_image_ids"]
    ran = _ran(_run(clone, "dvc", "exp", "run", "-S", "config/config.yaml:splits.seed=1"))
    labelled_after = json.loads(manifest.read_text())["labeled_image_ids"]
    changed_split = {name for name in splits if name.startswith("split-micro-25-")}
    assert labelled_before != labelled_after
    assert splits | _downstream(stages, changed_split) <= ran <= splits | _downstream(stages, splits), ran
    assert read_yaml(clone / "config/config.yaml")["splits"]["seed"] == 1
