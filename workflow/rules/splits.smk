# Seeded label splits of the training set: labelled and unlabelled COCO files plus a manifest.


rule split:
    input:
        DATA["train_annotations"],
    output:
        labeled=f"{SPLIT_DIR}/labeled.json",
        unlabeled=f"{SPLIT_DIR}/unlabeled.json",
        manifest=f"{SPLIT_DIR}/manifest.json",
    params:
        splits=config["splits"],
        out_dir=SPLIT_DIR,
    log:
        f"{LOG_DIR}/split/{{percent}}pct_fold{{fold}}.log",
    resources:
        **resources_of("light"),
    shell:
        "gdis split --config {CONFIG_ARGS} --label-percent {wildcards.percent} --fold {wildcards.fold} "
        "--out-dir {params.out_dir} 2> {log}"
