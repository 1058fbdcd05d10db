"""The HTTP API of ``factlearn serve`` (docs/serve.md): FastAPI routes over the live index.

Routes: ``POST /query`` (images -> top-k facts, micro-batched), ``POST /query/facts`` (a fact text
-> the nearest facts), ``GET /facts``, ``GET /run``, ``GET /health`` and the page at ``/``. Every
error is one JSON object ``{"error": "..."}`` with a 4xx status (a 500 says only that it is
logged): never a traceback.
"""

from __future__ import annotations

import asyncio
import hmac
import io
import logging
import time
from contextlib import asynccontextmanager
from importlib import resources
from pathlib import Path

import torch
from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse
from pydantic import BaseModel
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException

from .. import __version__
from ..data.images import decode_image
from ..errors import UserError
from ..facts import Fact
from ..query import RunIndex
from ..results import Metrics
from .batcher import MicroBatcher
from .live import LiveIndex
from .settings import ServeSettings

logger = logging.getLogger(__name__)

OPEN_PATHS = ("/", "/health")  # answered without the token: the page (no data in it) and liveness


class ApiError(Exception):
    """A request the server refuses: its status and the one-line reason sent back as JSON."""

    def __init__(self, status: int, message: str, **extra: object):
        super().__init__(message)
        self.status, self.extra = status, extra


class FactQuery(BaseModel):
    """The body of ``POST /query/facts``."""

    fact: str  # "<S>", "<S, P>" or "<S, P, O>": fewer slots are wildcards
    top_k: int | None = None
    allow_unknown: bool = False  # embed unknown words with the shared unknown-word vector instead of a 422


def create_app(run_dir: str | Path, settings: ServeSettings = ServeSettings()) -> FastAPI:
    """The app serving ``run_dir``'s newest completed checkpoint, swapped as training goes on.

    The checkpoint is loaded here, so a run directory with no completed task is a UserError
    before anything listens. The swap and micro-batch threads run while the app does (its
    lifespan: use ``with TestClient(app)`` in tests).
    """
    live = LiveIndex(run_dir, lambda task: RunIndex.load(run_dir, task, settings.all_facts, settings.device,
                                                         settings.index_kind), settings.poll_s)
    batcher = MicroBatcher(lambda: live.current, settings.batch_wait_ms / 1000, settings.max_batch)

    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        """The swap and batch threads run while the app does."""
        batcher.start()
        live.start()
        try:
            yield
        finally:
            live.stop()
            batcher.close()

    app = FastAPI(title="factlearn serve", version=__version__, lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.live, app.state.batcher = live, batcher
    app.add_middleware(Guard, token=settings.token, max_body=settings.max_upload_bytes)
    _add_error_handlers(app)

    def checked_k(asked: int | None) -> int:
        """The request's top_k (default --top-k), refused outside 1..max_top_k."""
        k = settings.top_k if asked is None else asked
        if not 1 <= k <= settings.max_top_k:
            raise ApiError(400, f"top_k: expected 1 to {settings.max_top_k}, got {k}")
        return k

    @app.post("/query")
    async def query(request: Request, top_k: int | None = None) -> dict:
        """Per uploaded image (multipart field ``images``, repeated) its top-k facts with cosine scores."""
        k = checked_k(top_k)
        with batcher.expect() as submit:
            form = await request.form(max_files=settings.max_images, max_fields=8)
            uploads = form.getlist("images")
            if not uploads:
                raise ApiError(400, "missing field 'images': upload one or more image files as multipart/form-data")
            if not all(isinstance(u, UploadFile) for u in uploads):
                raise ApiError(400, "field 'images' must hold files, not text")
            names = [(u.filename or f"image {i}")[:200] for i, u in enumerate(uploads)]
            data = [await u.read() for u in uploads]
            # image_size is the run's (config.yaml): the same for every checkpoint a swap can bring
            images = await run_in_threadpool(decode_uploads, data, names, live.current.image_size)
            future = submit(images, k)
        task, hits = await asyncio.wrap_future(future)
        return {"task": task, "top_k": k, "results": [{"image": n, "facts": h} for n, h in zip(names, hits)]}

    @app.post("/query/facts")
    async def query_facts(body: FactQuery) -> dict:
        """The facts of the table nearest a fact text; unknown words are refused unless allowed."""
        k = checked_k(body.top_k)
        try:
            fact = Fact.parse(body.fact)
        except ValueError as exc:
            raise ApiError(400, f"fact: {exc}") from None
        snapshot = live.current  # once: the words checked and the model searched are one checkpoint's
        unknown = snapshot.model.vocab.unknown_words([fact])
        if unknown and not body.allow_unknown:
            raise ApiError(422, f"unknown words in {fact}: {', '.join(unknown)} (the model never saw them; send "
                           "allow_unknown: true to embed them as the unknown-word vector)", unknown_words=unknown)
        hits = await run_in_threadpool(snapshot.search_fact, fact, k)
        return {"task": snapshot.task, "query": str(fact), "unknown_words": unknown, "facts": hits}

    @app.get("/facts")
    def facts() -> dict:
        """The run's fact table: each fact's id, slots, task, and whether it is searched now."""
        snapshot = live.current
        task_of = {f: t.name for t in live.run.tasks() for f in t.facts}
        searched = set(snapshot.ids)
        return {"task": snapshot.task, "facts": [
            {"id": i, "fact": str(f), "slots": list(f.slots), "task": task_of.get(i), "searched": i in searched}
            for i, f in enumerate(snapshot.facts.facts)]}

    @app.get("/run")
    def run() -> dict:
        """The run: method, tasks, the checkpoint being served and the accuracy metrics so far."""
        snapshot = live.current
        info = live.run.require()
        return {"run": live.run.path.name, "method": info.get("method"),
                "tasks": [t.name for t in live.run.tasks()], "completed": live.run.completed(),
                "live": {"task": snapshot.task, "checkpoint": f"checkpoints/{snapshot.task}",
                         "loaded_at": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(snapshot.loaded_at)),
                         "index": snapshot.index.kind, "candidates": len(snapshot.ids)},
                "swap_error": live.swap_error, **_metrics(live.run.path)}

    @app.get("/health")
    def health() -> dict:
        """Liveness: the task being served and the forward passes run so far."""
        return {"status": "ok", "task": live.current.task, "batches": batcher.batches}

    @app.get("/", response_class=HTMLResponse)
    def page() -> str:
        """The page: drop an image, see its facts; the run's accuracy matrix."""
        return resources.files(__package__).joinpath("page.html").read_text(encoding="utf-8")

    return app


