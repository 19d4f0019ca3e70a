"""The audit web app (Starlette, served by uvicorn): read-only pages over one store.

Pages are static files of this package (``static/``); their scripts fetch JSON from ``/api/...`` and
build the page with DOM text nodes (``textContent``), so a string from the store is never parsed as
HTML. Media URLs name store keys (``/media/video/VIDEO_ID``), never paths (curation/audit/files.py).
Every response carries a Content-Security-Policy that allows only this origin's own scripts (no
inline script), so even a string that slipped into markup could not run.

Routes: ``/`` grid, ``/clip/CLIP_ID`` clip page, ``/funnel`` funnel and histograms;
``/api/clips?where=&tab=&sort=&desc=&limit=&offset=&columns=``, ``/api/funnel``,
``/api/histograms``, ``/api/clip/CLIP_ID``, ``/api/waveform/CLIP_ID``; ``/thumb/CLIP_ID``,
``/media/video/VIDEO_ID``, ``/media/clip/CLIP_ID`` (re-encoded span), ``/media/audio/CLIP_ID/ROLE``,
``/media/ref/REF_ID``.
"""
from __future__ import annotations

import contextlib
from importlib import resources

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Route

from curation.audit import clip as clip_data
from curation.audit import funnel, grid
from curation.audit.files import Files, NotServed
from curation.media import MediaError
from curation.sql import InvalidFilter
from curation.stats import funnel as funnel_rows
from curation.store import Store, StoreError, one_line

STATIC = {  # the only static files served: name -> media type
    "grid.html": "text/html", "clip.html": "text/html", "funnel.html": "text/html",
    "audit.css": "text/css", "common.js": "text/javascript", "grid.js": "text/javascript",
    "clip.js": "text/javascript", "funnel.js": "text/javascript",
}
HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; media-src 'self'; "
                               "script-src 'self'; style-src 'self'; object-src 'none'; "
                               "base-uri 'none'; frame-ancestors 'none'; form-action 'self'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}
LOOPBACK = ("127.0.0.1", "localhost")   # (an IPv6 --host gets no Host check)


def _static_file(name: str) -> str:
    return str(resources.files("curation.audit") / "static" / name)


def _not_found(detail: str = "not found") -> JSONResponse:
    return JSONResponse({"error": detail}, status_code=404, headers=HEADERS)


def _bad(e: Exception) -> JSONResponse:
    return JSONResponse({"error": one_line(e)}, status_code=400, headers=HEADERS)


