# One patch store (pixels + multi-hot labels) from every training slide's tiles and annotations.

if not CHECKPOINT:

    rule patches:
        input:
            tiles=train_tiles(),
            annotations=train_annotations(),
            truth=train_truths(),
        output:
            # the store's root metadata stands for the store (no Snakemake file inside it)
            store=f"{RESULTS}/patches/train.zarr/zarr.json",
        log:
            f"{LOGS}/patches/_cohort.log",
        benchmark:
            f"{BENCH}/patches/_cohort.tsv"
        params:
            cli=WSI_LPD,
            tiles=repeated_flag("--tiles", train_tiles()),
            annotations=repeated_flag("--annotations", train_annotations()),
            truth=repeated_flag("--truth", train_truths()),
            out=output_store,
            config=CONFIG_COPY,
            settings={"patches": config["patches"], "classes": config["classes"]},
        conda:
            CONDA_ENV
        threads: THREADS["patches"]
        shell:
            "{params.cli} patches {params.tiles} {params.annotations} {params.truth}"
            " --out {params.out:q} --config {params.config:q} > {log:q} 2>&1"
