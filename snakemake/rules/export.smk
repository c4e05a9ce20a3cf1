# Polygons per class as QuPath GeoJSON (level-0 px), an overlay PNG and the run metadata.


rule export:
    input:
        mosaic=f"{RESULTS}/mosaics/{{slide}}.ome.zarr/zarr.json",
        slide=slide_file,
    output:
        geojson=f"{RESULTS}/geojson/{{slide}}{GEOJSON_SUFFIX}",
        overlay=f"{RESULTS}/geojson/{{slide}}.overlay.png",
        meta=f"{RESULTS}/geojson/{{slide}}.export.json",
    log:
        f"{LOGS}/export/{{slide}}.log",
    benchmark:
        f"{BENCH}/export/{{slide}}.tsv"
    params:
        cli=WSI_LPD,
        out=output_dir,
        mosaic=mosaic_store,
        config=CONFIG_COPY,
        settings=config["export"],
    conda:
        CONDA_ENV
    threads: THREADS["export"]
    shell:
        "{params.cli} export {params.mosaic:q} --out {params.out:q} --slide {input.slide:q}"
        " --config {params.config:q} > {log:q} 2>&1"
