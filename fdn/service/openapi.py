"""The OpenAPI description of the service's routes: each route declares its own operation
(`@openapi`), and `openapi_schema` gathers them with the shared schemas."""

from __future__ import annotations

from fdn import __version__
from fdn.archive_index.query_options import MODE_CHOICES
from hashindex import DISTANCES, ENGINES


def openapi(operation: dict):
    """Attach an OpenAPI operation object to a route function (collected by `openapi_schema`)."""

    def attach(func):
        func.openapi = operation
        return func

    return attach


def param(name, where="query", kind="string", description="", required=False, **schema):
    return {
        "name": name,
        "in": where,
        "required": required or where == "path",
        "description": description,
        "schema": {"type": kind, **schema},
    }


QUERY_PARAMS = [
    param(
        "mode",
        enum=list(MODE_CHOICES),
        default="sum",
        description="Similarity: normal anatomy, lesion, their sum, or all three.",
    ),
    param(
        "distance",
        enum=list(DISTANCES),
        description="Per-image distance between code grids (absent: each mode's best on the "
        "quality benchmark, euclidean for normal and sum, angular for abnormal; each mode's "
        "result names the distance and engine it ran with).",
    ),
    param(
        "topq",
        kind="integer",
        minimum=1,
        maximum=100,
        default=10,
        description="Number of volumes (each hit from a different volume).",
    ),
    param(
        "engine",
        enum=list(ENGINES),
        description="Search engine [default: fastscan where the index allows it, except for "
        "D_A, else lut].",
    ),
    param("nprobe", kind="integer", minimum=1, description="Lists probed by faiss-ivf."),
    param(
        "normalized_sum",
        kind="boolean",
        default=False,
        description="For mode sum: divide each distance by its scale before adding.",
    ),
    param(
        "include_same_volume",
        kind="boolean",
        default=False,
        description="Allow hits from the query's own volume.",
    ),
    param(
        "region",
        description="Compare only this box of the query slice, x0,y0,x1,y1 in its voxels (ends "
        "included): the grid cells it covers by at least half, else those it covers most; "
        "the result echoes the region and the positions used (docs/region-queries.md). Runs on "
        "an exact engine that takes a region (lut, numpy).",
    ),
    param(
        "explain",
        kind="boolean",
        default=False,
        description="Give each hit its per-position contributions to its distance "
        "(they add up to it).",
    ),
    param(
        "where",
        description="Return only slices whose slice-table row passes this filter, e.g. "
        '`age >= 60 and sex == "F"` (==, !=, <, <=, >, >=, in [..], and, or, not, '
        "parentheses; strings quoted, dates YYYY-MM-DD). An unknown column or a type "
        "mismatch is a 400 naming the column.",
    ),
]
ERROR = {"$ref": "#/components/schemas/Error"}


def json_content(description, schema):
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def error_responses(*codes):
    text = {
        400: "Invalid input",
        401: "The server requires its token (Authorization: Bearer, or sign in at /login)",
        403: "Refused: outside the archive, or a request from another site's page",
        404: "Unknown case",
        408: "Upload too slow: dropped to free its slot",
        413: "Upload too large, or a volume over the voxel limit",
        503: "Too many uploads at once",
    }
    return {str(c): json_content(text[c], ERROR) for c in codes}


def openapi_schema(routes) -> dict:
    """OpenAPI 3.1 from the operations attached to the route functions with `@openapi`."""
    paths: dict = {}
    for route in routes:
        operation = getattr(route.endpoint, "openapi", None)
        if operation is None:
            continue
        path = route.path.replace("{slice:int}", "{slice}")
        for method in sorted(route.methods - {"HEAD"}):
            paths.setdefault(path, {})[method.lower()] = {
                "operationId": route.endpoint.__name__,
                **operation,
            }
    case = {
        "type": "object",
        "properties": {
            "case": {"type": "string"},
            "volume": {"type": "integer"},
            "n_slices": {"type": "integer"},
            "first_slice": {"type": "integer"},
            "last_slice": {"type": "integer"},
            "default_slice": {"type": "integer"},
            "has_lesion": {"type": ["boolean", "null"]},
            "max_lesion_area": {"type": ["integer", "null"]},
            "lesion_slices": {"type": ["integer", "null"]},
        },
    }
    hit = {
        "type": "object",
        "properties": {
            "rank": {"type": "integer"},
            "row": {"type": "integer"},
            "case": {"type": "string"},
            "slice": {"type": "integer"},
            "distance": {"type": "number"},
            "source": {
                "type": "string",
                "description": "The case's folder, relative to the archive folder that holds it",
            },
            "lesion_area": {"type": ["integer", "null"]},
        },
    }
    result = {
        "type": "object",
        "description": "The schema of `fdn-index query --json` too.",
        "properties": {
            "query": {"type": "string"},
            "index": {"type": "string"},
            "query_case": {"type": "string"},
            "query_slice": {"type": "integer"},
            "external": {"type": "boolean"},
            "modes": {"type": "array", "items": {"type": "string"}},
            "distance": {"type": "string"},
            "engine": {"type": "string"},
            "topq": {"type": "integer"},
            "normalized_sum": {"type": "boolean"},
            "include_same_volume": {"type": "boolean"},
            "nprobe": {"type": ["integer", "null"]},
            "where": {"type": ["string", "null"]},
            "rows_passing": {"type": ["integer", "null"]},
            "load_seconds": {"type": "number"},
            "encode_seconds": {"type": "number"},
            "query_seconds": {"type": "number"},
            "results": {
                "type": "object",
                "additionalProperties": {
                    "type": "object",
                    "properties": {
                        "search_seconds": {"type": "number"},
                        "distance": {"type": "string"},
                        "engine": {"type": "string"},
                        "kernel": {
                            "type": ["string", "null"],
                            "description": "the fastscan kernel that ran (vbmi, avx2, neon or "
                            "portable); null for the other engines",
                        },
                        "hits": {"type": "array", "items": {"$ref": "#/components/schemas/Hit"}},
                    },
                },
            },
        },
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "fdn-index query service",
            "version": __version__,
            "description": "Content-based retrieval of brain MRI by normal anatomy and by "
            "lesion (Kobayashi et al. 2021).",
        },
        "paths": paths,
        "components": {
            "schemas": {
                "Error": {
                    "type": "object",
                    "properties": {"error": {"type": "string"}, "status": {"type": "integer"}},
                },
                "Info": {"type": "object"},
                "Case": case,
                "CasePage": {
                    "type": "object",
                    "properties": {
                        "total": {"type": "integer"},
                        "offset": {"type": "integer"},
                        "limit": {"type": "integer"},
                        "cases": {"type": "array", "items": {"$ref": "#/components/schemas/Case"}},
                    },
                },
                "Hit": hit,
                "QueryResult": result,
            }
        },
    }
