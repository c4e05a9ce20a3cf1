# Scores of one slide's mosaic against its ground truth (slides with a `truth` in the sheet).


rule evaluate:
    input:
        mosaic=root_of(L.mosaic("{slide}")),
        truth=truth_file,
        settings=L.stage_config("evaluate"),
    output:
        metrics=L.metrics("{slide}"),
        table=L.metrics_table("{slide}"),
    log:
        L.log("evaluate", "{slide}"),
    benchmark:
        L.benchmark("evaluate", "{slide}")
    params:
        out=output_dir,
        mosaic=mosaic_store,
        fail=failure_record("evaluate"),
    conda:
        CONDA_ENV
    threads: THREADS["evaluate"]
    shell:
        "{params.fail} wsi-lpd evaluate --pred {params.mosaic:q} --truth {input.truth:q}"
        " --out {params.out:q} --config {input.settings:q} --workers {threads} > {log:q} 2>&1"
