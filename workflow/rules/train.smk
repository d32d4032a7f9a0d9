# Training: supervised (also the pre-trained teacher), standard burn-in, guided distillation.


rule train:
    input:
        unpack(train_inputs),
    output:
        checkpoint=f"{RUN_DIR}/model_final.pt",
        log=f"{RUN_DIR}/train_log.jsonl",
        record=f"{RUN_DIR}/run.json",
    params:
        config=CONFIG_ARGS,
        model=config["model"],
        train=config["train"],
        out_dir=lambda wildcards, output: os.path.dirname(output.checkpoint),
        split_dir=lambda wildcards, input: os.path.dirname(input.labeled),
        teacher=lambda wildcards, input: f"--teacher {input.teacher}" if "teacher" in input.keys() else "",
    log:
        f"{LOG_DIR}/train/{NETWORK}/{{method}}_{{percent}}pct_fold{{fold}}.log",
    threads: config["train"]["threads"]
    conda:
        SOFTWARE_ENV
    resources:
        **resources_of("train"),
    shell:
        "gdis train --config {params.config} --method {wildcards.method} --label-percent {wildcards.percent} "
        "--fold {wildcards.fold} --split-dir {params.split_dir} "
        "{params.teacher} --out-dir {params.out_dir} 2> {log}"
