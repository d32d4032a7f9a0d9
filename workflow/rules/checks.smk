# Dataset checks before anything trains: unusable images and annotations, by id and file.
# dataset.on_bad_input 'fail' stops here with the full list; 'skip' records what splits and evaluation leave out.


rule check_dataset:
    input:
        annotations=lambda wildcards: DATA[f"{wildcards.subset}_annotations"],
        images=lambda wildcards: DATA[f"{wildcards.subset}_images"],
    output:
        report=f"{CHECK_DIR}/{{subset}}.json",
    params:
        config=CONFIG_ARGS,
        config_params=config_params("dataset"),
    log:
        f"{LOG_DIR}/check_dataset/{{subset}}.log",
    wildcard_constraints:
        subset="train|val",
    conda:
        SOFTWARE_ENV
    resources:
        **resources_of("light"),
    shell:
        "gdis check-dataset --config {params.config} --subset {wildcards.subset} --report {output.report} 2> {log}"