class Handlers:
    """The request handlers over one store (read only) and its servable files."""

    def __init__(self, store_uri: str):
        self.uri = store_uri
        self.store = Store(store_uri)
        self.files = Files(self.store)

    @staticmethod
    def page(name: str):
        async def handler(request: Request) -> Response:
            return FileResponse(_static_file(name), media_type=STATIC[name], headers=HEADERS)
        return handler

    async def static(self, request: Request) -> Response:
        name = request.path_params["name"]
        if name not in STATIC:   # a fixed list of names: no path reaches the file system
            return _not_found()
        return FileResponse(_static_file(name), media_type=STATIC[name], headers=HEADERS)

    def clips(self, request: Request) -> Response:
        q = request.query_params
        try:
            cols = [c.strip() for c in q["columns"].split(",") if c.strip()] if q.get("columns") else None
            data = grid.clip_page(self.store, where=q.get("where"), tab=q.get("tab") or "all",
                                  sort=q.get("sort") or None, descending=q.get("desc") in ("1", "true"),
                                  limit=int(q.get("limit") or 50), offset=int(q.get("offset") or 0),
                                  columns=cols)
        except (InvalidFilter, StoreError, ValueError) as e:
            return _bad(e)
        return _json(data | {"store": self.uri})

    def funnel(self, request: Request) -> Response:
        info, stages = funnel.stages(self.store)
        rows = funnel_rows(self.store, info["workflow_yaml"]) if self.store.exists("clips") else []
        tabs = ["all", "kept"] + [s.name for s in stages if s.applied]
        return _json({"store": self.uri, "run_id": info.get("run_id"), "workflow": info.get("workflow"),
                      "funnel": rows, "tabs": tabs})

    def histograms(self, request: Request) -> Response:
        _, stages = funnel.stages(self.store)
        return _json({"histograms": funnel.histograms(self.store, stages)})

    def clip(self, request: Request) -> Response:
        try:
            return _json(clip_data.detail(self.store, self.uri, request.path_params["clip_id"]))
        except KeyError:
            return _not_found("no such clip")

    def waveform(self, request: Request) -> Response:
        try:
            c = clip_data.one_clip(self.store, request.path_params["clip_id"])
            return _json(clip_data.waveform(self.files.video(c["video_id"]), c["start_s"], c["end_s"]))
        except (KeyError, NotServed):
            return _not_found("no audio for this clip")
        except StoreError as e:   # no audio stream: an empty waveform and why
            return _json({"error": one_line(e), "min": [], "max": []})

    def media(self, kind: str):
        """Files found through the store by key (curation/audit/files.py); anything else is a 404."""
        files = self.files

        def handler(request: Request) -> Response:
            p = request.path_params
            try:
                if kind == "video":
                    return FileResponse(files.video(p["video_id"]), headers=HEADERS)
                if kind == "clip":
                    return FileResponse(files.clip_mp4(p["clip_id"]), media_type="video/mp4", headers=HEADERS)
                if kind == "audio":
                    return FileResponse(files.role_audio(p["clip_id"], p["role"]), media_type="audio/wav",
                                        headers=HEADERS)
                if kind == "ref":
                    return Response(files.reference(p["ref_id"]), media_type="image/jpeg", headers=HEADERS)
                return Response(files.thumbnail(p["clip_id"]), media_type="image/jpeg",
                                headers=HEADERS | {"Cache-Control": "max-age=600"})
            except (NotServed, MediaError, OSError, StoreError):
                return _not_found()
        return handler

    def routes(self) -> list[Route]:
        return [
            Route("/", self.page("grid.html")), Route("/funnel", self.page("funnel.html")),
            Route("/clip/{clip_id}", self.page("clip.html")), Route("/static/{name}", self.static),
            Route("/api/clips", self.clips), Route("/api/funnel", self.funnel),
            Route("/api/histograms", self.histograms), Route("/api/clip/{clip_id}", self.clip),
            Route("/api/waveform/{clip_id}", self.waveform),
            Route("/thumb/{clip_id}", self.media("thumb")), Route("/media/video/{video_id}", self.media("video")),
            Route("/media/clip/{clip_id}", self.media("clip")),
            Route("/media/audio/{clip_id}/{role}", self.media("audio")),
            Route("/media/ref/{ref_id}", self.media("ref")),
        ]


def build_app(store_uri: str, host: str = "127.0.0.1") -> Starlette:
    """The app over the store at ``store_uri``, served on ``host``. On a loopback address the Host
    header must name it too (127.0.0.1 or localhost), so a web page elsewhere cannot reach the app
    by rebinding a name of its own to 127.0.0.1."""
    h = Handlers(store_uri)
    middleware = []
    if host in LOOPBACK:
        middleware.append(Middleware(TrustedHostMiddleware, allowed_hosts=["127.0.0.1", "localhost"]))

    @contextlib.asynccontextmanager
    async def lifespan(app):
        yield
        h.files.close()   # the thumbnails and re-encoded spans of this server

    app = Starlette(routes=h.routes(), middleware=middleware, lifespan=lifespan, exception_handlers={404: _404})
    app.state.store, app.state.files = h.store, h.files
    return app


async def _404(request: Request, exc) -> Response:
    return JSONResponse({"error": "not found"}, status_code=404, headers=HEADERS)


def _json(data: dict) -> JSONResponse:
    return JSONResponse(data, headers=HEADERS)


def check_port(host: str, port: int) -> None:
    """Fail with one line when HOST:PORT cannot be listened on (in use, or not an address here)."""
    import socket
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as e:
            raise StoreError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None


def serve(store_uri: str, host: str = "127.0.0.1", port: int = 8765, on_ready=None) -> None:
    """Serve the app until interrupted (``on_ready(url)`` is called once the socket listens)."""
    import uvicorn
    if not Store(store_uri).tables():
        raise StoreError(f"no store at {store_uri} (no tables found)")
    app = build_app(store_uri, host)
    config = uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False)
    server = uvicorn.Server(config)
    if on_ready is not None:
        shown = f"[{host}]" if ":" in host else host
        original = server.startup

        async def startup(sockets=None):
            await original(sockets=sockets)
            if server.started:
                on_ready(f"http://{shown}:{port}/")
        server.startup = startup
    server.run()
