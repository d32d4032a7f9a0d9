# COCO mask and box AP on the val set, for the student and (distillation methods) the EMA teacher;
# on Cityscapes also the official evaluator's AP, the metric of the published numbers.


rule evaluate:
    input:
        checkpoint=f"{RUN_DIR}/model_final.pt",
        record=f"{RUN_DIR}/run.json",
        annotations=lambda wildcards: dataset_paths(plan(wildcards))["val_annotations"],
        images=lambda wildcards: dataset_paths(plan(wildcards))["val_images"],
        check=f"{CHECK_DIR}/val.json",
        cityscapes_ground_truth=lambda wildcards: official_ground_truth(plan(wildcards)) or [],
    output:
        predictions=f"{EVAL_DIR}/{{model}}_predictions.json",
        metrics=metrics(f"{EVAL_DIR}/{{model}}.json"),
    params:
        config=config_args,
        config_params=config_params("model", "evaluate", "splits.protocol"),
        files=file_options("cityscapes_ground_truth"),
    log:
        f"{LOG_DIR}/evaluate/{{network}}/{{method}}_{{percent}}pct_fold{{fold}}_{{model}}.log",
    threads: threads_of("evaluate")
    resources:
        **job_resources("evaluate"),
    shell:
        "gdis evaluate --config {params.config} --checkpoint {input.checkpoint} --run-record {input.record} "
        "--model {wildcards.model} --annotations {input.annotations} --images {input.images} "
        "--dataset-check {input.check}{params.files} --predictions {output.predictions} --metrics {output.metrics} 2> {log}"
