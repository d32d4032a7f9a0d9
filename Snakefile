# gdis: semi-supervised instance segmentation by Guided Distillation.
# Table of contents: plans -> pre-training -> dataset -> checks -> splits -> training -> evaluation (and
# galleries) -> report.
# A target names its dataset (results/tables/coco.csv); `snakemake` alone runs the default one (the demo).
from snakemake.utils import min_version

min_version("9.0")


configfile: "config/config.yaml"


include: "workflow/rules/common.smk"
include: "workflow/rules/pretrain.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/datasets.smk"
include: "workflow/rules/checks.smk"
include: "workflow/rules/splits.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/report.smk"


rule all:
    input:
        report_outputs(DEFAULT_DATASET),
    default_target: True


onsuccess:
    write_report_after_run()
