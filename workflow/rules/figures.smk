# Galleries of every run: val predictions and unlabelled pseudo-labels, under results/figures/.


rule gallery:
    input:
        checkpoint=f"{RUN_DIR}/model_final.pt",
        labeled=f"{SPLIT_DIR}/labeled.json",
        unlabeled=f"{SPLIT_DIR}/unlabeled.json",
        **DATA,
    output:
        val=report(
            f"{FIGURE_DIR}/val.png",
            caption="../report/gallery_val.rst",
            category="Galleries",
            subcategory="val images: predictions",
            labels={"method": "{method}", "labelled": "{percent} %", "fold": "{fold}"},
        ),
        unlabeled=report(
            f"{FIGURE_DIR}/unlabeled.png",
            caption="../report/gallery_unlabeled.rst",
            category="Galleries",
            subcategory="unlabelled images: pseudo-labels",
            labels={"method": "{method}", "labelled": "{percent} %", "fold": "{fold}"},
        ),
    params:
        config=CONFIG_ARGS,
        config_params=config_params("model", "figures", "train.pseudo_label"),
        split_dir=lambda wildcards, input: os.path.dirname(input.labeled),
    log:
        f"{LOG_DIR}/gallery/{NETWORK}/{{method}}_{{percent}}pct_fold{{fold}}.log",
    threads: config["figures"]["threads"]
    conda:
        SOFTWARE_ENV
    resources:
        **resources_of("light"),
    shell:
        "gdis gallery --config {params.config} --checkpoint {input.checkpoint} --split-dir {params.split_dir} "
        "--val-out {output.val} --unlabeled-out {output.unlabeled} 2> {log}"
