"""The docs page at / and the OpenAPI document at /docs.json, served from memory.

BentoML's stock page loads Google Tag Manager in the reader's browser (a tracker on an internal
API's docs, and a failed request in a private network), says "Powered by BentoML" and hides the
API's title. This page is Swagger UI from the pinned swagger-ui-py package's own files, served by
this server: the page's Content-Security-Policy lets the browser load and send nothing anywhere
else. Title and description are the OpenAPI document's; with XGB_API_KEY set the document declares
the X-API-Key scheme (openapi.py), so the page shows "Authorize" and "Try it out" sends the key.
"""

from __future__ import annotations

import dataclasses
import gzip
import html
from importlib.util import find_spec
from pathlib import Path
from typing import Any

import orjson

# The Swagger UI files the page loads, by the path they are served at: (file in swagger_ui/static, type).
ASSETS = {
    "/docs/swagger-ui.css": ("swagger-ui.css", b"text/css; charset=utf-8"),
    "/docs/swagger-ui-bundle.js": ("swagger-ui-bundle.js", b"text/javascript; charset=utf-8"),
    "/docs/favicon-32x32.png": ("favicon-32x32.png", b"image/png"),
}
# Swagger UI's files change only with the pinned package: a browser may keep them a day, and they are
# sent gzipped to a client that accepts it (the script is the page's bulk). The page and the documents
# describe the served model and settings: never kept.
ASSET_CACHE_CONTROL = b"public, max-age=86400"
# Swagger UI styles its elements inline and shows its icons as data: URIs; everything else is this server's.
CONTENT_SECURITY_POLICY = (
    b"default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; "
    b"frame-ancestors 'none'; form-action 'self'; base-uri 'none'"
)
# No validator badge (it would send the document to validator.swagger.io); the API's operations only.
INIT_SCRIPT = b"""window.onload = function () {
  window.ui = SwaggerUIBundle({
    url: "/docs.json", dom_id: "#swagger-ui", deepLinking: true, validatorUrl: null,
    presets: [SwaggerUIBundle.presets.apis], layout: "BaseLayout",
  });
};
"""
PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <title>{title}</title>
  <link rel="stylesheet" href="/docs/swagger-ui.css">
  <link rel="icon" type="image/png" href="/docs/favicon-32x32.png">
</head>
<body>
  <div id="swagger-ui"></div>
  <script src="/docs/swagger-ui-bundle.js"></script>
  <script src="/docs/init.js"></script>
</body>
</html>
"""


@dataclasses.dataclass(frozen=True)
class Page:
    content_type: bytes
    body: bytes
    headers: tuple[tuple[bytes, bytes], ...] = ()
    cache_control: bytes = b"no-store"
    keyed: bool = False  # with XGB_API_KEY set, answered only with the key
    gzipped: bytes | None = None  # the body gzipped, for a client whose Accept-Encoding takes gzip

    def response_for(self, accept_encoding: bytes) -> tuple[bytes, list[tuple[bytes, bytes]]]:
        """The body to send, and its headers beyond content type, length and cache control."""
        if self.gzipped is None:
            return self.body, list(self.headers)
        if accepts_gzip(accept_encoding):
            return self.gzipped, [*self.headers, (b"vary", b"accept-encoding"), (b"content-encoding", b"gzip")]
        return self.body, [*self.headers, (b"vary", b"accept-encoding")]


def accepts_gzip(accept_encoding: bytes) -> bool:
    """Whether an Accept-Encoding header value takes gzip (and does not refuse it with q=0)."""
    for item in accept_encoding.lower().split(b","):
        coding, _, params = item.partition(b";")
        if coding.strip() in (b"gzip", b"*"):
            params = params.strip()
            if not params.startswith(b"q="):
                return True
            try:
                return float(params[2:]) > 0
            except ValueError:  # a malformed weight: the plain body, which every client reads
                return False
    return False


def swagger_ui_static() -> Path:
    """swagger-ui-py's static files (found without importing the package, which serves web frameworks we do not use)."""
    spec = find_spec("swagger_ui")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("swagger-ui-py is not installed: run `make install` (it is pinned in requirements*.in)")
    return Path(spec.submodule_search_locations[0]) / "static"


def pages(openapi: dict[str, Any]) -> dict[str, Page]:
    """Every path of the docs: /, its script and Swagger UI's files, and /docs.json."""
    static = swagger_ui_static()
    title = html.escape(openapi["info"]["title"])
    served = {}
    for path, (name, kind) in ASSETS.items():
        body = (static / name).read_bytes()
        served[path] = Page(kind, body, cache_control=ASSET_CACHE_CONTROL, gzipped=gzip.compress(body, 9, mtime=0))
    return {
        "/": Page(b"text/html; charset=utf-8", PAGE.format(title=title).encode(), ((b"content-security-policy", CONTENT_SECURITY_POLICY),)),
        "/docs/init.js": Page(b"text/javascript; charset=utf-8", INIT_SCRIPT),
        "/docs.json": Page(b"application/json", orjson.dumps(openapi)),
        **served,
    }
