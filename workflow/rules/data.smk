# The built-in synthetic dataset (source: synthetic). COCO-format datasets on disk need no rule.


rule synthesize:
    output:
        train_images=directory(f"data/{DATASET}/train"),
        val_images=directory(f"data/{DATASET}/val"),
        train_annotations=f"data/{DATASET}/annotations/train.json",
        val_annotations=f"data/{DATASET}/annotations/val.json",
    params:
        config=CONFIG_ARGS,
        config_params=config_params("dataset.source", "dataset.synthetic"),
        out_dir=lambda wildcards, output: os.path.dirname(os.path.dirname(output.train_annotations)),
    log:
        f"{LOG_DIR}/synthesize.log",
    conda:
        SOFTWARE_ENV
    resources:
        **resources_of("light"),
    shell:
        "gdis synthesize --config {params.config} --out-dir {params.out_dir} 2> {log}"
