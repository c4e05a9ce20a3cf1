# Scores of one slide's mosaic against its ground truth (slides with a `truth` in the sheet).


rule evaluate:
    input:
        mosaic=f"{RESULTS}/mosaics/{{slide}}.ome.zarr/zarr.json",
        truth=truth_file,
    output:
        metrics=f"{RESULTS}/evaluate/{{slide}}/metrics.json",
        table=f"{RESULTS}/evaluate/{{slide}}/metrics.md",
    log:
        f"{LOGS}/evaluate/{{slide}}.log",
    benchmark:
        f"{BENCH}/evaluate/{{slide}}.tsv"
    params:
        cli=WSI_LPD,
        out=output_dir,
        mosaic=mosaic_store,
        config=CONFIG_COPY,
        settings=config["evaluate"],
    conda:
        CONDA_ENV
    threads: THREADS["evaluate"]
    shell:
        "{params.cli} evaluate --pred {params.mosaic:q} --truth {input.truth:q} --out {params.out:q}"
        " --config {params.config:q} > {log:q} 2>&1"
