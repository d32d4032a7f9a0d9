"""The ``gdis`` command line: one program, one subcommand per pipeline stage."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from gdis import __version__
from gdis.distill import METHODS

log = logging.getLogger("gdis")


def _add_config(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", nargs="+", required=True, metavar="YAML",
                        help="config file(s), merged in order (later ones win), validated against the schema")


def _percent(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0 < value <= 100:
        raise argparse.ArgumentTypeError(f"label percentage must be in (0, 100], got {text}")
    return value


def _threads(config: dict, section: str) -> None:
    import torch

    torch.set_num_threads(config[section]["threads"])


def cmd_check_config(args) -> None:
    import yaml

    from gdis.config import load_config

    print(yaml.safe_dump(load_config(args.config), sort_keys=False), end="")


def _dataset_check(path: str | None) -> dict | None:
    from gdis.io import read_json

    return read_json(path, "dataset check report") if path else None


def cmd_pretrain(args) -> None:
    from gdis.config import load_config
    from gdis.pretrain import pretrain_backbone

    pretrain_backbone(load_config(args.config), Path(args.out), Path(args.record))


def cmd_check_dataset(args) -> None:
    from gdis.check_dataset import check_dataset_files

    check_dataset_files(args.annotations, args.images, args.on_bad_input, args.report)


def cmd_synthesize(args) -> None:
    from gdis.config import load_config
    from gdis.families import synthesize_configured

    synthesize_configured(load_config(args.config)["dataset"], args.out_dir)


def cmd_prepare_dataset(args) -> None:
    from gdis.config import load_config
    from gdis.download import prepare_dataset

    prepare_dataset(load_config(args.config)["dataset"], args.out_dir, args.coco_unlabeled2017, not args.no_progress)


def cmd_split(args) -> None:
    from gdis.config import load_config
    from gdis.splits import write_configured_split

    write_configured_split(load_config(args.config)["splits"], args.annotations, args.images, args.out_dir,
                           args.label_percent, args.fold, _dataset_check(args.dataset_check), args.label_list,
                           args.extra_unlabeled_info, args.extra_unlabeled_images)


def cmd_train(args) -> None:
    from gdis.builder import RunFiles
    from gdis.config import load_config
    from gdis.trainer import train_run

    files = RunFiles(labeled=args.labeled, unlabeled=args.unlabeled, images=args.images,
                     hidden_annotations=args.hidden_annotations, teacher=args.teacher,
                     burn_in_checkpoint=args.burn_in_checkpoint, backbone_weights=args.backbone_weights,
                     val_annotations=args.val_annotations, val_images=args.val_images, val_check=args.val_check)
    train_run(load_config(args.config), args.method, files, args.out_dir, args.manifest,
              {"label_percent": args.label_percent, "fold": args.fold})


def cmd_evaluate(args) -> None:
    from gdis.config import load_config
    from gdis.evaluate import evaluate_run
    from gdis.visualize import RunGalleryFiles

    galleries = None
    gallery_args = ("val_gallery", "unlabeled_gallery", "labeled", "unlabeled", "train_annotations", "train_images")
    given = [name for name in gallery_args if getattr(args, name)]
    if given and len(given) < len(gallery_args):
        missing = ", ".join("--" + name.replace("_", "-") for name in gallery_args if name not in given)
        raise ValueError(f"the galleries need {missing} too")
    if given:
        files = RunGalleryFiles(labeled=args.labeled, unlabeled=args.unlabeled, train_annotations=args.train_annotations,
                                train_images=args.train_images, val_annotations=args.annotations,
                                val_images=args.images)
        galleries = (files, args.val_gallery, args.unlabeled_gallery)
    evaluate_run(load_config(args.config), args.checkpoint, args.run_record, args.annotations, args.images,
                 args.predictions_dir, args.metrics, _dataset_check(args.dataset_check), args.cityscapes_ground_truth,
                 galleries)


def cmd_table(args) -> None:
    from gdis.report import write_table

    write_table(args.metrics, args.csv, args.markdown, args.html)
    log.info("wrote %s and %s", args.csv, args.markdown)


def cmd_plot(args) -> None:
    import pandas as pd

    from gdis.report import plot_ap_vs_labels

    plot_ap_vs_labels(pd.read_csv(args.table), args.out, args.title)


def cmd_curves(args) -> None:
    from gdis.report import plot_training_curves

    logs = {}
    for item in args.log:
        label, sep, path = item.rpartition("=")
        if not sep:
            raise ValueError(f"--log expects LABEL=PATH, got {item!r}")
        logs[label] = Path(path)
    if not (args.out or args.csv or args.tensorboard):
        raise ValueError("nothing to write: give --out, --csv or --tensorboard")
    if args.out:
        plot_training_curves(logs, args.out, args.title)
    if args.csv or args.tensorboard:
        from gdis.training_curves import write_curve_table, write_tensorboard

        if args.csv:
            write_curve_table(logs, args.csv)
        if args.tensorboard:
            write_tensorboard(logs, args.tensorboard)


def cmd_gallery(args) -> None:
    from gdis.config import load_config
    from gdis.visualize import RunGalleryFiles, write_run_galleries

    config = load_config(args.config)
    _threads(config, "figures")
    files = RunGalleryFiles(labeled=args.labeled, unlabeled=args.unlabeled, train_annotations=args.train_annotations,
                            train_images=args.train_images, val_annotations=args.val_annotations,
                            val_images=args.val_images)
    write_run_galleries(config, args.checkpoint, files, args.val_out, args.unlabeled_out)
    log.info("wrote %s and %s", args.val_out, args.unlabeled_out)


def cmd_visualize(args) -> None:
    from gdis.config import load_config
    from gdis.visualize import visualize_images

    config = load_config(args.config)
    _threads(config, "figures")
    visualize_images(config, args.checkpoint, args.model, args.images, args.out, args.annotations)
    log.info("wrote %s", args.out)


def cmd_dvc(args) -> None:
    from gdis import dvc

    for tool in ("snakemake", "dvc"):  # they print through their own handlers: not a second time through ours
        logging.getLogger(tool).propagate = False
    if args.action == "yaml":
        up_to_date = dvc.write_dvc_yaml(args.configfile, args.out, check=args.check)
        if args.check and not up_to_date:
            raise RuntimeError(f"{args.out} differs from the workflow: regenerate it with `gdis dvc yaml`")
        log.info("%s %s", args.out, "is up to date" if up_to_date else "written")
    elif args.action == "plots-template":
        dvc.write_plots_template(args.out)
        log.info("wrote %s", args.out)
    elif args.action == "touch":
        dvc.touch_after_pull(args.configfile)
        log.info("dvc status is clean; Snakemake's outputs are marked up to date")
    else:
        staged = dvc.commit_after_snakemake(args.configfile)
        log.info("dvc.lock records the Snakemake outputs; staged in git: %s", " ".join(staged))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gdis", description="Semi-supervised instance segmentation by Guided Distillation.")
    parser.add_argument("--version", action="version", version=f"gdis {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    sub = commands.add_parser("check-config", help="validate config files and print the merged config with defaults")
    _add_config(sub)
    sub.set_defaults(func=cmd_check_config)

    sub = commands.add_parser("pretrain", help="pre-train the tiny backbone on generated pretext images")
    _add_config(sub)
    sub.add_argument("--out", required=True, help="backbone weights file to write (what model.backbone_weights names)")
    sub.add_argument("--record", required=True,
                     help="JSON record to write: task, steps, pretext loss and accuracy, seconds")
    sub.set_defaults(func=cmd_pretrain)

    sub = commands.add_parser("check-dataset", help="report unusable images and annotations of a COCO-format dataset")
    sub.add_argument("--annotations", required=True, help="a COCO annotation file")
    sub.add_argument("--images", required=True, help="the folder holding its images")
    sub.add_argument("--on-bad-input", choices=["fail", "skip"], default="fail",
                     help="fail: exit 1 listing every problem; skip: record them for leaving out (dataset.on_bad_input)")
    sub.add_argument("--report", help="JSON report to write: every finding, counts, the items to leave out")
    sub.set_defaults(func=cmd_check_dataset)

    sub = commands.add_parser("synthesize", help="generate the built-in synthetic dataset (COCO format)")
    _add_config(sub)
    sub.add_argument("--out-dir", required=True, help="dataset folder to create (replaced atomically)")
    sub.set_defaults(func=cmd_synthesize)

    sub = commands.add_parser("prepare-dataset", help="link or download COCO 2017 or ADE20K, or unpack Cityscapes; convert to COCO")
    _add_config(sub)
    sub.add_argument("--out-dir", required=True, help="the dataset folder, data/<dataset.name>")
    sub.add_argument("--coco-unlabeled2017", action="store_true",
                     help="COCO 2017's extra unlabelled images (unlabeled2017) instead of train and val")
    sub.add_argument("--no-progress", action="store_true", help="no download progress bar")
    sub.set_defaults(func=cmd_prepare_dataset)

    sub = commands.add_parser(
        "split", help="draw a label split of the training annotations (protocol: gdis, stac or list)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Draw the labelled images of one split under the protocol set by splits.protocol:\n\n"
                    "  gdis  seeded with (splits.seed, fold), independent of file order; round(p/100*N) images;\n"
                    "        nested: the 1 % images of a fold are among its 5 % ones.\n"
                    "  stac  the STAC / mmdetection split_coco files, image for image: legacy NumPy RandomState\n"
                    "        seeded with the fold, int(p/100*N) draws with replacement over the images in file\n"
                    "        order (so fewer distinct images); the field's split '{fold}@{percent}'.\n"
                    "  list  the images named in splits.list_file ({percent} and {fold} filled in): one\n"
                    "        image id or file name per line, e.g. fixed Cityscapes lists.\n\n"
                    "Writes labeled.json (COCO, with annotations), unlabeled.json (labels removed) and\n"
                    "manifest.json (protocol, split name, source SHA-256, the labelled image ids).")
    _add_config(sub)
    sub.add_argument("--annotations", required=True, help="the training set's COCO annotations")
    sub.add_argument("--images", required=True, help="the training images folder (file names are relative to it)")
    sub.add_argument("--label-percent", type=_percent, required=True, help="percentage of labelled images, e.g. 0.4")
    sub.add_argument("--fold", type=int, required=True, help="fold number (seeds the draw)")
    sub.add_argument("--out-dir", required=True, help="writes labeled.json, unlabeled.json and manifest.json here")
    sub.add_argument("--dataset-check", help="report of 'gdis check-dataset' on the training set: leaves out what it excludes")
    sub.add_argument("--label-list", help="protocol list: the file naming the labelled images (default: splits.list_file)")
    sub.add_argument("--extra-unlabeled-info", help="COCO image info of extra unlabelled images (COCO unlabeled2017)")
    sub.add_argument("--extra-unlabeled-images", help="the folder of those extra unlabelled images")
    sub.set_defaults(func=cmd_split)

    sub = commands.add_parser(
        "train", help=f"train one network: {', '.join(list(METHODS)[:-1])} or {list(METHODS)[-1]}",
        description="Train one network. Started by torchrun (one process per GPU), the processes share each "
                    "global batch. SIGTERM or SIGUSR1 saves a checkpoint and stops (under Slurm: requeues the job); "
                    "rerunning the same command resumes.")
    _add_config(sub)
    sub.add_argument("--method", required=True, choices=list(METHODS))
    sub.add_argument("--label-percent", type=_percent, required=True)
    sub.add_argument("--fold", type=int, required=True)
    sub.add_argument("--labeled", required=True, help="the split's labeled.json (written by 'gdis split')")
    sub.add_argument("--unlabeled", required=True, help="the split's unlabeled.json")
    sub.add_argument("--manifest", help="the split's manifest.json: recorded in run.json (skipped images, protocol)")
    sub.add_argument("--images", required=True, help="the training images folder")
    sub.add_argument("--hidden-annotations",
                     help="distillation: all training annotations, to measure the pseudo-labels against")
    sub.add_argument("--teacher", help="pre-trained teacher checkpoint (guided_distillation: the supervised model)")
    sub.add_argument("--burn-in-checkpoint",
                     help="standard_burnin: continue from this burn_in.pt of the supervised run of the same split "
                          "instead of repeating its first burn_in steps")
    sub.add_argument("--backbone-weights", help="a backbone weights file (default: model.backbone_weights)")
    sub.add_argument("--val-annotations", help="the val set's annotations, evaluated every train.eval_period steps")
    sub.add_argument("--val-images", help="the val images folder")
    sub.add_argument("--val-check", help="report of 'gdis check-dataset' on the val set: leaves out what it excludes")
    sub.add_argument("--out-dir", required=True, help="writes model_final.pt, train_log.jsonl and run.json here")
    sub.set_defaults(func=cmd_train)

    sub = commands.add_parser("evaluate", help="COCO mask and box AP of a finished run's networks on the val set")
    _add_config(sub)
    sub.add_argument("--checkpoint", required=True, help="model_final.pt written by 'gdis train'")
    sub.add_argument("--run-record", required=True, help="the run.json written beside it")
    sub.add_argument("--annotations", required=True, help="the val set's COCO annotations")
    sub.add_argument("--images", required=True, help="the val images folder")
    sub.add_argument("--predictions-dir", required=True,
                     help="folder to write each network's COCO results into (student.json, ema_teacher.json)")
    sub.add_argument("--metrics", required=True, help="metrics JSON to write: one table row per network")
    sub.add_argument("--dataset-check", help="report of 'gdis check-dataset' on the val set: leaves out what it excludes")
    sub.add_argument("--cityscapes-ground-truth",
                     help="Cityscapes: the gtFine/val folder; adds the official evaluator's AP and AP50")
    gallery = sub.add_argument_group("galleries", "draw the run's galleries too, from the same networks ('gdis gallery')")
    gallery.add_argument("--val-gallery", help="PNG to write: val images, ground truth and predictions")
    gallery.add_argument("--unlabeled-gallery", help="PNG to write: unlabelled images and pseudo-labels")
    gallery.add_argument("--labeled", help="the run's labeled.json (its images are left out of the sample)")
    gallery.add_argument("--unlabeled", help="the run's unlabeled.json (the sample of unlabelled images)")
    gallery.add_argument("--train-annotations", help="the training set's annotations (hidden ground truth)")
    gallery.add_argument("--train-images", help="the training images folder")
    sub.set_defaults(func=cmd_evaluate)

    sub = commands.add_parser("table", help="collect metrics files into a tidy CSV and a paper-style Markdown table")
    sub.add_argument("--metrics", nargs="+", required=True, help="metrics JSON files written by 'gdis evaluate'")
    sub.add_argument("--csv", required=True)
    sub.add_argument("--markdown", required=True)
    sub.add_argument("--html", help="also write the Markdown tables as an HTML page (for the workflow report)")
    sub.set_defaults(func=cmd_table)

    sub = commands.add_parser("plot", help="mask AP against label percentage, one line per method")
    sub.add_argument("--table", required=True, help="CSV written by 'gdis table'")
    sub.add_argument("--out", required=True, help="PNG to write")
    sub.add_argument("--title", default="Mask AP vs labelled fraction")
    sub.set_defaults(func=cmd_plot)

    sub = commands.add_parser("curves", help="training curves (losses, pseudo-labels per image, learning rate)")
    sub.add_argument("--log", nargs="+", required=True, metavar="LABEL=PATH", help="train_log.jsonl files with labels")
    sub.add_argument("--out", help="PNG to write")
    sub.add_argument("--title", default="Training curves")
    sub.add_argument("--csv", help="also write the curves as one CSV table (run, step, phase, values)")
    sub.add_argument("--tensorboard", help="also write TensorBoard event files, one folder per run, into this folder")
    sub.set_defaults(func=cmd_curves)

    sub = commands.add_parser("gallery", help="a training run's galleries: val predictions and unlabelled pseudo-labels")
    _add_config(sub)
    sub.add_argument("--checkpoint", required=True, help="model_final.pt written by 'gdis train'")
    sub.add_argument("--labeled", required=True, help="the run's labeled.json (its images are left out of the sample)")
    sub.add_argument("--unlabeled", required=True, help="the run's unlabeled.json (the sample of unlabelled images)")
    sub.add_argument("--train-annotations", required=True, help="the training set's annotations (hidden ground truth)")
    sub.add_argument("--train-images", required=True, help="the training images folder")
    sub.add_argument("--val-annotations", required=True, help="the val set's annotations")
    sub.add_argument("--val-images", required=True, help="the val images folder")
    sub.add_argument("--val-out", required=True, help="PNG to write: val images, ground truth and predictions")
    sub.add_argument("--unlabeled-out", required=True,
                     help="PNG to write: unlabelled images, hidden ground truth, kept and rejected pseudo-labels")
    sub.set_defaults(func=cmd_gallery)

    sub = commands.add_parser("visualize", help="draw a checkpoint's predictions and pseudo-labels on your own images")
    _add_config(sub)
    sub.add_argument("--checkpoint", required=True, help="model_final.pt written by 'gdis train'")
    sub.add_argument("--model", default="student", choices=["student", "ema_teacher"], help="which network to run")
    sub.add_argument("--images", nargs="+", required=True, metavar="PATH", help="image files or folders of images")
    sub.add_argument("--annotations", help="COCO file naming the classes; its annotations of these images are drawn too")
    sub.add_argument("--out", required=True, help="PNG to write: one row per image")
    sub.set_defaults(func=cmd_visualize)
    sub = commands.add_parser("dvc", help="DVC over the workflow: generate dvc.yaml, hand over between DVC and Snakemake")
    actions = sub.add_subparsers(dest="action", required=True, metavar="ACTION")
    configfile = argparse.ArgumentParser(add_help=False)
    configfile.add_argument("--configfile", nargs="*", default=[], metavar="YAML",
                            help="extra config files, as given to snakemake --configfile (config/config.yaml comes first)")
    action = actions.add_parser("yaml", parents=[configfile], help="write dvc.yaml: one stage per job Snakemake plans")
    action.add_argument("--out", default="dvc.yaml")
    action.add_argument("--check", action="store_true", help="only compare; fail when the file differs")
    action = actions.add_parser("plots-template", help="HTML template for an offline `dvc plots show` (Vega inlined)")
    action.add_argument("--out", default=".dvc/plots/offline.html")
    actions.add_parser("touch", parents=[configfile],
                       help="after `dvc pull`: when `dvc status` is clean, `snakemake --touch` so it has nothing to do")
    actions.add_parser("commit", parents=[configfile],
                       help="after Snakemake: when `snakemake -n` has nothing to do, `dvc commit` and stage dvc.lock")
    sub.set_defaults(func=cmd_dvc)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        args.func(args)
    except (ValueError, FileNotFoundError, OSError, RuntimeError) as error:
        if args.verbose:
            raise
        print(f"gdis {args.command}: error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
