# Tables and plots: results/tables/<dataset>.csv (tidy) and .md (paper style), AP-vs-labels and training curves.


rule table:
    input:
        metrics_files(),
    output:
        csv=plot(f"results/tables/{DATASET}.csv", x="label_percent", y="mask_AP", template="scatter"),
        markdown=f"results/tables/{DATASET}.md",
        html=report(f"results/tables/{DATASET}.html", caption="../report/table.rst", category="Tables"),
    log:
        f"{LOG_DIR}/table.log",
    conda:
        SOFTWARE_ENV
    resources:
        **resources_of("light"),
    shell:
        "gdis table --metrics {input} --csv {output.csv} --markdown {output.markdown} --html {output.html} 2> {log}"


rule plot:
    input:
        f"results/tables/{DATASET}.csv",
    output:
        plot(report(f"results/plots/{DATASET}.png", caption="../report/ap_vs_labels.rst", category="Plots")),
    params:
        title=f"{DATASET}: mask AP vs labelled fraction ({NETWORK})",
    log:
        f"{LOG_DIR}/plot.log",
    conda:
        SOFTWARE_ENV
    resources:
        **resources_of("light"),
    shell:
        "gdis plot --table {input} --out {output} --title '{params.title}' 2> {log}"


rule training_curves:
    input:
        list(train_logs().values()),
    output:
        png=plot(report(f"results/plots/{DATASET}_training.png", caption="../report/training_curves.rst", category="Plots")),
        csv=plot(f"results/plots/{DATASET}_training.csv", x="step", y="loss", template="scatter"),
        tensorboard=directory(f"results/tensorboard/{DATASET}"),
    params:
        logs=" ".join(f"'{label}={path}'" for label, path in train_logs().items()),
        title=f"{DATASET}: training curves ({NETWORK})",
    log:
        f"{LOG_DIR}/training_curves.log",
    conda:
        SOFTWARE_ENV
    resources:
        **resources_of("light"),
    shell:
        "gdis curves --log {params.logs} --out {output.png} --csv {output.csv} --tensorboard {output.tensorboard} "
        "--title '{params.title}' 2> {log}"
