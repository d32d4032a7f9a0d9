# Training: the supervised model (also the pre-trained teacher), then the two distillation methods.


rule train_supervised:
    input:
        unpack(train_inputs),
    output:
        checkpoint=f"{SUPERVISED_RUN_DIR}/model_final.pt",
        log=f"{SUPERVISED_RUN_DIR}/train_log.jsonl",
        record=f"{SUPERVISED_RUN_DIR}/run.json",
        **supervised_burn_in_output(),
    params:
        config=CONFIG_ARGS,
        config_params=config_params("model", "train"),
        out_dir=lambda wildcards, output: os.path.dirname(output.checkpoint),
        split_dir=lambda wildcards, input: os.path.dirname(input.labeled),
        launcher=TRAIN_LAUNCHER,
    log:
        f"{LOG_DIR}/train/{NETWORK}/{SUPERVISED}_{{percent}}pct_fold{{fold}}.log",
    priority: training_priority
    threads: config["train"]["threads"]
    conda:
        SOFTWARE_ENV
    resources:
        **resources_of("train"),
    shell:
        "{params.launcher} gdis train --config {params.config} --method supervised --label-percent {wildcards.percent} "
        "--fold {wildcards.fold} --split-dir {params.split_dir} --out-dir {params.out_dir} 2> {log}"


rule train_distillation:
    input:
        unpack(train_inputs),
    output:
        checkpoint=f"{RUN_DIR}/model_final.pt",
        log=f"{RUN_DIR}/train_log.jsonl",
        record=f"{RUN_DIR}/run.json",
    params:
        config=CONFIG_ARGS,
        config_params=config_params("model", "train"),
        out_dir=lambda wildcards, output: os.path.dirname(output.checkpoint),
        split_dir=lambda wildcards, input: os.path.dirname(input.labeled),
        start=start_options,
        launcher=TRAIN_LAUNCHER,
    log:
        f"{LOG_DIR}/train/{NETWORK}/{{method}}_{{percent}}pct_fold{{fold}}.log",
    wildcard_constraints:
        method="|".join(DISTILLATION_METHODS),
    priority: training_priority
    threads: config["train"]["threads"]
    conda:
        SOFTWARE_ENV
    resources:
        **resources_of("train"),
    shell:
        "{params.launcher} gdis train --config {params.config} --method {wildcards.method} --label-percent {wildcards.percent} "
        "--fold {wildcards.fold} --split-dir {params.split_dir} {params.start} --out-dir {params.out_dir} 2> {log}"
