# The built-in demo cohort (only when the config has `demo_cohort:`): synthetic slides with region
# annotations and ground truth, plus the real CMU-1-Small-Region slide, written by `wsi-lpd synth`
# into RESULTS/cohort. Its outputs are the sheet's files in that folder.

if DEMO:

    rule demo_cohort:
        input:
            settings=L.stage_config("synth"),
        output:
            demo_outputs(),
        log:
            L.log("demo_cohort", COHORT_KEY),
        benchmark:
            L.benchmark("demo_cohort", COHORT_KEY)
        params:
            out=output_dir,
            flags=demo_flags(),
            fail=failure_record("demo_cohort", COHORT_KEY),
        conda:
            CONDA_ENV
        threads: THREADS["demo_cohort"]
        shell:
            "{params.fail} wsi-lpd synth --out {params.out:q} {params.flags}"
            " --config {input.settings:q} > {log:q} 2>&1"
