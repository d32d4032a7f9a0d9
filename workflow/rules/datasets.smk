# Paper datasets: COCO 2017 (a local copy linked, or the official archives downloaded, verified
# and unpacked) and Cityscapes (official archives placed by hand, fine instances converted to COCO).
# Downloads resume from data/<name>/downloads/*.part, which survive a killed job.


if config["dataset"]["source"] in ("coco2017", "cityscapes"):

    rule prepare_dataset:
        output:
            train_images=directory(DATA["train_images"]),
            val_images=directory(DATA["val_images"]),
            train_annotations=DATA["train_annotations"],
            val_annotations=DATA["val_annotations"],
            extra_unlabeled=[directory(EXTRA_UNLABELED["images"]), EXTRA_UNLABELED["image_info"]]
            if EXTRA_UNLABELED
            else [],
        params:
            config=CONFIG_ARGS,
            config_params=config_params("dataset"),
        log:
            f"{LOG_DIR}/prepare_dataset.log",
        conda:
            SOFTWARE_ENV
        resources:
            **resources_of("prepare"),
        shell:
            "gdis prepare-dataset --config {params.config} 2> {log}"
