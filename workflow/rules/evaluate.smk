# COCO mask and box AP on the val set, for the student and (distillation methods) the EMA teacher.


rule evaluate:
    input:
        checkpoint=f"{RUN_DIR}/model_final.pt",
        record=f"{RUN_DIR}/run.json",
        annotations=DATA["val_annotations"],
        images=DATA["val_images"],
        check=f"{CHECK_DIR}/val.json",
    output:
        predictions=f"{EVAL_DIR}/{{model}}_predictions.json",
        metrics=metrics(f"{EVAL_DIR}/{{model}}.json"),
    params:
        config=CONFIG_ARGS,
        config_params=config_params("model", "evaluate", "splits.protocol"),
    log:
        f"{LOG_DIR}/evaluate/{NETWORK}/{{method}}_{{percent}}pct_fold{{fold}}_{{model}}.log",
    threads: config["evaluate"]["threads"]
    conda:
        SOFTWARE_ENV
    resources:
        **resources_of("evaluate"),
    shell:
        "gdis evaluate --config {params.config} --checkpoint {input.checkpoint} --model {wildcards.model} "
        "--predictions {output.predictions} --metrics {output.metrics} --dataset-check {input.check} 2> {log}"
