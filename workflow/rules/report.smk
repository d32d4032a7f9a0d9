# Tables and plots: results/tables/<dataset>.csv (tidy) and .md (paper style), AP-vs-labels and training curves.


rule table:
    input:
        metrics_files,
    output:
        csv=plot("results/tables/{dataset}.csv", x="label_percent", y="mask_AP", template="scatter"),
        markdown="results/tables/{dataset}.md",
        html=report("results/tables/{dataset}.html", caption="../report/table.rst", category="Tables"),
    log:
        f"{LOG_DIR}/table.log",
    resources:
        **job_resources("light"),
    shell:
        "gdis table --metrics {input} --csv {output.csv} --markdown {output.markdown} --html {output.html} 2> {log}"


rule plot:
    input:
        "results/tables/{dataset}.csv",
    output:
        plot(report("results/plots/{dataset}.png", caption="../report/ap_vs_labels.rst", category="Plots")),
    params:
        title=lambda wildcards: f"{wildcards.dataset}: mask AP vs labelled fraction",
    log:
        f"{LOG_DIR}/plot.log",
    wildcard_constraints:
        dataset=r"[A-Za-z0-9][A-Za-z0-9_-]*(?<!_training)",  # results/plots/<dataset>_training.png: training_curves
    resources:
        **job_resources("light"),
    shell:
        "gdis plot --table {input} --out {output} --title '{params.title}' 2> {log}"


rule training_curves:
    input:
        curve_logs,
    output:
        png=plot(report("results/plots/{dataset}_training.png", caption="../report/training_curves.rst", category="Plots")),
        csv=plot("results/plots/{dataset}_training.csv", x="step", y="loss", template="scatter"),
        tensorboard=directory("results/tensorboard/{dataset}"),
    params:
        logs=curve_log_args,
        title=lambda wildcards: f"{wildcards.dataset}: training curves",
    log:
        f"{LOG_DIR}/training_curves.log",
    resources:
        **job_resources("light"),
    shell:
        "gdis curves --log {params.logs} --out {output.png} --csv {output.csv} --tensorboard {output.tensorboard} "
        "--title '{params.title}' 2> {log}"
