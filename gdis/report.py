"""Result tables and figures: evaluation JSON files to CSV/Markdown, AP-vs-labels and training-curve plots."""

from __future__ import annotations

import html
import json
import math
import os
from pathlib import Path
from typing import Iterable, Mapping

import markdown
import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import NullLocator

from gdis.config import format_percent
from gdis.distill import METHODS
from gdis.io import atomic_path, read_json, write_text
from gdis.published import METRIC_NAMES, PUBLISHED_METRICS, published_for

TABLE_COLUMNS = ["dataset", "arch", "backbone", "weights", "protocol", "method", "label_percent", "fold", "model",
                 "iteration", "mask_AP", "mask_AP50", "mask_AP75", "mask_APs", "mask_APm", "mask_APl", "box_AP", "box_AP50",
                 "box_AP75", "cityscapes_AP", "cityscapes_AP50"]
# The official Cityscapes evaluator's AP (gdis/cityscapes_eval.py): only Cityscapes metrics files have it.
OPTIONAL_COLUMNS = ["cityscapes_AP", "cityscapes_AP50"]
METHOD_ORDER = list(METHODS)  # the order of the table in gdis/distill.py: rows of the tables, lines of the plots
MODEL_ORDER = ["student", "ema_teacher"]
CONFIG_COLUMNS = ["dataset", "arch", "backbone", "weights", "protocol"]
AP_COLUMNS = TABLE_COLUMNS[TABLE_COLUMNS.index("mask_AP"):]
# The published number of the same dataset, network, method and label percentage beside ours, in the column of its
# metric: COCO mask AP beside mask_AP, the official Cityscapes AP beside cityscapes_AP (gdis/published_results.yaml).
PAPER_COLUMNS = [f"paper_{column}" for column in PUBLISHED_METRICS.values()] + ["paper_entry"]
PUBLISHED_KEYS = ["dataset", "arch", "backbone", "method", "label_percent"]
CSV_COLUMNS = TABLE_COLUMNS + PAPER_COLUMNS
METHOD_COLORS = {name: method.color for name, method in METHODS.items()}
METHOD_NAMES = {name: method.label for name, method in METHODS.items()}
MODEL_NAMES = {"student": "student", "ema_teacher": "EMA teacher"}
# Panels of the training-curve figure: (title, log columns, y range or None). Runs differ by colour;
# the columns sharing a panel by line style (CURVE_STYLES), named in the legend by CURVE_LABELS.
CURVE_PANELS = [("total loss", ["loss"], None), ("supervised loss", ["loss_supervised"], None),
                ("unsupervised loss", ["loss_unsupervised"], None),
                ("pseudo-labels per image", ["pseudo_labels_per_image"], None),
                ("pseudo-label quality (hidden labels)", ["pseudo_label_precision", "pseudo_label_recall",
                                                          "pseudo_label_mask_iou", "pseudo_label_boundary_iou"], (0, 1)),
                ("val mask AP75 (train.eval_period)", ["val_student_mask_AP75", "val_teacher_mask_AP75"], None),
                ("learning rate", ["lr"], None)]
CURVE_COLUMNS = [column for _, columns, _ in CURVE_PANELS for column in columns]
CURVE_LABELS = {"val_student_mask_AP75": "student", "val_teacher_mask_AP75": "teacher giving the pseudo-labels",
                "pseudo_label_precision": "precision", "pseudo_label_recall": "recall",
                "pseudo_label_mask_iou": "mask IoU of matched", "pseudo_label_boundary_iou": "boundary IoU of matched"}
# Dotted lines mark the switch to distillation, so the fourth series is a line of dots of its own kind.
CURVE_STYLES = [{"linestyle": "-"}, {"linestyle": "--"}, {"linestyle": "-."},
                {"linestyle": "-", "marker": "o", "markersize": 2.5}]
SMOOTHING_WINDOW = 5
PNG_METADATA = {"Software": None}


def metrics_row(config: dict, run: dict, checkpoint: dict, model: str, metrics: dict) -> dict:
    """One row of the results table: what was trained (config, run record, checkpoint), which network, its AP."""
    return {
        "dataset": config["dataset"]["name"], "arch": config["model"]["arch"], "backbone": config["model"]["backbone"],
        "weights": run["weights"], "method": checkpoint["method"], "label_percent": run["label_percent"],
        "fold": run["fold"], "protocol": config["splits"]["protocol"], "model": model,
        "iteration": checkpoint["step"], **metrics,
    }


