"""The HTTP face of `QueryService`: a Starlette app with a JSON API, its OpenAPI description and
the viewer page.

    app = create_app("demo/index")            # or create_app(QueryService(...))
    uvicorn.run(app, host="127.0.0.1", port=8000)

Each route is a small function that turns a request into one `QueryService` call and its answer
(or its error) into a response. Errors are JSON, `{"error": message, "status": code}`: 400 for
invalid input (the library's message, the same the CLI prints), 403 for a source file outside
the index's archive folders or a cross-origin POST, 404 for an unknown case or path, 408 for an
upload that arrives too slowly, 413 for an upload over the cap or a volume over the voxel limit,
503 when more uploads than `max_concurrent_uploads` are in progress; 400 for a Host the server
does not answer to and 401 without the token when one is set (`fdn.service.guard`). Paths in
answers and messages are relative to the archive folders (`fdn.service.public_paths`).
The page's assets ship inside the package (`fdn/service/static/`) and are read once, through
`importlib.resources`; no path from a request ever reaches the file system.
"""

from __future__ import annotations

import logging
from importlib import resources
from pathlib import Path

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from fdn.errors import ArchiveError, FdnError, QueryError, UnknownCaseError
from fdn.service.guard import Guard, HostPolicy, TokenCheck
from fdn.service.images import ImageAccessError
from fdn.service.login import login, login_page, logout
from fdn.service.openapi import (
    QUERY_PARAMS,
    error_responses,
    json_content,
    openapi,
    openapi_schema,
    param,
)
from fdn.service.public_paths import PublicPaths
from fdn.service.service import QueryService
from fdn.service.uploads import UPLOAD_KEYS, UploadRefused, receive_upload

log = logging.getLogger(__name__)

STATIC = {  # name -> media type: the only files the app serves
    "index.html": "text/html; charset=utf-8",
    "docs.html": "text/html; charset=utf-8",
    "app.js": "text/javascript; charset=utf-8",
    "docs.js": "text/javascript; charset=utf-8",
    "app.css": "text/css; charset=utf-8",
}
SECURITY_HEADERS = [
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"same-origin"),  # our own pages' requests carry a Referer to check
    (b"x-frame-options", b"DENY"),
    (
        b"content-security-policy",
        b"default-src 'self'; img-src 'self' data: blob:; object-src 'none'; "
        b"frame-ancestors 'none'; base-uri 'none'",
    ),
]


# --- routes ------------------------------------------------------------------------------------


def _service(request: Request) -> QueryService:
    return request.app.state.service


@openapi({"summary": "The viewer page", "responses": {"200": {"description": "HTML"}}})
def page(request: Request) -> Response:
    return _static(request, "index.html")


@openapi(
    {
        "summary": "This API's documentation, rendered from /openapi.json",
        "responses": {"200": {"description": "HTML"}},
    }
)
def docs(request: Request) -> Response:
    return _static(request, "docs.html")


def static(request: Request) -> Response:
    return _static(request, request.path_params["name"])


def _static(request: Request, name: str) -> Response:
    assets = request.app.state.assets
    if name not in assets:
        raise HTTPException(404, f"no asset {name!r}")
    return Response(assets[name], media_type=STATIC[name], headers={"cache-control": "no-cache"})


@openapi(
    {
        "summary": "OpenAPI description of this API",
        "responses": {"200": json_content("OpenAPI 3.1", {"type": "object"})},
    }
)
def openapi_json(request: Request) -> JSONResponse:
    return JSONResponse(request.app.state.openapi)


@openapi(
    {
        "summary": "Health",
        "tags": ["index"],
        "responses": {"200": json_content("The service is up", {"type": "object"})},
    }
)
def health(request: Request) -> JSONResponse:
    return JSONResponse(_service(request).health())


@openapi(
    {
        "summary": "Index information and the service's limits",
        "tags": ["index"],
        "responses": {"200": json_content("Index info", {"$ref": "#/components/schemas/Info"})},
    }
)
def info(request: Request) -> JSONResponse:
    return JSONResponse(_service(request).info())


@openapi(
    {
        "summary": "Cases of the index, paged and filtered",
        "tags": ["cases"],
        "parameters": [
            param("q", description="Substring of the case id (case-insensitive)."),
            param(
                "has_lesion",
                kind="boolean",
                description="Only cases with (true) or without "
                "(false) a lesion in their label file.",
            ),
            param("offset", kind="integer", minimum=0, default=0),
            param("limit", kind="integer", minimum=1, maximum=500, default=50),
        ],
        "responses": {
            "200": json_content("A page of cases", {"$ref": "#/components/schemas/CasePage"}),
            **error_responses(400),
        },
    }
)
def cases(request: Request) -> JSONResponse:
    return JSONResponse(_service(request).cases(request.query_params))


@openapi(
    {
        "summary": "One case's metadata",
        "tags": ["cases"],
        "parameters": [param("case", "path")],
        "responses": {
            "200": json_content("The case", {"$ref": "#/components/schemas/Case"}),
            **error_responses(404),
        },
    }
)
def case(request: Request) -> JSONResponse:
    return JSONResponse(_service(request).case(request.path_params["case"]))


