"""GeoJSON geometry values (reference §5, geometry row), checked as upstream's JTS reader does.

In order: the text must parse as one GeoJSON object (a geometry, or a Feature whose geometry is
checked), with well-formed coordinates (JTS refuses rings that are not closed or have fewer
than 4 points, and line strings of one point, when it builds them) → "failed to parse the
given GeoJSON object"; the geometry must be valid (OGC validity, e.g. no self-intersecting
polygon) → "invalid GeoJSON object"; it must be one of the six plain types (collections are
refused) → "unsupported geometry type"; non-empty ``properties`` must carry ``subType`` Circle
(with ``radius``) or Rectangle → "unsupported GeoJSON subtype" / "unsupported geometry subtype" /
"missing radius parameter". A ``crs`` member is allowed (Cytomine sends one).
"""

from __future__ import annotations

import math
from typing import Any, Final

import msgspec
import shapely
import shapely.geometry

from services.storage import errors as e
from services.storage.errors import ValueRejected

GEOMETRY_TYPES: Final = frozenset({"Point", "MultiPoint", "LineString", "MultiLineString", "Polygon", "MultiPolygon"})
COLLECTIONS: Final = frozenset({"GeometryCollection", "FeatureCollection"})
SUBTYPES: Final = frozenset({"Circle", "Rectangle"})
_DEPTH: Final = {"Point": 1, "MultiPoint": 2, "LineString": 2, "MultiLineString": 3, "Polygon": 3, "MultiPolygon": 4}


def check_geojson(text: str) -> None:
    """Raise ValueRejected unless ``text`` is a geometry value upstream accepts."""
    try:
        obj = msgspec.json.decode(text)
    except (msgspec.DecodeError, RecursionError):
        raise ValueRejected(e.GEOJSON_PARSE) from None
    if not isinstance(obj, dict) or not isinstance(obj.get("type"), str):
        raise ValueRejected(e.GEOJSON_PARSE)
    geometry: Any = obj
    if obj["type"] == "Feature":
        geometry = obj.get("geometry")
        if not isinstance(geometry, dict) or not isinstance(geometry.get("type"), str):
            raise ValueRejected(e.GEOJSON_PARSE)
    kind = geometry["type"]
    if kind in COLLECTIONS:
        raise ValueRejected(e.GEOMETRY_TYPE)
    if kind not in GEOMETRY_TYPES:
        raise ValueRejected(e.GEOJSON_PARSE)
    coordinates = geometry.get("coordinates")
    if not _well_formed(kind, coordinates):
        raise ValueRejected(e.GEOJSON_PARSE)
    try:
        shape = shapely.geometry.shape(geometry)
    except (ValueError, TypeError, shapely.errors.ShapelyError):
        raise ValueRejected(e.GEOJSON_PARSE) from None
    if not shape.is_valid:
        raise ValueRejected(e.GEOJSON_INVALID)
    _check_properties(obj.get("properties"))


def _check_properties(properties: object) -> None:
    if properties is None or properties == {}:
        return
    if not isinstance(properties, dict) or "subType" not in properties:
        raise ValueRejected(e.GEOJSON_SUBTYPE)
    subtype = properties["subType"]
    if subtype not in SUBTYPES:
        raise ValueRejected(e.GEOMETRY_SUBTYPE)
    if subtype == "Circle" and properties.get("radius") is None:
        raise ValueRejected(e.RADIUS)


def _well_formed(kind: str, coordinates: object) -> bool:
    if not _nested(coordinates, _DEPTH[kind]):
        return False
    assert isinstance(coordinates, list)
    match kind:
        case "LineString":
            return _line(coordinates)
        case "MultiLineString":
            return all(_line(line) for line in coordinates)
        case "Polygon":
            return all(_ring(ring) for ring in coordinates)
        case "MultiPolygon":
            return all(_ring(ring) for polygon in coordinates for ring in polygon)
    return True


def _nested(value: object, depth: int) -> bool:
    """A list nested ``depth`` levels whose leaves are positions of 2 or 3 finite numbers."""
    if not isinstance(value, list):
        return False
    if depth == 1:
        return 2 <= len(value) <= 3 and all(
            isinstance(n, int | float) and not isinstance(n, bool) and math.isfinite(n) for n in value
        )
    return all(_nested(item, depth - 1) for item in value)


def _line(points: list[Any]) -> bool:
    return len(points) != 1


def _ring(points: list[Any]) -> bool:
    return not points or (len(points) >= 4 and points[0][:2] == points[-1][:2])
