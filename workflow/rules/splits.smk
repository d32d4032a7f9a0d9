# Seeded label splits of the training set: labelled and unlabelled COCO files plus a manifest.


rule split:
    input:
        unpack(split_inputs),
    output:
        labeled=f"{SPLIT_DIR}/labeled.json",
        unlabeled=f"{SPLIT_DIR}/unlabeled.json",
        manifest=f"{SPLIT_DIR}/manifest.json",
    params:
        config=config_args,
        config_params=config_params("splits.seed", "splits.protocol", "splits.unlabeled"),
        files=file_options("label_list", "extra_unlabeled_info", "extra_unlabeled_images"),
        out_dir=lambda wildcards, output: os.path.dirname(output.manifest),
    log:
        f"{LOG_DIR}/split/{{percent}}pct_fold{{fold}}.log",
    priority: training_priority  # a split is as urgent as the supervised run it feeds
    resources:
        **job_resources("light"),
    shell:
        "gdis split --config {params.config} --annotations {input.annotations} --images {input.images} "
        "--dataset-check {input.check}{params.files} --label-percent {wildcards.percent} --fold {wildcards.fold} "
        "--out-dir {params.out_dir} 2> {log}"
