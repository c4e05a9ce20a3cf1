# One patch store (pixels + multi-hot labels) from every training slide's tiles and annotations.

if not CHECKPOINT:

    rule patches:
        input:
            tiles=train_tiles(),
            annotations=train_annotations(),
            truth=train_truths(),
            settings=L.stage_config("patches"),
        output:
            # the store's root metadata stands for the store (no Snakemake file inside it)
            store=root_of(L.patch_store),
        log:
            L.log("patches", COHORT_KEY),
        benchmark:
            L.benchmark("patches", COHORT_KEY)
        params:
            tiles=repeated_flag("--tiles", train_tiles()),
            annotations=repeated_flag("--annotations", train_annotations()),
            truth=repeated_flag("--truth", train_truths()),
            out=output_store,
            fail=failure_record("patches", COHORT_KEY),
        conda:
            CONDA_ENV
        threads: THREADS["patches"]
        shell:
            "{params.fail} wsi-lpd patches {params.tiles} {params.annotations} {params.truth}"
            " --out {params.out:q} --config {input.settings:q} > {log:q} 2>&1"
