/*
 * wsi-lpd: export the annotations of every image of a QuPath project (QuPath 0.5 / 0.6).
 *
 * Automate -> Script editor, File -> Open... this file, then Run -> Run for project
 * (select the annotated images). For each image it writes {slide_id}.geojson, a GeoJSON
 * FeatureCollection of the image's annotations with their classification names, into OUT_DIR
 * (default: <project folder>/wsi-lpd-annotations). Images without annotations are skipped; an
 * existing file is not overwritten unless OVERWRITE = true below (delete the folder's files, or
 * set it, to export again).
 *
 * slide_id is the image name without its extension, made a valid wsi-lpd slide id (see slideId
 * below); use the same id in the sample sheet:
 *     slide_id,path,annotations
 *     CMU-1,/data/CMU-1.svs,<OUT_DIR>/CMU-1.geojson
 */

// Output folder; null = <project folder>/wsi-lpd-annotations
String OUT_DIR = null
// An existing {slide_id}.geojson is left as it is (and reported) unless this is true. Two images
// whose names give the same slide id would otherwise overwrite each other's file.
boolean OVERWRITE = false

def entry = getProjectEntry()
if (entry == null)
    throw new IllegalStateException('wsi-lpd: open a project first (files are named after its images)')
def outDir = new File(OUT_DIR ?: buildFilePath(PROJECT_BASE_DIR, 'wsi-lpd-annotations'))
outDir.mkdirs()
def id = slideId(entry.getOriginalImageName())
def annotations = getAnnotationObjects()
if (annotations.isEmpty()) {
    println "wsi-lpd: ${entry.getOriginalImageName()}: no annotations, nothing written"
    return
}
def file = new File(outDir, id + '.geojson')
if (file.exists() && !OVERWRITE) {
    println "wsi-lpd: ${entry.getOriginalImageName()}: ${file} exists, not overwritten " +
            "(another image with slide id '${id}', or an earlier export; set OVERWRITE = true " +
            "at the top of the script to replace it)"
    return
}
exportObjectsToGeoJson(annotations, file.getPath(), 'FEATURE_COLLECTION')
println "wsi-lpd: ${entry.getOriginalImageName()} -> ${file} (${annotations.size()} annotations)"

// --- slide id: the same in export_annotations.groovy and import_results.groovy -------------
// wsi-lpd's rule (wsi_lpd/slide/reader.py slide_id_from_name, also used by `wsi-lpd samples`):
// the name without its extension (.ome.tiff / .ome.tif / .ome.zarr count as one; a leading or
// trailing dot is not one); then every character other than a letter, digit, '.', '_', '+' or
// '-' becomes '_', leading characters that are not a letter or digit are dropped, and an empty
// result is 'slide'. Image names come from entry.getOriginalImageName(): getImageName() is a
// random name in projects with "mask image names" on.
static String slideId(String imageName) {
    String name = imageName
    String lower = name.toLowerCase(Locale.ROOT)
    boolean ome = false
    for (String suffix : ['.ome.tiff', '.ome.tif', '.ome.zarr']) {
        if (!ome && lower.endsWith(suffix)) {
            name = name.substring(0, name.length() - suffix.length())
            ome = true
        }
    }
    if (!ome) {
        int dot = name.lastIndexOf('.')
        if (dot > 0 && dot < name.length() - 1)
            name = name.substring(0, dot)
    }
    String id = name.replaceAll('[^A-Za-z0-9._+-]', '_').replaceFirst('^[^A-Za-z0-9]+', '')
    return id.isEmpty() ? 'slide' : id
}
// --- end slide id ---------------------------------------------------------------------------
