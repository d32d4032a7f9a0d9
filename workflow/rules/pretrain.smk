# Pre-training of the tiny backbone on generated pretext images (pretrain section), the miniature of
# ImageNet pre-training: the file that network presets name as model.backbone_weights, e.g.
# results/pretrain/tiny.pt. It belongs to no dataset: the default plan's config files hold its settings.


rule pretrain:
    output:
        weights="results/pretrain/{backbone}.pt",
        record=metrics("results/pretrain/{backbone}.json"),
    params:
        config=" ".join(PLANS.files(DEFAULT_DATASET)),
        config_params={"pretrain": config["pretrain"]},
    log:
        "results/logs/pretrain/{backbone}.log",
    wildcard_constraints:
        backbone="tiny",  # the one backbone gdis pre-trains (gdis/pretrain.py)
    threads: config["pretrain"]["threads"]
    resources:
        **scheduler_resources(config["resources"]["light"]),
    shell:
        "gdis pretrain --config {params.config} --out {output.weights} --record {output.record} 2> {log}"
