# Whole-slide inference into an OME-Zarr mosaic (class probabilities + labels).


rule infer:
    input:
        slide=slide_file,
        tiles=f"{RESULTS}/tiles/{{slide}}",
        model=MODEL,
    output:
        # the store's root metadata stands for the mosaic (no Snakemake file inside it)
        store=f"{RESULTS}/mosaics/{{slide}}.ome.zarr/zarr.json",
        meta=f"{RESULTS}/mosaics/{{slide}}.run.json",
    log:
        f"{LOGS}/infer/{{slide}}.log",
    benchmark:
        f"{BENCH}/infer/{{slide}}.tsv"
    params:
        cli=WSI_LPD,
        out=output_dir,
        mpp=slide_mpp_flag,
        config=CONFIG_COPY,
        settings=config["infer"],
    conda:
        CONDA_ENV
    threads: THREADS["infer"]
    resources:
        gpu=1,
    shell:
        "{params.cli} infer {input.slide:q} --model {input.model:q} --out {params.out:q}"
        " --slide-id {wildcards.slide} --tiles {input.tiles:q} {params.mpp}"
        " --config {params.config:q} > {log:q} 2>&1"
