# Train LPD on the patch store (skipped when train.checkpoint names an existing model). `--resume`
# continues from the state an interrupted run left and is a no-op when there is none.

if not CHECKPOINT:

    rule train:
        input:
            patches=root_of(L.patch_store),
            model_config=MODEL_CONFIG,
        output:
            model=MODEL,
            log_csv=L.train_log,
            curves=L.curves,
        log:
            L.log("train", COHORT_KEY),
        benchmark:
            L.benchmark("train", COHORT_KEY)
        params:
            out=output_dir,
            patches=patch_store,
            device=config["train"]["device"],
            flags=train_flags(),
            fail=failure_record("train", COHORT_KEY),
        conda:
            CONDA_ENV
        threads: THREADS["train"]
        resources:
            gpu=1,
        shell:
            "{params.fail} wsi-lpd train --patches {params.patches:q}"
            " --model-config {input.model_config:q} --out {params.out:q}"
            " --device {params.device} {params.flags} --resume > {log:q} 2>&1"
