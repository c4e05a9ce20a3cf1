# The config sections each stage reads, one small YAML per stage (its `--config`). A change to a
# stage's sections rewrites only that file (params are tracked), so only that stage reruns.


localrules:
    stage_config,


rule stage_config:
    output:
        L.stage_config("{stage}"),
    log:
        L.log("config", "{stage}"),
    params:
        sections=settings_of,
    run:
        write_stage_config(output[0], params.sections, log[0])
