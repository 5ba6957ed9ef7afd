"""The files behind what a person opens in a browser (routes: server/blat_gateway/api/pages.py): the web page at `/`
(server/blat_gateway/web/: hand-written HTML, CSS and JavaScript, no build step, no CDN), and Swagger UI at `/docs`
and ReDoc at `/redoc` from the files the `fastapi-offline` package ships (Swagger UI 5, which reads OpenAPI 3.1;
swagger-ui-bundle's 4.x cannot), with the CSP their inline scripts need.
"""

from __future__ import annotations

import base64
import hashlib
import re
from pathlib import Path

from fastapi.responses import HTMLResponse

TITLE = "BLAT gateway"
WEB = Path(__file__).resolve().parent / "web"
PAGE_FILES = {
    "app.js": "text/javascript",
    "results.js": "text/javascript",  # the result list, facets and pager (after app.js: it uses its helpers)
    "live.js": "text/javascript",  # live tagging from the microphone (after app.js: it uses its helpers)
    "mic-worklet.js": "text/javascript",  # the AudioWorklet that hands live.js the microphone's samples
    "style.css": "text/css",
}
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