def _metrics_row(path: Path, data) -> dict:
    """One row of TABLE_COLUMNS with typed values from one network's metrics; errors name the file."""
    if not isinstance(data, dict):
        raise ValueError(f"metrics file {path} does not hold a JSON object per network")
    missing = [key for key in TABLE_COLUMNS if key not in data and key not in OPTIONAL_COLUMNS]
    if missing:
        raise ValueError(f"metrics file {path} lacks key(s): {', '.join(missing)}")
    if data["method"] not in METHOD_ORDER:
        raise ValueError(f"metrics file {path}: unknown method {data['method']!r} (expected one of {METHOD_ORDER})")
    if data["model"] not in MODEL_ORDER:
        raise ValueError(f"metrics file {path}: unknown model {data['model']!r} (expected one of {MODEL_ORDER})")
    try:
        row = {key: str(data[key]) for key in ["dataset", "arch", "backbone", "weights", "protocol", "method", "model"]}
        row["label_percent"] = float(data["label_percent"])
        row["fold"] = int(data["fold"])
        row["iteration"] = int(data["iteration"])
        for key in AP_COLUMNS:
            row[key] = math.nan if data.get(key) is None else float(data[key])
    except (TypeError, ValueError) as error:
        raise ValueError(f"metrics file {path} has a non-numeric value: {error}") from None
    return row


def read_metrics_file(path: str | os.PathLike) -> list[dict]:
    """The rows of a run's metrics file (``gdis evaluate``): one per evaluated network, keyed by its name."""
    path = Path(path)
    data = read_json(path, "metrics file")
    if not isinstance(data, dict) or not data:
        raise ValueError(f"metrics file {path} does not hold a JSON object of networks (student, ema_teacher)")
    rows = [_metrics_row(path, value) for value in data.values()]
    wrong = [name for name, row in zip(data, rows) if row["model"] != name]
    if wrong:
        raise ValueError(f"metrics file {path}: the entries {wrong} hold the metrics of another network")
    return rows


def collect_metrics(metric_files: Iterable[str | os.PathLike]) -> pd.DataFrame:
    """Read runs' metrics files into one row per network (TABLE_COLUMNS), sorted by config, method, label %, fold,
    model."""
    paths = [Path(path) for path in metric_files]
    if not paths:
        raise ValueError("no metrics files given")
    rows = [(row, str(path)) for path in paths for row in read_metrics_file(path)]
    table = pd.DataFrame([row for row, _ in rows], columns=TABLE_COLUMNS)
    table["source"] = [source for _, source in rows]
    key = CONFIG_COLUMNS + ["method", "label_percent", "fold", "model"]
    duplicated = table[table.duplicated(key, keep=False)]
    if not duplicated.empty:
        raise ValueError(f"metrics files describe the same run twice: {', '.join(duplicated['source'])}")
    table["method_rank"] = table["method"].map(METHOD_ORDER.index)
    table["model_rank"] = table["model"].map(MODEL_ORDER.index)
    table = table.sort_values(CONFIG_COLUMNS + ["method_rank", "label_percent", "fold", "model_rank"])
    return table[TABLE_COLUMNS].reset_index(drop=True)


def with_published(table: pd.DataFrame) -> pd.DataFrame:
    """``table`` plus PAPER_COLUMNS: the published number of the row's dataset, arch, backbone, method and label %,
    in the paper column of its metric (empty where none matches; a published item without arch or backbone never
    matches)."""
    published = pd.concat([published_for(dataset) for dataset in table["dataset"].unique()])
    published = published.dropna(subset=["method", "arch", "backbone"])
    published = published[PUBLISHED_KEYS + ["metric", "AP", "entry"]].rename(columns={"entry": "paper_entry"})
    out = table.merge(published, on=PUBLISHED_KEYS, how="left", validate="many_to_one")
    for metric, column in PUBLISHED_METRICS.items():
        out[f"paper_{column}"] = out["AP"].where(out["metric"] == metric)
    return out.drop(columns=["metric", "AP"])


def render_csv(table: pd.DataFrame) -> str:
    """Tidy CSV text: CSV_COLUMNS, label % as given (0.4, 5, 100), AP rounded to 2 decimals."""
    out = with_published(table[TABLE_COLUMNS])
    out["label_percent"] = out["label_percent"].map(format_percent)
    out[AP_COLUMNS] = out[AP_COLUMNS].round(2)
    return out[CSV_COLUMNS].to_csv(index=False, lineterminator="\n")


