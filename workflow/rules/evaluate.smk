# Evaluation of every run: COCO mask and box AP on the val set of its student and (distillation methods) its
# EMA teacher, on Cityscapes also the official evaluator's AP (the metric of the published numbers), and the
# run's galleries (val predictions, unlabelled pseudo-labels), from one load of its networks.


rule evaluate:
    input:
        checkpoint=f"{RUN_DIR}/model_final.pt",
        record=f"{RUN_DIR}/run.json",
        annotations=lambda wildcards: dataset_paths(plan(wildcards))["val_annotations"],
        images=lambda wildcards: dataset_paths(plan(wildcards))["val_images"],
        check=f"{CHECK_DIR}/val.json",
        cityscapes_ground_truth=lambda wildcards: official_ground_truth(plan(wildcards)) or [],
        labeled=f"{SPLIT_DIR}/labeled.json",
        unlabeled=f"{SPLIT_DIR}/unlabeled.json",
        train_annotations=lambda wildcards: dataset_paths(plan(wildcards))["train_annotations"],
        train_images=lambda wildcards: dataset_paths(plan(wildcards))["train_images"],
    output:
        metrics=metrics(f"{EVAL_DIR}/metrics.json"),
        predictions=directory(f"{EVAL_DIR}/predictions"),
        val_gallery=report(
            f"{FIGURE_DIR}/val.png",
            caption="../report/gallery_val.rst",
            category="Galleries",
            subcategory="val images: predictions",
            labels={"network": "{network}", "method": "{method}", "labelled": "{percent} %", "fold": "{fold}"},
        ),
        unlabeled_gallery=report(
            f"{FIGURE_DIR}/unlabeled.png",
            caption="../report/gallery_unlabeled.rst",
            category="Galleries",
            subcategory="unlabelled images: pseudo-labels",
            labels={"network": "{network}", "method": "{method}", "labelled": "{percent} %", "fold": "{fold}"},
        ),
    params:
        config=config_args,
        config_params=config_params("model", "evaluate", "splits.protocol", "figures", "train.pseudo_label"),
        files=file_options("cityscapes_ground_truth"),
    log:
        f"{LOG_DIR}/evaluate/{{network}}/{{method}}_{{percent}}pct_fold{{fold}}.log",
    threads: threads_of("evaluate")
    resources:
        **job_resources("evaluate"),
    shell:
        "gdis evaluate --config {params.config} --checkpoint {input.checkpoint} --run-record {input.record} "
        "--annotations {input.annotations} --images {input.images} --dataset-check {input.check}{params.files} "
        "--predictions-dir {output.predictions} --metrics {output.metrics} --val-gallery {output.val_gallery} "
        "--unlabeled-gallery {output.unlabeled_gallery} --labeled {input.labeled} --unlabeled {input.unlabeled} "
        "--train-annotations {input.train_annotations} --train-images {input.train_images} 2> {log}"
