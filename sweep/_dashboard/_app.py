"""The dashboard's web app: read-only JSON endpoints over the store, three pages, and every
asset served from installed packages (no CDN: it works on an air-gapped cluster).

Safe by default: only GET and HEAD; a token, when set, is required on every request
(``Authorization: Bearer``, or a cookie set by opening the printed ``?token=`` URL once); a
loopback app answers only requests addressed to a loopback name (no DNS rebinding); every page
forbids scripts and connections to other origins.
"""

from __future__ import annotations

import json
import logging
import secrets
from collections.abc import Awaitable, Callable
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.middleware import Middleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import FileResponse, PlainTextResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from storage import StorageError, Store, SweepNotFoundError, WhereError
from sweep._config import ConfigError
from sweep._dashboard import _charts, _views
from sweep._dashboard._reader import DashboardError, Reader

log = logging.getLogger("sweep.dashboard")

STATIC = Path(str(resources.files("sweep._dashboard") / "static"))
PLOTLY_JS = Path(str(resources.files("plotly") / "package_data" / "plotly.min.js"))
LOOPBACK_NAMES = ["127.0.0.1", "localhost", "::1", "[::1]"]
TOKEN_COOKIE = "sweep_dashboard_token"
SECURITY_HEADERS = {
    # Plotly sets inline styles; nothing else inline, nothing from another origin.
    "content-security-policy": (
        "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
        "img-src 'self' data: blob:; connect-src 'self'; object-src 'none'; "
        "base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
    ),
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "x-frame-options": "DENY",
}
Handler = Callable[[Request], Awaitable[Response]]


def _json(body: Any, status: int = 200) -> Response:
    text = json.dumps(body, allow_nan=False, separators=(",", ":"))
    return Response(text, status_code=status, media_type="application/json")


def _error(status: int, message: str) -> Response:
    return _json({"error": " ".join(message.split())}, status)


def _as_json(request: Request, body: Any) -> Response:
    return _json(body)


def _endpoint(
    view: Callable[[Request], Any], render: Callable[[Request, Any], Response] = _as_json
) -> Handler:
    """An endpoint: the view runs in a worker thread (the store is synchronous) and its answer
    is rendered (JSON by default); a user's mistake is 400, a missing sweep or trial 404, a
    store that fails 503, each one line of JSON."""

    async def handle(request: Request) -> Response:
        try:
            answer = await run_in_threadpool(view, request)
        except SweepNotFoundError as exc:
            return _error(404, str(exc))
        except (DashboardError, WhereError, ConfigError) as exc:
            return _error(400, str(exc))
        except StorageError as exc:
            return _error(503, str(exc))
        return render(request, answer)

    return handle


def _int(request: Request, name: str, default: int) -> int:
    text = request.query_params.get(name)
    if text is None or text == "":
        return default
    try:
        return int(text)
    except ValueError:
        raise DashboardError(f"{name}: {text!r} is not a whole number") from None


