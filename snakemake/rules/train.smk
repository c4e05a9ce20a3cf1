# Train LPD on the patch store (skipped when train.checkpoint names an existing model).

if not CHECKPOINT:

    rule train:
        input:
            patches=f"{RESULTS}/patches/train.zarr/zarr.json",
            model_config=MODEL_CONFIG,
        output:
            model=MODEL,
            log_csv=f"{RESULTS}/model/train_log.csv",
            curves=f"{RESULTS}/model/curves.png",
        log:
            f"{LOGS}/train/_cohort.log",
        benchmark:
            f"{BENCH}/train/_cohort.tsv"
        params:
            cli=WSI_LPD,
            out=output_dir,
            patches=patch_store,
            device=config["train"]["device"],
            flags=train_flags(),
        conda:
            CONDA_ENV
        threads: THREADS["train"]
        resources:
            gpu=1,
        shell:
            "{params.cli} train --patches {params.patches:q} --config {input.model_config:q}"
            " --out {params.out:q} --device {params.device} {params.flags} > {log:q} 2>&1"