def _cell(values: pd.Series) -> str:
    """Mean over folds with 1 decimal, plus ' ± std' when several folds; '–' when there is no value."""
    values = values.dropna()
    if values.empty:
        return "–"
    if len(values) == 1:
        return f"{values.iloc[0]:.1f}"
    return f"{values.mean():.1f} ± {values.std():.1f}"


def _wide_table(table: pd.DataFrame, metric: str) -> list[str]:
    """Markdown lines: one row per (method, model), one column per label percentage."""
    percents = sorted(table["label_percent"].unique())
    lines = ["| method | model | " + " | ".join(f"{format_percent(p)} %" for p in percents) + " |",
             "|---|---|" + "---:|" * len(percents)]
    for method in METHOD_ORDER:
        for model in MODEL_ORDER:
            rows = table[(table["method"] == method) & (table["model"] == model)]
            if rows.empty:
                continue
            cells = [_cell(rows.loc[rows["label_percent"] == p, metric]) for p in percents]
            lines.append(f"| {METHOD_NAMES[method]} | {MODEL_NAMES[model]} | " + " | ".join(cells) + " |")
    return lines


def _published_table(dataset: str, arch: str, backbone: str, percents: list[float]) -> list[str]:
    """Markdown lines: the published results of ``dataset`` at ``percents``, each with its network and metric, and
    whether it is this section's network ``arch``/``backbone`` ([] when none is known)."""
    published = published_for(dataset)
    published = published[published["label_percent"].isin(percents)]
    if published.empty:
        return []
    note = ("Published results (%) at the same percentages (gdis/published_results.yaml), – where none, ? where the "
            f"source gives no network in gdis's terms. Only rows of this section's network ({arch}, {backbone}) "
            "compare with the tables above, each in its own metric")
    if (published["metric"] == "cityscapes_AP").any():
        note += ("; the Cityscapes numbers are the official evaluator's AP (cityscapesscripts), not COCO mask AP, "
                 "and compare with Cityscapes AP only")
    lines = [note + ":", "",
             "| published | network | same network | metric | " + " | ".join(f"{format_percent(p)} %" for p in percents)
             + " | source |",
             "|---|---|---|---|" + "---:|" * len(percents) + "---|"]
    for (entry, metric), rows in published.groupby(["entry", "metric"], sort=False):
        first = rows.iloc[0]
        network = ", ".join(name if isinstance(name, str) else "?" for name in (first["arch"], first["backbone"]))
        same = "yes" if (first["arch"], first["backbone"]) == (arch, backbone) else "no"
        values = dict(zip(rows["label_percent"], rows["AP"]))
        cells = [f"{values[p]:.1f}" if p in values else "–" for p in percents]
        lines.append(f"| {entry} | {network} | {same} | {METRIC_NAMES[metric]} | " + " | ".join(cells)
                     + f" | {first['source']} |")
    return lines + [""]


def render_markdown(table: pd.DataFrame) -> str:
    """Paper-style Markdown: mask AP then box AP, one section per dataset/architecture/protocol configuration."""
    lines = []
    for config, group in table.groupby(CONFIG_COLUMNS, sort=True):
        dataset, arch, backbone, weights, protocol = config
        lines += [f"## {dataset}: {arch}, {backbone} backbone, {weights} weights, {protocol} splits", ""]
        sections = [("mask_AP", "Mask AP"), ("box_AP", "Box AP")]
        if group["cityscapes_AP"].notna().any():
            sections.append(("cityscapes_AP", "Cityscapes AP (the official evaluator, cityscapesscripts)"))
        for metric, name in sections:
            lines += [f"{name} on the val set (%), by percentage of labelled training images; "
                      "mean ± std over folds where there are several, – where no run exists.", ""]
            lines += _wide_table(group, metric) + [""]
        lines += _published_table(dataset, arch, backbone, sorted(group["label_percent"].unique()))
    return "\n".join(lines)


