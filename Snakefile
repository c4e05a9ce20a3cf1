# wsi-lpd cohort workflow: slides -> tiles -> patch store -> LPD model -> OME-Zarr mosaics ->
# QuPath GeoJSON + evaluation -> report.html. Every rule calls the `wsi-lpd` CLI.
#
#   snakemake --cores 2                                  # the built-in offline demo
#   wsi-lpd run my_cohort.yaml [snakemake args]          # a cohort, from the config's folder
#
# The demo config is the default; a --configfile given on the command line replaces it (it is
# not merged into the demo config). See snakemake/README.md.

import os

from snakemake.utils import min_version

min_version("9.0")


if not workflow.overwrite_configfiles:

    configfile: os.path.join(workflow.basedir, "configs", "demo.yaml")


include: "snakemake/rules/common.smk"
include: "snakemake/rules/config.smk"
include: "snakemake/rules/demo.smk"
include: "snakemake/rules/tile.smk"
include: "snakemake/rules/patches.smk"
include: "snakemake/rules/train.smk"
include: "snakemake/rules/infer.smk"
include: "snakemake/rules/export.smk"
include: "snakemake/rules/evaluate.smk"
include: "snakemake/rules/report.smk"


rule all:
    default_target: True
    input:
        final_outputs(),


onerror:
    report_after_error()
