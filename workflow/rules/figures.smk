# Galleries of every run: val predictions and unlabelled pseudo-labels, under results/figures/.


rule gallery:
    input:
        checkpoint=f"{RUN_DIR}/model_final.pt",
        labeled=f"{SPLIT_DIR}/labeled.json",
        unlabeled=f"{SPLIT_DIR}/unlabeled.json",
        train_annotations=lambda wildcards: dataset_paths(plan(wildcards))["train_annotations"],
        train_images=lambda wildcards: dataset_paths(plan(wildcards))["train_images"],
        val_annotations=lambda wildcards: dataset_paths(plan(wildcards))["val_annotations"],
        val_images=lambda wildcards: dataset_paths(plan(wildcards))["val_images"],
    output:
        val=report(
            f"{FIGURE_DIR}/val.png",
            caption="../report/gallery_val.rst",
            category="Galleries",
            subcategory="val images: predictions",
            labels={"network": "{network}", "method": "{method}", "labelled": "{percent} %", "fold": "{fold}"},
        ),
        unlabeled=report(
            f"{FIGURE_DIR}/unlabeled.png",
            caption="../report/gallery_unlabeled.rst",
            category="Galleries",
            subcategory="unlabelled images: pseudo-labels",
            labels={"network": "{network}", "method": "{method}", "labelled": "{percent} %", "fold": "{fold}"},
        ),
    params:
        config=config_args,
        config_params=config_params("model", "figures", "train.pseudo_label"),
    log:
        f"{LOG_DIR}/gallery/{{network}}/{{method}}_{{percent}}pct_fold{{fold}}.log",
    threads: threads_of("figures")
    resources:
        **job_resources("light"),
    shell:
        "gdis gallery --config {params.config} --checkpoint {input.checkpoint} --labeled {input.labeled} "
        "--unlabeled {input.unlabeled} --train-annotations {input.train_annotations} "
        "--train-images {input.train_images} --val-annotations {input.val_annotations} "
        "--val-images {input.val_images} --val-out {output.val} --unlabeled-out {output.unlabeled} 2> {log}"
