import java.io.ByteArrayOutputStream;
import java.io.IOException;
import java.io.InputStream;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.zip.GZIPInputStream;

import org.locationtech.jts.geom.Geometry;
import org.locationtech.jts.geom.GeometryCollection;
import org.locationtech.jts.geom.MultiPolygon;
import org.locationtech.jts.geom.Polygon;
import org.locationtech.jts.io.ParseException;
import org.locationtech.jts.io.geojson.GeoJsonReader;
import org.locationtech.jts.operation.valid.IsValidOp;
import org.locationtech.jts.operation.valid.TopologyValidationError;

/**
 * Parse a GeoJSON FeatureCollection the way QuPath does (JTS GeoJsonReader) and check every
 * feature's geometry with IsValidOp. Prints one line per problem and a summary line
 * "features=N polygonal=P valid=V"; exits 1 when any geometry is invalid, empty, not polygonal
 * or a single-part MultiPolygon.
 * Usage: java -cp jts-core.jar:jts-io-common.jar:json-simple.jar:. ValidateGeoJson FILE[.gz]
 */
public final class ValidateGeoJson {
    private ValidateGeoJson() {}

    private static String readText(Path path) throws IOException {
        try (InputStream raw = Files.newInputStream(path);
             InputStream in = path.toString().endsWith(".gz") ? new GZIPInputStream(raw) : raw) {
            ByteArrayOutputStream out = new ByteArrayOutputStream();
            in.transferTo(out);
            return out.toString(StandardCharsets.UTF_8);
        }
    }

    public static void main(String[] args) throws IOException {
        if (args.length != 1) {
            System.err.println("usage: ValidateGeoJson FILE");
            System.exit(2);
        }
        Geometry all;
        try {
            all = new GeoJsonReader().read(readText(Path.of(args[0])));
        } catch (ParseException e) {
            System.out.println("parse error: " + e.getMessage());
            System.exit(1);
            return;
        }
        // A FeatureCollection is read as a GeometryCollection holding one geometry per feature.
        boolean collection = all.getClass() == GeometryCollection.class;
        int n = collection ? all.getNumGeometries() : 1;
        int polygonal = 0;
        int valid = 0;
        for (int i = 0; i < n; i++) {
            Geometry g = collection ? all.getGeometryN(i) : all;
            if (g instanceof MultiPolygon && g.getNumGeometries() == 1) {
                System.out.println("feature " + i + ": single-part MultiPolygon");
                continue;
            }
            if (!(g instanceof Polygon || g instanceof MultiPolygon) || g.isEmpty()) {
                System.out.println(
                        "feature " + i + ": not a non-empty polygon (" + g.getGeometryType() + ")");
                continue;
            }
            polygonal++;
            IsValidOp op = new IsValidOp(g);
            TopologyValidationError err = op.getValidationError();
            if (err == null) {
                valid++;
            } else {
                System.out.println("feature " + i + ": invalid: " + err);
            }
        }
        System.out.println("features=" + n + " polygonal=" + polygonal + " valid=" + valid);
        System.exit(valid == n ? 0 : 1);
    }
}