def decode_uploads(data: list[bytes], names: list[str], size: int) -> torch.Tensor:
    """Uploaded files -> (N, 3, size, size) uint8 through the file loader's conversion
    (:func:`~factlearn.data.images.pil_to_array`: pixel cap, alpha), so an upload embeds as the
    same file does with ``factlearn query``. Anything else is an ApiError 400 naming the upload."""
    out = []
    for blob, name in zip(data, names):
        try:
            out.append(torch.from_numpy(decode_image(io.BytesIO(blob), size, f"upload {name!r}")).permute(2, 0, 1))
        except UserError as exc:
            raise ApiError(400, str(exc)) from None
    return torch.stack(out)


def _metrics(run_dir: Path) -> dict:
    """``metrics`` (protocol, tasks, matrix and sequence per metric) of metrics.json, or None and why."""
    try:
        m = Metrics.read(run_dir)
    except UserError as exc:
        return {"metrics": None, "metrics_error": str(exc)}
    matrix = m.block()["matrix"]
    return {"metrics": {"protocol": m.protocol, "tasks": m.tasks, "matrix": matrix,
                        "sequence": {name: m.sequence(name) for name in matrix}}}


def _error(status: int, message: str, **extra: object) -> JSONResponse:
    return JSONResponse({"error": message, **extra}, status_code=status)


def _add_error_handlers(app: FastAPI) -> None:
    """Every refusal as ``{"error": ...}`` JSON: ours, the framework's, and a UserError of the library."""

    @app.exception_handler(ApiError)
    async def api_error(_request: Request, exc: ApiError) -> JSONResponse:
        return _error(exc.status, str(exc), **exc.extra)

    @app.exception_handler(HTTPException)
    async def http_error(_request: Request, exc: HTTPException) -> JSONResponse:
        return _error(exc.status_code, str(exc.detail))

    @app.exception_handler(RequestValidationError)
    async def validation_error(_request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = []
        for e in exc.errors():
            where = ".".join(str(p) for p in e.get("loc", ()) if p not in ("body", "query"))
            if e.get("type") == "json_invalid" or not where:
                problems.append("the body must be a JSON object (Content-Type: application/json)")
            else:
                problems.append(f"missing field '{where}'" if e.get("type") == "missing" else f"{where}: {e.get('msg')}")
        return _error(400, "; ".join(dict.fromkeys(problems)) or "malformed request")

    @app.exception_handler(UserError)
    async def user_error(_request: Request, exc: UserError) -> JSONResponse:
        return _error(400, str(exc))

    @app.exception_handler(Exception)
    async def internal_error(_request: Request, exc: Exception) -> JSONResponse:
        logger.error("request failed", exc_info=exc)
        return _error(500, "internal error (logged by the server)")


class UploadTooLarge(ApiError):
    """A request body read past the limit (one without a Content-Length, or lying in it)."""


class Guard:
    """Pure ASGI middleware: the bearer token (when set) on every path but OPEN_PATHS, and the
    request body limit (refused from Content-Length before reading, or as soon as it is passed)."""

    def __init__(self, app, token: str | None, max_body: int):
        self.app, self.token, self.max_body = app, token, max_body

    async def __call__(self, scope, receive, send) -> None:
        """Answer 401 / 413 itself, or pass the request on with a counting ``receive``."""
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope["headers"])
        if self.token is not None and scope["path"] not in OPEN_PATHS and not self._authorised(headers):
            response = JSONResponse({"error": "missing or wrong bearer token (send 'Authorization: Bearer TOKEN')"},
                                    status_code=401, headers={"WWW-Authenticate": "Bearer"})
            return await response(scope, receive, send)
        length = headers.get(b"content-length", b"")
        if length.isdigit() and int(length) > self.max_body:
            return await _error(413, self._too_large())(scope, receive, send)
        seen = 0

        async def counted():
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.max_body:
                raise UploadTooLarge(413, self._too_large())
            return message

        await self.app(scope, counted, send)

    def _authorised(self, headers: dict[bytes, bytes]) -> bool:
        scheme, _, token = headers.get(b"authorization", b"").decode("latin-1").partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(), self.token.encode())

    def _too_large(self) -> str:
        return f"request body over the limit of {self.max_body} bytes (--max-upload-mb)"
