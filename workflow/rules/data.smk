# The built-in synthetic dataset (source: synthetic). COCO-format datasets on disk need no rule.


rule synthesize:
    output:
        train_images=directory(f"data/{DATASET}/train"),
        val_images=directory(f"data/{DATASET}/val"),
        train_annotations=f"data/{DATASET}/annotations/train.json",
        val_annotations=f"data/{DATASET}/annotations/val.json",
    params:
        synthetic=config["dataset"]["synthetic"],
        out_dir=f"data/{DATASET}",
    log:
        f"{LOG_DIR}/synthesize.log",
    resources:
        **resources_of("light"),
    shell:
        "gdis synthesize --config {CONFIG_ARGS} --out-dir {params.out_dir} 2> {log}"
