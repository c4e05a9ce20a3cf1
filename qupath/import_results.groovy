/*
 * wsi-lpd: import the workflow's results into every image of a QuPath project (QuPath 0.5 / 0.6).
 *
 * Automate -> Script editor, File -> Open... this file, set RESULTS_DIR below to the workflow's
 * <results>/geojson folder, then Run -> Run for project (select the images). For each image it
 * reads {slide_id}.geojson, or {slide_id}.geojson.gz (export.gzip: true), with
 * PathIO.readObjects (which reads both) and adds the objects to the image; "Run for project"
 * saves each image. Objects an earlier run of this script
 * imported (named "wsi-lpd: <class>") are removed first, so re-importing replaces them; your own
 * annotations stay. Images without a result file are skipped.
 *
 * slide_id is the image name without its extension, made a valid wsi-lpd slide id, exactly as in
 * export_annotations.groovy (see slideId below).
 */

import qupath.lib.io.PathIO

// Folder of {slide_id}.geojson or .geojson.gz; null = <project folder>/wsi-lpd-results
String RESULTS_DIR = null
// Name prefix that marks imported objects (and lets a later import replace them)
String TAG = 'wsi-lpd'

def entry = getProjectEntry()
if (entry == null)
    throw new IllegalStateException('wsi-lpd: open a project first (files are named after its images)')
def dir = new File(RESULTS_DIR ?: buildFilePath(PROJECT_BASE_DIR, 'wsi-lpd-results'))
def id = slideId(entry.getOriginalImageName())
def file = [id + '.geojson', id + '.geojson.gz'].collect { new File(dir, it) }.find { it.isFile() }
if (file == null) {
    println "wsi-lpd: ${entry.getOriginalImageName()}: no ${id}.geojson(.gz) in ${dir}, skipped"
    return
}
def hierarchy = getCurrentHierarchy()
def earlier = hierarchy.getAllObjects(false).findAll { o ->
    o.getName() != null && o.getName().startsWith(TAG + ': ')
}
hierarchy.removeObjects(earlier, true)
def objects = PathIO.readObjects(file)
objects.each { o ->
    def pathClass = o.getPathClass()
    o.setName(TAG + ': ' + (pathClass == null ? 'unclassified' : pathClass.toString()))
}
hierarchy.addObjects(objects)
fireHierarchyUpdate()
println "wsi-lpd: ${entry.getOriginalImageName()} <- ${file} (${objects.size()} objects, ${earlier.size()} replaced)"

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
