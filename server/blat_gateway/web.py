"""What a person opens in a browser: the web page at `/` (server/blat_gateway/web/: hand-written HTML, CSS and
JavaScript, no
build step, no CDN), Swagger UI at `/docs` and ReDoc at `/redoc` from the files the `fastapi-offline` package ships
(Swagger UI 5, which reads OpenAPI 3.1; swagger-ui-bundle's 4.x cannot), and the audio of stored items at
`/v1/audio/{id}` (HTTP Range supported, so players can seek).

The page and the docs are public (they hold no data); every call the page makes carries the API key typed into it.
"""

from __future__ import annotations

import base64
import hashlib
import re
from pathlib import Path

from fastapi import FastAPI
from fastapi import Path as PathParam
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse
from starlette.concurrency import run_in_threadpool

from blat_gateway.errors import NotFound
from blat_gateway.schema import ID
from blat_gateway.service import Gateway
from blat_gateway.uploads import media_type

WEB = Path(__file__).resolve().parent / "web"
PAGE_FILES = {"app.js": "text/javascript", "style.css": "text/css"}
DOCS_FILES = {
    "swagger-ui-bundle.js": "text/javascript",
    "swagger-ui.css": "text/css",
    "redoc.standalone.js": "text/javascript",
    "favicon.png": "image/png",
}


# Swagger UI and ReDoc start from one inline script each (allowed by its hash) and style themselves inline.
DOCS_CSP = (
    "default-src 'none'; script-src 'self' {hashes}; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
    "font-src 'self' data:; connect-src 'self'; worker-src 'self' blob:; frame-ancestors 'none'; "
    "base-uri 'none'; form-action 'self'"
)
INLINE_SCRIPT = re.compile(rb"<script>(.*?)</script>", re.S)


def with_docs_csp(page: HTMLResponse) -> HTMLResponse:
    """The docs page with a CSP that allows exactly its own inline scripts (the front door's default allows none)."""
    hashes = " ".join(
        f"'sha256-{base64.b64encode(hashlib.sha256(js).digest()).decode()}'" for js in INLINE_SCRIPT.findall(page.body)
    )
    page.headers["content-security-policy"] = DOCS_CSP.format(hashes=hashes)
    return page


def docs_dir() -> Path:
    """Swagger UI (Apache-2.0, SmartBear) and ReDoc (MIT, Redocly), as fastapi-offline (MIT) ships them."""
    import fastapi_offline

    return Path(fastapi_offline.__file__).resolve().parent / "static"


def add_web_routes(app: FastAPI, gw: Gateway, errors: dict) -> None:
    """`errors`: the OpenAPI error answers of the audio route (rest.py's table)."""

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(WEB / "index.html", media_type="text/html")

    @app.get("/web/{name}", include_in_schema=False)
    async def page_file(name: str) -> FileResponse:
        if name not in PAGE_FILES:
            raise NotFound(f"no file {name!r} in the web page")
        return FileResponse(WEB / name, media_type=PAGE_FILES[name])

    @app.get("/docs", include_in_schema=False)
    async def docs() -> HTMLResponse:
        return with_docs_csp(
            get_swagger_ui_html(
                openapi_url="/openapi.json",
                title=f"{app.title} - API",
                swagger_js_url="/docs/assets/swagger-ui-bundle.js",
                swagger_css_url="/docs/assets/swagger-ui.css",
                swagger_favicon_url="/docs/assets/favicon.png",
            )
        )

    @app.get("/redoc", include_in_schema=False)
    async def redoc() -> HTMLResponse:
        return with_docs_csp(
            get_redoc_html(
                openapi_url="/openapi.json",
                title=f"{app.title} - API",
                redoc_js_url="/docs/assets/redoc.standalone.js",
                redoc_favicon_url="/docs/assets/favicon.png",
                with_google_fonts=False,
            )
        )

    @app.get("/docs/assets/{name}", include_in_schema=False)
    async def docs_asset(name: str) -> FileResponse:
        if name not in DOCS_FILES:
            raise NotFound(f"no file {name!r} among the docs' assets")
        return FileResponse(docs_dir() / name, media_type=DOCS_FILES[name])

    @app.get(
        "/v1/audio/{item_id:path}",
        response_class=FileResponse,
        tags=["items"],
        responses={
            200: {
                "description": "the item's audio file (Range requests answer 206)",
                "content": {"audio/*": {"schema": {"type": "string", "format": "binary"}}},
            },
            **errors,
        },
    )
    async def item_audio(item_id: str = PathParam(**ID)) -> FileResponse:
        """The stored item's audio: the uploaded file, or its source file while that is inside the ingest roots."""
        path = await run_in_threadpool(gw.items.audio, item_id)
        return FileResponse(
            path,
            media_type=await run_in_threadpool(media_type, path),
            headers={"Cache-Control": "private, max-age=300"},
        )
