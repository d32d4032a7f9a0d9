# Dataset checks before anything trains: unusable images and annotations, by id and file.
# dataset.on_bad_input 'fail' stops here with the full list; 'skip' records what splits and evaluation leave out.


rule check_dataset:
    input:
        annotations=lambda wildcards: dataset_paths(plan(wildcards))[f"{wildcards.subset}_annotations"],
        images=lambda wildcards: dataset_paths(plan(wildcards))[f"{wildcards.subset}_images"],
    output:
        report=f"{CHECK_DIR}/{{subset}}.json",
    params:
        on_bad_input=config_value("dataset.on_bad_input"),
    log:
        f"{LOG_DIR}/check_dataset/{{subset}}.log",
    resources:
        **job_resources("light"),
    shell:
        "gdis check-dataset --annotations {input.annotations} --images {input.images} "
        "--on-bad-input {params.on_bad_input} --report {output.report} 2> {log}"
