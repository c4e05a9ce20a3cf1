# Polygons per class as QuPath GeoJSON (level-0 px), an overlay PNG and the run metadata; the tile
# stage's artefacts (`Artefact: pen` …, tiles/{slide}/artefacts.geojson) are added to the GeoJSON.


rule export:
    input:
        mosaic=root_of(L.mosaic("{slide}")),
        slide=slide_file,
        tiles=L.tiles("{slide}"),
        settings=L.stage_config("export"),
    output:
        geojson=L.geojson("{slide}"),
        overlay=L.overlay("{slide}"),
        meta=L.export_meta("{slide}"),
    log:
        L.log("export", "{slide}"),
    benchmark:
        L.benchmark("export", "{slide}")
    params:
        out=output_dir,
        mosaic=mosaic_store,
        fail=failure_record("export"),
    conda:
        CONDA_ENV
    threads: THREADS["export"]
    shell:
        "{params.fail} wsi-lpd export {params.mosaic:q} --out {params.out:q}"
        " --slide {input.slide:q} --tiles {input.tiles:q} --config {input.settings:q}"
        " --workers {threads} > {log:q} 2>&1"
