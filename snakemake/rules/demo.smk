# The built-in demo cohort (only when the config has `demo_cohort:`): synthetic slides with region
# annotations and ground truth, plus the real CMU-1-Small-Region slide, written by `wsi-lpd synth`
# into RESULTS/cohort. Its outputs are the sheet's files in that folder.

if DEMO:

    rule demo_cohort:
        output:
            demo_outputs(),
        log:
            f"{LOGS}/demo_cohort/_cohort.log",
        benchmark:
            f"{BENCH}/demo_cohort/_cohort.tsv"
        params:
            cli=WSI_LPD,
            out=output_dir,
            flags=demo_flags(),
            config=CONFIG_COPY,
            settings=config["synth"],
        conda:
            CONDA_ENV
        threads: THREADS["demo_cohort"]
        shell:
            "{params.cli} synth --out {params.out:q} {params.flags} --config {params.config:q}"
            " > {log:q} 2>&1"
