# Paper datasets, assembled in data/<dataset>: COCO 2017 (a local copy linked, or the official archives
# downloaded, verified and unpacked) and Cityscapes (official archives placed by hand, fine instances
# converted to COCO). Downloads resume from data/<dataset>/downloads/*.part, which survive a killed job.


rule prepare_coco2017:
    output:
        train_images=directory(f"{DATA_DIR}/train2017"),
        val_images=directory(f"{DATA_DIR}/val2017"),
        train_annotations=f"{DATA_DIR}/annotations/instances_train2017.json",
        val_annotations=f"{DATA_DIR}/annotations/instances_val2017.json",
    params:
        config=config_args,
        config_params=config_params("dataset.coco2017"),
        out_dir=dataset_dir,
    log:
        f"{LOG_DIR}/prepare_coco2017.log",
    wildcard_constraints:
        dataset=datasets_of_source("coco2017"),
    resources:
        **job_resources("prepare"),
    shell:
        "gdis prepare-dataset --config {params.config} --out-dir {params.out_dir} --no-progress 2> {log}"


rule prepare_coco_unlabeled2017:
    output:
        images=directory(f"{DATA_DIR}/unlabeled2017"),
        image_info=f"{DATA_DIR}/annotations/image_info_unlabeled2017.json",
    params:
        config=config_args,
        config_params=config_params("dataset.coco2017"),
        out_dir=dataset_dir,
    log:
        f"{LOG_DIR}/prepare_coco_unlabeled2017.log",
    wildcard_constraints:
        dataset=datasets_of_source("coco2017"),
    resources:
        **job_resources("prepare"),
    shell:
        "gdis prepare-dataset --config {params.config} --out-dir {params.out_dir} --coco-unlabeled2017 --no-progress 2> {log}"


rule prepare_cityscapes:
    output:
        train_images=directory(f"{DATA_DIR}/leftImg8bit/train"),
        val_images=directory(f"{DATA_DIR}/leftImg8bit/val"),
        train_annotations=f"{DATA_DIR}/annotations/instances_train.json",
        val_annotations=f"{DATA_DIR}/annotations/instances_val.json",
    params:
        config=config_args,
        config_params=config_params("dataset.cityscapes"),
        out_dir=dataset_dir,
    log:
        f"{LOG_DIR}/prepare_cityscapes.log",
    wildcard_constraints:
        dataset=datasets_of_source("cityscapes"),
    resources:
        **job_resources("prepare"),
    shell:
        "gdis prepare-dataset --config {params.config} --out-dir {params.out_dir} --no-progress 2> {log}"
