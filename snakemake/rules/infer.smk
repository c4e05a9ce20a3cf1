# Whole-slide inference into an OME-Zarr mosaic (class probabilities + labels), over the slide's
# tiles (which a `roi` of the sheet already limits).


rule infer:
    input:
        slide=slide_file,
        tiles=L.tiles("{slide}"),
        model=MODEL,
        settings=L.stage_config("infer"),
    output:
        # the store's root metadata stands for the mosaic (no Snakemake file inside it)
        store=root_of(L.mosaic("{slide}")),
        meta=L.mosaic_meta("{slide}"),
    log:
        L.log("infer", "{slide}"),
    benchmark:
        L.benchmark("infer", "{slide}")
    params:
        out=output_dir,
        mpp=slide_mpp_flag,
        fail=failure_record("infer"),
    conda:
        CONDA_ENV
    threads: THREADS["infer"]
    resources:
        gpu=1,
    shell:
        "{params.fail} wsi-lpd infer {input.slide:q} --model {input.model:q} --out {params.out:q}"
        " --slide-id {wildcards.slide} --tiles {input.tiles:q} {params.mpp}"
        " --config {input.settings:q} > {log:q} 2>&1"
