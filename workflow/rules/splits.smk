# Seeded label splits of the training set: labelled and unlabelled COCO files plus a manifest.


rule split:
    input:
        annotations=DATA["train_annotations"],
        extra_unlabeled=EXTRA_UNLABELED.get("image_info", []),
        label_list=split_list_file,
        check=f"{CHECK_DIR}/train.json",
    output:
        labeled=f"{SPLIT_DIR}/labeled.json",
        unlabeled=f"{SPLIT_DIR}/unlabeled.json",
        manifest=f"{SPLIT_DIR}/manifest.json",
    params:
        config=CONFIG_ARGS,
        config_params=config_params("splits.seed", "splits.protocol", "splits.list_file", "splits.unlabeled"),
        out_dir=lambda wildcards, output: os.path.dirname(output.manifest),
    log:
        f"{LOG_DIR}/split/{{percent}}pct_fold{{fold}}.log",
    priority: training_priority  # a split is as urgent as the supervised run it feeds
    conda:
        SOFTWARE_ENV
    resources:
        **resources_of("light"),
    shell:
        "gdis split --config {params.config} --label-percent {wildcards.percent} --fold {wildcards.fold} "
        "--dataset-check {input.check} --out-dir {params.out_dir} 2> {log}"