def _routes(reader: Reader) -> list[Route | Mount]:
    def name(request: Request) -> str:
        return str(request.path_params["name"])

    def number(request: Request) -> int:
        return int(request.path_params["number"])

    def query(request: Request, key: str) -> str | None:
        return request.query_params.get(key)

    def page(file: str) -> Handler:
        async def serve(request: Request) -> Response:
            return FileResponse(STATIC / file, headers={"cache-control": "no-cache"})

        return serve

    def recipe(request: Request) -> Any:
        return _views.recipe(reader, name(request), number(request))

    def download(request: Request, document: Any) -> Response:
        file_name = _views.recipe_file_name(name(request), number(request))
        return Response(
            json.dumps(document, indent=2) + "\n",
            media_type="application/json",
            headers={"content-disposition": f'attachment; filename="{file_name}"'},
        )

    def sweep_list(request: Request) -> Any:
        return _views.sweeps(reader)

    def sweep(request: Request) -> Any:
        return _views.sweep(reader, name(request))

    def front(request: Request) -> Any:
        x = query(request, "x") or "compressed_bytes"
        y = query(request, "y") or "accuracy"
        return _charts.front(reader, name(request), x, y, query(request, "where"))

    def hypervolume(request: Request) -> Any:
        return _charts.hypervolume(reader, name(request))

    def heatmap(request: Request) -> Any:
        return _charts.heatmap(reader, name(request))

    def sensitivity(request: Request) -> Any:
        info = reader.store.get_sweep(name(request))
        return _charts.sensitivity(reader, info)

    def recommend(request: Request) -> Any:
        return _views.recommendation(
            reader,
            name(request),
            max_drop=query(request, "max_drop"),
            max_latency_ms=query(request, "max_latency_ms"),
            max_size=query(request, "max_size"),
            minimize=query(request, "minimize"),
        )

    def trial(request: Request) -> Any:
        return _views.trial(reader, name(request), number(request))

    def trials(request: Request) -> Any:
        return _views.trial_page(
            reader,
            name(request),
            where=query(request, "where"),
            state=query(request, "state"),
            offset=_int(request, "offset", 0),
            limit=_int(request, "limit", 50),
            newest_first=query(request, "order") != "oldest",
        )

    api = "/api/sweeps/{name:path}"
    endpoints: list[tuple[str, Callable[[Request], Any]]] = [
        ("/api/sweeps", sweep_list),
        (f"{api}/front", front),
        (f"{api}/hypervolume", hypervolume),
        (f"{api}/layers", heatmap),
        (f"{api}/sensitivity", sensitivity),
        (f"{api}/recommend", recommend),
        (f"{api}/trials/{{number:int}}", trial),
        (f"{api}/trials", trials),
        (api, sweep),
    ]
    return [
        Route(f"{api}/trials/{{number:int}}/recipe.json", _endpoint(recipe, download)),
        *(Route(path, _endpoint(view)) for path, view in endpoints),
        Route("/static/plotly.min.js", _plotly),
        Mount("/static", StaticFiles(directory=STATIC)),
        Route("/sweeps/{name:path}/trials/{number:int}", page("trial.html")),
        Route("/sweeps/{name:path}", page("sweep.html")),
        Route("/", page("index.html")),
    ]


async def _plotly(request: Request) -> Response:
    return FileResponse(PLOTLY_JS, headers={"cache-control": "public, max-age=86400"})


class _Guard:
    """Every response gets the security headers; with a token, every request must carry it."""

    def __init__(self, app: ASGIApp, token: str | None) -> None:
        self.app, self.token = app, token

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request = Request(scope)
        if self.token is not None:
            given = request.query_params.get("token")
            if given is not None and secrets.compare_digest(given, self.token):
                # The token leaves the address bar (and the history) for a cookie.
                rest = [(k, v) for k, v in request.query_params.multi_items() if k != "token"]
                location = request.url.path + (f"?{urlencode(rest)}" if rest else "")
                response = Response(status_code=303, headers={"location": location})
                response.set_cookie(TOKEN_COOKIE, self.token, httponly=True, samesite="strict")
                await self._send_secured(response, scope, receive, send)
                return
            if not _carries(request, self.token):
                response = PlainTextResponse(
                    "a token is required: open the address `sweep dashboard` printed "
                    "(?token=...), or send Authorization: Bearer TOKEN",
                    status_code=401,
                )
                await self._send_secured(response, scope, receive, send)
                return

        async def secured(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                headers += [(k.encode(), v.encode()) for k, v in SECURITY_HEADERS.items()]
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, secured)

    async def _send_secured(
        self, response: Response, scope: Scope, receive: Receive, send: Send
    ) -> None:
        response.headers.update(SECURITY_HEADERS)
        await response(scope, receive, send)


def _carries(request: Request, token: str) -> bool:
    """The request carries the token: as its cookie, or as ``Authorization: Bearer TOKEN``."""
    scheme, _, value = request.headers.get("authorization", "").partition(" ")
    offered = [request.cookies.get(TOKEN_COOKIE, "")]
    if scheme.lower() == "bearer":
        offered.append(value.strip())
    return any(secrets.compare_digest(item, token) for item in offered if item)


def create_app(store: Store, *, token: str | None = None, loopback: bool = True) -> Starlette:
    """The dashboard over ``store``. ``token``: required on every request when given.
    ``loopback``: answer only requests addressed to 127.0.0.1, localhost or ::1."""
    reader = Reader(store)
    reader.submit(_charts.warm, reader)
    middleware = [Middleware(_Guard, token=token)]
    if loopback:
        middleware.append(Middleware(TrustedHostMiddleware, allowed_hosts=LOOPBACK_NAMES))
    return Starlette(routes=_routes(reader), middleware=middleware)
