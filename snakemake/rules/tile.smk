# Tissue detection and the tile grid of one slide at the configured µm/px.


rule tile:
    input:
        slide=slide_file,
    output:
        directory(f"{RESULTS}/tiles/{{slide}}"),
    log:
        f"{LOGS}/tile/{{slide}}.log",
    benchmark:
        f"{BENCH}/tile/{{slide}}.tsv"
    params:
        cli=WSI_LPD,
        mpp=slide_mpp_flag,
        config=CONFIG_COPY,
        settings=config["tile"],
    conda:
        CONDA_ENV
    threads: THREADS["tile"]
    shell:
        "{params.cli} tile {input.slide:q} --out {output:q} --slide-id {wildcards.slide}"
        " {params.mpp} --config {params.config:q} > {log:q} 2>&1"