def markdown_to_html(text: str) -> str:
    """A self-contained HTML page of ``render_markdown``'s output (Python-Markdown with its tables extension).

    The text is escaped first: a dataset or published entry's name is shown as written, never read as HTML.
    """
    body = markdown.markdown(html.escape(text, quote=False), extensions=["tables"], output_format="html")
    style = ("body{font-family:sans-serif;margin:1em}table{border-collapse:collapse;margin-bottom:1.5em}"
             "th,td{border:1px solid #bbb;padding:4px 10px}")
    return f"<!doctype html><html><head><meta charset=\"utf-8\"><style>{style}</style></head><body>{body}</body></html>\n"


def write_table(metric_files: Iterable[str | os.PathLike], csv_path: str | os.PathLike,
                markdown_path: str | os.PathLike, html_path: str | os.PathLike | None = None) -> pd.DataFrame:
    """Collect metrics and write the tidy CSV, the Markdown summary and, if asked, it as HTML (atomically)."""
    table = collect_metrics(metric_files)
    csv_text = render_csv(table)
    markdown_text = render_markdown(table)
    write_text(csv_path, csv_text)
    write_text(markdown_path, markdown_text)
    if html_path:
        write_text(html_path, markdown_to_html(markdown_text))
    return table


def _save_png(figure: Figure, png_path: str | os.PathLike) -> None:
    """Write the figure as a 150 dpi PNG atomically, without version metadata."""
    with atomic_path(png_path, suffix=".png") as tmp:
        figure.savefig(tmp, format="png", dpi=150, metadata=PNG_METADATA)


def _plot_network(axes, table: pd.DataFrame, config: pd.Series) -> None:
    """One panel of ``plot_ap_vs_labels``: the rows of one dataset/network configuration."""
    series = [(method, model) for method in METHOD_ORDER
              for model in (["ema_teacher", "student"] if METHODS[method].distills else ["student"])]
    plotted = []
    for method, model in series:
        rows = table[(table["method"] == method) & (table["model"] == model)].dropna(subset=["mask_AP"])
        if rows.empty:
            continue
        stats = rows.groupby("label_percent")["mask_AP"].agg(["mean", "min", "max", "count"])
        dashed = METHODS[method].distills and model == "student"
        label = f"{METHOD_NAMES[method]} ({MODEL_NAMES[model]})" if METHODS[method].distills else METHOD_NAMES[method]
        color = METHOD_COLORS[method]
        axes.plot(stats.index, stats["mean"], color=color, linestyle="--" if dashed else "-",
                  marker="o", markersize=4, label=label)
        if stats["count"].max() > 1:
            axes.fill_between(stats.index, stats["min"], stats["max"], color=color, alpha=0.12, linewidth=0)
        plotted.append(stats.index)
    if not plotted:
        raise ValueError(f"no mask AP to plot for {config['arch']} / {config['backbone']}")
    published = published_for(config["dataset"])
    published = published[published["label_percent"].isin(set(np.concatenate(plotted)))
                          & (published["metric"] == "coco_mask_AP") & (published["arch"] == config["arch"])
                          & (published["backbone"] == config["backbone"])]  # the same network and metric only
    for index, (entry, rows) in enumerate(published.groupby("entry", sort=False)):
        axes.plot(rows["label_percent"], rows["AP"], color="black", alpha=0.6, linestyle=":",
                  marker="osD^v<>"[index % 7], markerfacecolor="none", markersize=5, label=f"published: {entry}")
    percents = sorted(set(np.concatenate(plotted)))
    axes.set_xscale("log")
    axes.set_xlim(percents[0] / 1.5, percents[-1] * 1.5)
    axes.set_xticks(percents, [f"{format_percent(p)} %" for p in percents])
    axes.xaxis.set_minor_locator(NullLocator())
    axes.set_xlabel("labelled training images")
    axes.set_ylabel("mask AP (%)")
    axes.set_title(f"{config['arch']}, {config['backbone']} backbone", fontsize="medium")
    axes.grid(True, alpha=0.3)
    axes.legend(fontsize="small")


def plot_ap_vs_labels(table: pd.DataFrame, png_path: str | os.PathLike, title: str) -> None:
    """Mask AP vs label percentage (log x), one panel per network (dataset/arch/backbone/weights configuration):
    one colour per method, EMA teacher solid, student dashed, min-max band; published COCO mask AP of the same
    dataset and network as hollow black markers."""
    if table.empty:
        raise ValueError("table has no mask AP to plot")
    configs = table[CONFIG_COLUMNS].drop_duplicates().sort_values(CONFIG_COLUMNS).reset_index(drop=True)
    figure = Figure(figsize=(6.4 * len(configs), 4.4), layout="constrained")
    panels = figure.subplots(1, len(configs), squeeze=False)[0]
    for axes, (_, config) in zip(panels, configs.iterrows()):
        rows = table[(table[CONFIG_COLUMNS] == config[CONFIG_COLUMNS]).all(axis=1)]
        _plot_network(axes, rows, config)
    figure.suptitle(title)
    _save_png(figure, png_path)