@openapi(
    {
        "summary": "One axial slice as PNG, with optional label overlays",
        "tags": ["cases"],
        "parameters": [
            param("case", "path"),
            param("slice", "path", kind="integer", minimum=0),
            param("sequence", enum=["t1", "t1ce", "t2", "flair"], default="flair"),
            param(
                "overlay",
                description="Comma-separated label overlays among seg, anat (repeatable).",
            ),
        ],
        "responses": {
            "200": {"description": "PNG", "content": {"image/png": {}}},
            **error_responses(400, 403, 404),
        },
    }
)
def slice_png(request: Request) -> Response:
    params = request.query_params
    overlays = [o for value in params.getlist("overlay") for o in value.split(",") if o]
    slice_text = request.path_params["slice"]
    if not slice_text.isdecimal():  # the message a bare 404 of an int converter would not give
        raise QueryError(f"slice must be a whole number from 0; got {slice_text!r}")
    png = _service(request).slice_png(
        request.path_params["case"],
        int(slice_text),
        params.get("sequence") or "flair",
        overlays,
    )
    return Response(png, media_type="image/png", headers={"cache-control": "max-age=3600"})


@openapi(
    {
        "summary": "Query by a slice of the index",
        "tags": ["query"],
        "description": "Volume-wise top-Q: each hit is the closest slice of a different volume. "
        "The hits are those of fdn.archive_index.queries.run_slice_query, the call behind `fdn-index query`.",
        "parameters": [
            param("case", required=True, description="A case of the index."),
            param(
                "slice",
                kind="integer",
                minimum=0,
                description="Axial slice [default: the largest-lesion slice, else the middle].",
            ),
            *QUERY_PARAMS,
        ],
        "responses": {
            "200": json_content("The result", {"$ref": "#/components/schemas/QueryResult"}),
            **error_responses(400, 404),
        },
    }
)
def query(request: Request) -> JSONResponse:
    params = request.query_params
    if not params.get("case"):
        raise QueryError("case is required: /api/query?case=ID[&slice=Z]")
    result = _service(request).query(params["case"], params.get("slice"), params)
    return JSONResponse(request.app.state.paths.result(result.to_dict()))


EXPLAIN_PARAMS = [
    param("case", required=True, description="The query's case (a case of the index)."),
    param("slice", kind="integer", minimum=0, required=True, description="The query's slice."),
    param("hit_case", required=True, description="The hit's case."),
    param("hit_slice", kind="integer", minimum=0, required=True, description="The hit's slice."),
    *[p for p in QUERY_PARAMS if p["name"] not in ("topq", "explain")],
]


@openapi(
    {
        "summary": "Why a hit is at its distance: per-position contributions",
        "tags": ["query"],
        "description": "For one (query slice, hit slice) pair in one mode: the distance and, per "
        "codebook, the (h, w) contributions that add up to it (docs/region-queries.md), under "
        "the same options as /api/query (distance, normalized_sum, region). /api/query with "
        "explain=true gives every hit the same numbers.",
        "parameters": EXPLAIN_PARAMS,
        "responses": {
            "200": json_content("The explanation", {"type": "object"}),
            **error_responses(400, 403, 404),
        },
    }
)
def explain(request: Request) -> JSONResponse:
    return JSONResponse(_service(request).explain(request.query_params))


@openapi(
    {
        "summary": "Why a hit is at its distance, as a heat map over a slice (PNG)",
        "tags": ["query"],
        "description": "The contributions of /api/explain (both codebooks added) drawn over the "
        "hit slice (side=hit) or the query slice (side=query, the region's cells outlined): "
        "brighter, more of the distance; cells contributing nothing are left clear.",
        "parameters": [
            *EXPLAIN_PARAMS,
            param("side", enum=["hit", "query"], default="hit"),
            param("sequence", enum=["t1", "t1ce", "t2", "flair"], default="flair"),
            param("overlay", description="Comma-separated label overlays among seg, anat."),
        ],
        "responses": {
            "200": {"description": "PNG", "content": {"image/png": {}}},
            **error_responses(400, 403, 404),
        },
    }
)
def explain_png(request: Request) -> Response:
    params = request.query_params
    overlays = [o for value in params.getlist("overlay") for o in value.split(",") if o]
    png = _service(request).explain_png(params, overlays)
    return Response(png, media_type="image/png", headers={"cache-control": "no-cache"})


