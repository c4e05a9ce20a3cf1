# Train LPD on the patch store (skipped when train.checkpoint names an existing model). After an
# interruption the rerun passes `--resume`, continuing from the state the interrupted run left
# (RESULTS/.model.resume/last.pt); a finished model is never extended, a fresh run starts fresh.

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
            state=f"{L.train_state}/last.pt",
        conda:
            CONDA_ENV
        threads: THREADS["train"]
        resources:
            gpu=config["train"]["gpus"],
        shell:
            "{params.fail} wsi-lpd train --patches {params.patches:q}"
            " --model-config {input.model_config:q} --out {params.out:q}"
            " --device {params.device} --nproc {resources.gpu} {params.flags}"
            " $(test -e {params.state:q} && echo --resume) > {log:q} 2>&1"
