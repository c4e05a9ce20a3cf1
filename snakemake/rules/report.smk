# One self-contained HTML page for the run. After a failed run (--keep-going) the Snakefile's
# onerror handler runs the same command, so failed slides are listed too.


rule report:
    input:
        sheet=SHEET,
        exports=all_export_files(),
        metrics=all_metrics(),
        model=MODEL,
        training=training_outputs(),
    output:
        f"{RESULTS}/report.html",
    log:
        f"{LOGS}/report/_cohort.log",
    benchmark:
        f"{BENCH}/report/_cohort.tsv"
    params:
        cli=WSI_LPD,
        results=output_dir,
        config=CONFIG_COPY,
        settings=config["report"],
    conda:
        CONDA_ENV
    threads: THREADS["report"]
    shell:
        "{params.cli} report --results {params.results:q} --samples {input.sheet:q}"
        " --model {input.model:q} --out {output:q} --config {params.config:q} > {log:q} 2>&1"
