"""What is not an API call: health, readiness and metrics for operators, the web page and the API docs for people
(their files and headers: server/blat_gateway/web.py). All public: they hold no data, and every call the page makes
carries the API key typed into it."""

# (no `from __future__ import annotations`: FastAPI reads the handlers' annotations, which name per-app models)

from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response
from starlette.concurrency import run_in_threadpool

from blat_gateway.api.json_io import answer
from blat_gateway.endpoint import PUBLIC, endpoint
from blat_gateway.errors import NotFound
from blat_gateway.metrics import Metrics
from blat_gateway.schema import HealthOut, ReadyOut
from blat_gateway.web import DOCS_FILES, PAGE_FILES, TITLE, WEB, docs_dir, with_docs_csp

page = endpoint("page", route="GET /", scope=PUBLIC)
page_file = endpoint("page_file", route="GET /web/{name}", scope=PUBLIC)
docs = endpoint("docs", route="GET /docs", scope=PUBLIC)
redoc = endpoint("redoc", route="GET /redoc", scope=PUBLIC)
docs_asset = endpoint("docs_asset", route="GET /docs/assets/{name}", scope=PUBLIC)
openapi = endpoint("openapi", route="GET /openapi.json", scope=PUBLIC)  # served by FastAPI itself
healthz = endpoint("healthz", route="GET /healthz", scope=PUBLIC, ok=HealthOut, tag="ops")
readyz = endpoint(
    "readyz",
    route="GET /readyz",
    scope=PUBLIC,
    ok=ReadyOut,
    tag="ops",
    openapi={"responses": {503: {"description": "backend not ready or index not loaded", "model": ReadyOut}}},
)
metrics = endpoint(
    "metrics",
    route="GET /metrics",
    scope=PUBLIC,
    tag="ops",
    openapi={
        "response_class": Response,
        "responses": {
            200: {
                "description": "Prometheus text exposition format",
                "content": {Metrics.content_type: {"schema": {"type": "string"}}},
            }
        },
    },
)


@page.rest
def _(gw, m):
    async def page() -> FileResponse:
        return FileResponse(WEB / "index.html", media_type="text/html")

    return page


@page_file.rest
def _(gw, m):
    async def page_file(name: str) -> FileResponse:
        if name not in PAGE_FILES:
            raise NotFound(f"no file {name!r} in the web page")
        return FileResponse(WEB / name, media_type=PAGE_FILES[name])

    return page_file


@docs.rest
def _(gw, m):
    async def docs() -> HTMLResponse:
        return with_docs_csp(
            get_swagger_ui_html(
                openapi_url="/openapi.json",
                title=f"{TITLE} - API",
                swagger_js_url="/docs/assets/swagger-ui-bundle.js",
                swagger_css_url="/docs/assets/swagger-ui.css",
                swagger_favicon_url="/docs/assets/favicon.png",
            )
        )

    return docs


@redoc.rest
def _(gw, m):
    async def redoc() -> HTMLResponse:
        return with_docs_csp(
            get_redoc_html(
                openapi_url="/openapi.json",
                title=f"{TITLE} - API",
                redoc_js_url="/docs/assets/redoc.standalone.js",
                redoc_favicon_url="/docs/assets/favicon.png",
                with_google_fonts=False,
            )
        )

    return redoc


@docs_asset.rest
def _(gw, m):
    async def docs_asset(name: str) -> FileResponse:
        if name not in DOCS_FILES:
            raise NotFound(f"no file {name!r} among the docs' assets")
        return FileResponse(docs_dir() / name, media_type=DOCS_FILES[name])

    return docs_asset


@healthz.rest
def _(gw, m):
    async def healthz() -> JSONResponse:
        """Liveness: the process answers."""
        return answer({"status": "ok"})

    return healthz


@readyz.rest
def _(gw, m):
    async def readyz() -> JSONResponse:
        ok, why = await run_in_threadpool(gw.ready)
        return JSONResponse({"ready": ok, "detail": why}, status_code=200 if ok else 503)

    return readyz


@metrics.rest
def _(gw, m):
    async def metrics() -> Response:
        return Response(gw.metrics.render(), media_type=gw.metrics.content_type)

    return metrics