@openapi(
    {
        "summary": "Query by an uploaded external case",
        "tags": ["query"],
        "description": "The four sequences as NIfTI files (.nii or .nii.gz), multipart; seg and anat "
        "optional. Read, validated and preprocessed like an archive case, encoded with the index's "
        "model, never stored: the files live in a private temporary folder removed before the "
        "answer is sent. The body is capped (info.max_upload_bytes, 413 beyond) and so is each "
        "volume (info.max_voxels).",
        "requestBody": {
            "required": True,
            "content": {
                "multipart/form-data": {
                    "schema": {
                        "type": "object",
                        "required": ["t1", "t1ce", "t2", "flair"],
                        "properties": {
                            **{k: {"type": "string", "format": "binary"} for k in UPLOAD_KEYS},
                            "case_id": {
                                "type": "string",
                                "description": "Name of the case [default: upload]",
                            },
                            "slice": {"type": "integer", "minimum": 0},
                            **{p["name"]: p["schema"] for p in QUERY_PARAMS},
                        },
                    }
                }
            },
        },
        "responses": {
            "200": json_content("The result", {"$ref": "#/components/schemas/QueryResult"}),
            **error_responses(400, 403, 408, 413, 503),
        },
    }
)
async def query_upload(request: Request) -> Response:
    service = _service(request)
    if not service.upload_slots.acquire(blocking=False):
        return _error(
            503, f"{service.max_concurrent_uploads} uploads are being processed; retry shortly"
        )
    try:
        with service.upload_folder() as folder:
            try:
                received = await receive_upload(
                    request.receive, request.headers, service.upload_limits, folder
                )
            except UploadRefused as exc:  # the body may be unread: end the connection too
                response = _error(exc.status, exc.message)
                response.headers["connection"] = "close"
                return response
            result = await run_in_threadpool(service.query_upload, received.files, received.fields)
    finally:
        service.upload_slots.release()
    return JSONResponse(request.app.state.paths.result(result.to_dict()))


ROUTES = [
    Route("/", page),
    Route("/docs", docs),
    Route("/openapi.json", openapi_json),
    Route("/static/{name}", static),
    Route("/api/health", health),
    Route("/api/info", info),
    Route("/api/cases", cases),
    Route("/api/cases/{case}", case),
    Route("/api/cases/{case}/slices/{slice}.png", slice_png),
    Route("/api/query", query),
    Route("/api/explain", explain),
    Route("/api/explain.png", explain_png),
    Route("/api/query/upload", query_upload, methods=["POST"]),
    Route("/login", login_page, methods=["GET"]),
    Route("/login", login, methods=["POST"]),
    Route("/logout", logout, methods=["POST"]),
]


# --- errors, headers, schema -------------------------------------------------------------------


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message, "status": status}, status_code=status)


def _public(request: Request, exc: Exception) -> str:
    return request.app.state.paths.message(str(exc))


async def _on_query_error(request, exc):
    return _error(404 if isinstance(exc, UnknownCaseError) else 400, _public(request, exc))


async def _on_access_error(request, exc):
    log.warning("refused: %s", exc)
    return _error(403, _public(request, exc))


async def _on_fdn_error(request, exc):
    log.error("%s: %s", request.url.path, exc)
    status = 400 if isinstance(exc, ArchiveError) else 500
    return _error(status, _public(request, exc))


async def _on_value_error(request, exc):
    return _error(400, _public(request, exc))


async def _on_http_error(request, exc):
    return _error(exc.status_code, str(exc.detail))


class SecurityHeaders:
    """Pure ASGI middleware: the same defensive headers on every response."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def send_with_headers(message):
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), *SECURITY_HEADERS]}
            await send(message)

        await self.app(scope, receive, send_with_headers)


def load_assets() -> dict[str, bytes]:
    """The page's files, read once from the installed package (never the working directory)."""
    folder = resources.files("fdn.service") / "static"
    return {name: (folder / name).read_bytes() for name in STATIC}


def create_app(
    service_or_index: QueryService | str | Path,
    *,
    allowed_hosts: HostPolicy | list[str] | None = None,
    token: str | None = None,
    **settings,
) -> Starlette:
    """The Starlette app over one `QueryService` (or an index directory, opened now).

    allowed_hosts: the Host values answered (against DNS rebinding): a `HostPolicy`, or names
    and addresses (loopback ones are always accepted); None accepts any. token: required of
    every request when given (`fdn.service.guard`); at least 16 characters.
    settings: those of `QueryService` when an index directory is given.
    """
    service = (
        service_or_index
        if isinstance(service_or_index, QueryService)
        else QueryService.open(service_or_index, **settings)
    )
    if isinstance(allowed_hosts, list):
        allowed_hosts = HostPolicy(frozenset(allowed_hosts))
    checker = None if token is None else TokenCheck(token)
    middleware = [
        Middleware(SecurityHeaders),
        Middleware(Guard, hosts=allowed_hosts, token=checker),
    ]
    app = Starlette(
        routes=ROUTES,
        middleware=middleware,
        exception_handlers={
            QueryError: _on_query_error,
            ImageAccessError: _on_access_error,
            FdnError: _on_fdn_error,
            ValueError: _on_value_error,
            HTTPException: _on_http_error,
        },
    )
    app.state.service = service
    app.state.token = checker
    app.state.paths = PublicPaths(service.index)
    app.state.assets = load_assets()
    app.state.openapi = openapi_schema(ROUTES)
    return app
