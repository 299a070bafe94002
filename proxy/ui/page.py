"""Serves the live page: `GET /ui` (and `GET /tbg?format=html`), its script and its style sheet.

The files are package data of `proxy.ui`, read once per app; the page draws what the proxy's own
`GET /tbg` and `GET /tbg/history` return, so it shows nothing the JSON does not. The content
security policy allows only this origin: the page loads nothing from anywhere else.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources

from aiohttp import web

_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
    "img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
_HEADERS = {"Content-Security-Policy": _CSP, "Cache-Control": "no-cache",
            "X-Content-Type-Options": "nosniff"}  # fmt: skip


@dataclass(frozen=True, slots=True)
class UiFiles:
    page: bytes
    script: bytes
    style: bytes

    @staticmethod
    def load() -> UiFiles:
        root = resources.files("proxy.ui")
        return UiFiles(
            page=root.joinpath("index.html").read_bytes(),
            script=root.joinpath("app.js").read_bytes(),
            style=root.joinpath("style.css").read_bytes(),
        )


UI = web.AppKey("tbg_ui", UiFiles)
PATH = "/ui"


def wants_html(request: web.Request) -> bool:
    """`?format=html`: the page instead of the JSON (GET /tbg)."""
    return request.query.get("format", "").lower() == "html"


def page_response(request: web.Request) -> web.Response:
    return web.Response(body=request.app[UI].page, content_type="text/html", charset="utf-8",
                        headers=_HEADERS)  # fmt: skip


def install_ui(app: web.Application) -> None:
    """Register `/ui`, `/ui/app.js` and `/ui/style.css` (before the proxy's catch-all route)."""
    files = UiFiles.load()
    app[UI] = files

    async def page(request: web.Request) -> web.Response:
        return page_response(request)

    async def script(_request: web.Request) -> web.Response:
        return web.Response(body=files.script, content_type="text/javascript", charset="utf-8",
                            headers=_HEADERS)  # fmt: skip

    async def style(_request: web.Request) -> web.Response:
        return web.Response(body=files.style, content_type="text/css", charset="utf-8",
                            headers=_HEADERS)  # fmt: skip

    async def slash(_request: web.Request) -> web.Response:
        # the page's links are relative to /
        return web.Response(status=308, headers={"Location": PATH})

    app.router.add_get(PATH, page)
    app.router.add_get(PATH + "/", slash)
    app.router.add_get(PATH + "/app.js", script)
    app.router.add_get(PATH + "/style.css", style)
