# Training: the supervised model (also the pre-trained teacher), then the two distillation methods.
# Each network of a dataset (its `networks`) is trained on the same splits.


rule train_supervised:
    input:
        unpack(train_inputs),
    output:
        checkpoint=f"{SUPERVISED_RUN_DIR}/model_final.pt",
        burn_in=f"{SUPERVISED_RUN_DIR}/burn_in.pt",  # the state at train.burn_in, where standard_burnin continues
        log=f"{SUPERVISED_RUN_DIR}/train_log.jsonl",
        record=f"{SUPERVISED_RUN_DIR}/run.json",
    params:
        config=config_args,
        config_params=config_params("model", "train"),
        files=file_options("backbone_weights", "val_annotations", "val_images", "val_check"),
        out_dir=lambda wildcards, output: os.path.dirname(output.checkpoint),
        launcher=train_launcher,
    log:
        f"{LOG_DIR}/train/{{network}}/{SUPERVISED}_{{percent}}pct_fold{{fold}}.log",
    priority: training_priority
    threads: threads_of("train")
    resources:
        **job_resources("train"),
    shell:
        "{params.launcher} gdis train --config {params.config} --method supervised --label-percent {wildcards.percent} "
        "--fold {wildcards.fold} --labeled {input.labeled} --unlabeled {input.unlabeled} --manifest {input.manifest} "
        "--images {input.images}{params.files} --out-dir {params.out_dir} 2> {log}"


rule train_distillation:
    input:
        unpack(train_inputs),
    output:
        checkpoint=f"{RUN_DIR}/model_final.pt",
        log=f"{RUN_DIR}/train_log.jsonl",
        record=f"{RUN_DIR}/run.json",
    params:
        config=config_args,
        config_params=config_params("model", "train"),
        files=file_options("backbone_weights", "hidden_annotations", "teacher", "burn_in_checkpoint", "val_annotations",
                           "val_images", "val_check"),
        out_dir=lambda wildcards, output: os.path.dirname(output.checkpoint),
        launcher=train_launcher,
    log:
        f"{LOG_DIR}/train/{{network}}/{{method}}_{{percent}}pct_fold{{fold}}.log",
    wildcard_constraints:
        method="|".join(name for name, method in METHODS.items() if method.distills),
    priority: training_priority
    threads: threads_of("train")
    resources:
        **job_resources("train"),
    shell:
        "{params.launcher} gdis train --config {params.config} --method {wildcards.method} "
        "--label-percent {wildcards.percent} --fold {wildcards.fold} --labeled {input.labeled} "
        "--unlabeled {input.unlabeled} --manifest {input.manifest} --images {input.images}{params.files} "
        "--out-dir {params.out_dir} 2> {log}"