def read_training_log(path: str | os.PathLike) -> pd.DataFrame:
    """A JSON-lines training log as a frame sorted by step (last entry wins for a repeated step), missing as NaN."""
    path = Path(path)
    records = []
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as error:
                raise ValueError(f"training log {path}, line {number} is not valid JSON: {error}") from None
    if not records:
        raise ValueError(f"training log {path} has no entries")
    log = pd.DataFrame.from_records(records)
    missing = [key for key in ["step", "phase"] if key not in log.columns]
    if missing:
        raise ValueError(f"training log {path} lacks key(s): {', '.join(missing)}")
    log = log.reindex(columns=["step", "phase"] + CURVE_COLUMNS)
    log = log.sort_values("step", kind="stable").drop_duplicates("step", keep="last").reset_index(drop=True)
    for column in CURVE_COLUMNS:
        log[column] = pd.to_numeric(log[column], errors="coerce")
    return log


def distillation_starts(log: pd.DataFrame) -> list:
    """Steps at which the phase changes to 'distillation' (a log that starts in distillation has none)."""
    phase = log["phase"]
    switch = (phase == "distillation") & (phase.shift() != "distillation")
    switch.iloc[0] = False
    return log.loc[switch, "step"].tolist()


def plot_training_curves(logs: Mapping[str, str | os.PathLike], png_path: str | os.PathLike, title: str) -> None:
    """Panels of loss terms, pseudo-labels per image, their quality and learning rate vs step; one colour per run."""
    if not logs:
        raise ValueError("no training logs given")
    runs = []
    for index, (label, path) in enumerate(logs.items()):
        log = read_training_log(path)
        runs.append((label, log, f"C{index % 10}", distillation_starts(log)))
    columns = math.ceil((len(CURVE_PANELS) + 1) / 2)  # one cell for the legend
    figure = Figure(figsize=(4.3 * columns, 7.5), layout="constrained")
    grid = figure.subplots(2, columns, squeeze=False).ravel()
    styled = {}  # column -> (line style, legend name), for the columns that share a panel
    for axes, (name, panel, limits) in zip(grid, CURVE_PANELS):
        shown = False
        for style, column in zip(CURVE_STYLES, panel):
            for _, log, color, _ in runs:
                values = log[column]
                if values.isna().all():
                    continue
                if column != "lr":
                    values = values.rolling(SMOOTHING_WINDOW, min_periods=1, center=True).mean()
                axes.plot(log["step"], values, color=color, linewidth=1.2, **style)
                shown = True
                if len(panel) > 1:
                    styled[column] = (style, CURVE_LABELS[column])
        for _, _, color, starts in runs:
            for step in starts:
                axes.axvline(step, color=color, linestyle=":", linewidth=1.2)
        if not shown:
            axes.text(0.5, 0.5, f"no {name} logged", transform=axes.transAxes, ha="center", va="center", color="gray")
            axes.set_xticks([])
            axes.set_yticks([])
        elif limits:
            axes.set_ylim(*limits)
        axes.set_title(name)
        axes.set_xlabel("step")
        axes.grid(True, alpha=0.3)
    legend_axes = grid[len(CURVE_PANELS)]
    for axes in grid[len(CURVE_PANELS):]:
        axes.axis("off")
    handles = [Line2D([], [], color=color, linewidth=1.5, label=label) for label, _, color, _ in runs]
    if any(starts for _, _, _, starts in runs):
        handles.append(Line2D([], [], color="black", linestyle=":", linewidth=1.2, label="switch to distillation"))
    handles += [Line2D([], [], color="black", linewidth=1.2, label=f"pseudo-label {label}", **style)
                for style, label in styled.values()]
    smoothing = f"losses and pseudo-labels smoothed:\ncentred moving average over {SMOOTHING_WINDOW} log entries"
    legend_axes.legend(handles=handles, loc="center", frameon=False, title=smoothing)
    figure.suptitle(title)
    _save_png(figure, png_path)
