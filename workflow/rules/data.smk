# The built-in synthetic datasets (source: synthetic), generated into data/<dataset>.
# COCO-format datasets on disk (source: coco) need no rule.


rule synthesize:
    output:
        train_images=directory(f"{DATA_DIR}/train"),
        val_images=directory(f"{DATA_DIR}/val"),
        train_annotations=f"{DATA_DIR}/annotations/train.json",
        val_annotations=f"{DATA_DIR}/annotations/val.json",
    params:
        config=config_args,
        config_params=config_params("dataset.source", "dataset.synthetic"),
        out_dir=lambda wildcards, output: os.path.dirname(os.path.dirname(output.train_annotations)),
    log:
        f"{LOG_DIR}/synthesize.log",
    wildcard_constraints:
        dataset=datasets_of_source("synthetic"),
    resources:
        **job_resources("light"),
    shell:
        "gdis synthesize --config {params.config} --out-dir {params.out_dir} 2> {log}"
