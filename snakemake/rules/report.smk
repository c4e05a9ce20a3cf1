# One self-contained HTML page for the run. After a failed run (--keep-going) the Snakefile's
# onerror handler runs the same command, so failed slides are listed too.


rule report:
    input:
        sheet=SHEET.path,
        exports=all_export_files(),
        metrics=all_metrics(),
        model=MODEL,
        training=training_outputs(),
        settings=L.stage_config("report"),
    output:
        L.report,
    log:
        L.log("report", COHORT_KEY),
    benchmark:
        L.benchmark("report", COHORT_KEY)
    params:
        results=output_dir,
        fail=failure_record("report", COHORT_KEY),
    conda:
        CONDA_ENV
    threads: THREADS["report"]
    shell:
        "{params.fail} wsi-lpd report --results {params.results:q} --samples {input.sheet:q}"
        " --model {input.model:q} --out {output:q} --config {input.settings:q} > {log:q} 2>&1"
