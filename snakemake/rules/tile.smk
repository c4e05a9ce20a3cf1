# Tissue detection and the tile grid of one slide at the configured µm/px.


rule tile:
    input:
        slide=slide_file,
        roi=roi_file,
        settings=L.stage_config("tile"),
    output:
        directory(L.tiles("{slide}")),
    log:
        L.log("tile", "{slide}"),
    benchmark:
        L.benchmark("tile", "{slide}")
    params:
        mpp=slide_mpp_flag,
        roi=roi_flag,
        fail=failure_record("tile"),
    conda:
        CONDA_ENV
    threads: THREADS["tile"]
    shell:
        "{params.fail} wsi-lpd tile {input.slide:q} --out {output:q} --slide-id {wildcards.slide}"
        " {params.mpp} {params.roi} --config {input.settings:q} > {log:q} 2>&1"
