"""REST service: ``POST /search``, ``POST /embed``, ``GET /health`` over one workspace, with OpenAPI docs.

``create_app(settings)`` builds the FastAPI app and does no heavy work: the workspace (prepared data,
featurizer, gallery embeddings, rankers) opens once at start-up through the app's lifespan, with
``workbench.workspace.open_workspace``, exactly as the CLI and the app open it.

Input limits, each answered with ``{"error": {"code", "message"}}`` and never a stack trace:

* request body over ``max_upload_bytes`` (plus a little multipart overhead): 413 ``upload_too_large``,
  checked from ``Content-Length`` and again while the body streams in, so an oversize upload is cut
  off instead of spooled;
* more than ``max_pixels`` (read from the image header before decoding; ``core.images`` keeps its own
  decompression-bomb guard behind it): 413 ``image_too_large``;
* bytes that no decoder recognises (text, PDF...), whatever the file name or declared type: 415
  ``unsupported_media_type``; an empty upload: 400 ``empty_upload``; a recognised but truncated or
  corrupt image, or one too small to rank: 422 ``invalid_image``;
* bad form fields (``k`` outside 1..100, an unknown ranker, a missing file): 422 ``invalid_request``;
  a learned ranker (``svm``, ``siamese``) before it was fitted for this featurizer: 422 ``ranker_unavailable``.

``/openapi.json`` works offline; the interactive ``/docs`` page loads Swagger UI's JavaScript and CSS from
a CDN, so it renders only where the browser can reach one.

Run it with ``python -m workbench serve --port 8000``; it listens on 127.0.0.1 unless ``--host`` says otherwise.
"""

import io
import logging
import time
import warnings
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import anyio
import numpy as np
from fastapi import FastAPI, File, Form, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from core.pipeline import SearchHit
from core.rankers import list_rankers
from workbench.workspace import Workspace, WorkspaceSpec, open_workspace

if TYPE_CHECKING:
    from PIL import Image

log = logging.getLogger(__name__)

#: Room for the multipart envelope and the small form fields around the image.
MULTIPART_SLACK_BYTES = 64 * 1024


@dataclass(frozen=True)
class ServeSettings:
    """What the service serves and the limits it enforces.

    Attributes:
        workspace: The workspace to serve (dataset, condition, workdir, featurizer, back end, config), opened
            exactly as the CLI and the app open it.
        max_upload_bytes: Largest accepted image file.
        max_pixels: Largest accepted image, width x height, read from its header before decoding.
        max_k: Most results one search may ask for.
        inference_threads: Queries decoded and embedded at once; more wait their turn.
    """

    workspace: WorkspaceSpec = field(default_factory=WorkspaceSpec)
    max_upload_bytes: int = 10 * 1024 * 1024
    max_pixels: int = 40_000_000
    max_k: int = 100
    inference_threads: int = 2


#: The rankers a search can name: the registry's, as an enum so the OpenAPI document lists them.
RankerName = StrEnum("RankerName", {name: name for name in list_rankers()})  # type: ignore[misc]
DEFAULT_RANKER = RankerName("cosine")


class ApiError(Exception):
    """An error answered as ``{"error": {"code", "message"}}`` with an HTTP status."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def load_workspace(settings: ServeSettings) -> Workspace:
    """Open the served workspace (see :func:`workbench.workspace.open_workspace`).

    Raises:
        WorkbenchError: The dataset, a saved artifact or the exported model is unusable.
    """
    ws = open_workspace(settings.workspace)
    log.info(
        "serving %d gallery images with %s (%s); rankers: %s",
        len(ws.embeddings), ws.fingerprint, ws.backend, ", ".join(ws.rankers_on_offer()),
    )  # fmt: skip
    return ws


class ErrorBody(BaseModel):
    """What went wrong."""

    code: str = Field(description="machine-readable error kind, e.g. `unsupported_media_type`")
    message: str = Field(description="one line for a person, naming the upload and the problem")


class ErrorResponse(BaseModel):
    """Every error answer: ``{"error": {"code", "message"}}``."""

    error: ErrorBody


class Health(BaseModel):
    """Liveness and what is being served."""

    status: str
    fingerprint: str = Field(description="featurizer id (model, weights, preprocessing)")
    backend: str = Field(description="`onnx` or `torch`")
    gallery_size: int
    embedding_dim: int
    rankers: list[str]


class Embedding(BaseModel):
    """One image's embedding."""

    fingerprint: str
    backend: str
    dim: int
    embedding: list[float] = Field(description="L2-normalised feature vector")


class Hit(BaseModel):
    """One retrieved gallery image."""

    rank: int = Field(ge=1)
    label: str
    path: str = Field(description="path relative to the dataset folder")
    score: float = Field(description="higher = more similar")


class Timing(BaseModel):
    """Where a search spent its time, in milliseconds."""

    decode_ms: float
    search_ms: float = Field(description="embedding the query and ranking the gallery")
    total_ms: float


class SearchResponse(BaseModel):
    """Hits for one query image, best first."""

    fingerprint: str
    ranker: str
    k: int
    hits: list[Hit]
    timing: Timing


def check_image(data: bytes, name: str, max_pixels: int) -> "Image.Image":
    """Decode upload bytes into upright RGB, classifying every failure for the HTTP answer.

    Raises:
        ApiError: 400 empty, 415 not an image, 413 too many pixels, 422 corrupt/truncated/too small.
    """
    from PIL import Image, UnidentifiedImageError

    from core.errors import ImageLoadError
    from core.images import decode_image

    if not data:
        raise ApiError(400, "empty_upload", f"{name}: empty file (0 bytes)")
    try:  # the header alone: format and size, no pixel data decoded yet
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as header:
                width, height = header.size
    except UnidentifiedImageError as err:
        raise ApiError(415, "unsupported_media_type", f"{name}: not a recognised image format") from err
    except Image.DecompressionBombError as err:
        raise ApiError(413, "image_too_large", f"{name}: image too large to decode") from err
    except (OSError, SyntaxError, ValueError) as err:
        raise ApiError(422, "invalid_image", f"{name}: corrupt image header ({err})") from err
    if width * height > max_pixels:
        raise ApiError(413, "image_too_large", f"{name}: {width}x{height} px is over the limit of {max_pixels} pixels")
    try:
        return decode_image(data, name=name)
    except ImageLoadError as err:
        raise ApiError(422, "invalid_image", str(err)) from err


def _upload_name(filename: str | None) -> str:
    """The client's file name without any directory part, for messages."""
    name = Path((filename or "").replace("\\", "/")).name
    return name[:120] or "upload"


def create_app(settings: ServeSettings = ServeSettings()) -> FastAPI:
    """The FastAPI app for ``settings``; the workspace loads when the app starts (lifespan)."""
    errors: dict[int | str, dict[str, Any]] = {status: {"model": ErrorResponse} for status in (400, 413, 415, 422, 500)}
    limiter = anyio.CapacityLimiter(max(1, settings.inference_threads))

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.workspace = await anyio.to_thread.run_sync(load_workspace, settings)
        yield

    app = FastAPI(
        title="Similarity workbench",
        version="1",
        summary="Find the gallery images most similar to an uploaded photo.",
        lifespan=lifespan,
    )
    app.add_middleware(_BodyLimit, max_bytes=settings.max_upload_bytes + MULTIPART_SLACK_BYTES)

    def error_response(status: int, code: str, message: str) -> JSONResponse:
        return JSONResponse({"error": {"code": code, "message": message}}, status_code=status)

    @app.exception_handler(ApiError)
    async def api_error(request: Request, err: ApiError) -> JSONResponse:
        return error_response(err.status, err.code, err.message)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, err: RequestValidationError) -> JSONResponse:
        parts = []
        for item in err.errors():
            where = ".".join(str(part) for part in item.get("loc", ()) if part not in ("body", "query"))
            parts.append(f"{where}: {item.get('msg', 'invalid')}" if where else str(item.get("msg", "invalid")))
        return error_response(422, "invalid_request", "; ".join(parts) or "invalid request")

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, err: StarletteHTTPException) -> JSONResponse:
        codes = {400: "bad_request", 404: "not_found", 405: "method_not_allowed", 413: "upload_too_large"}
        response = error_response(
            err.status_code, codes.get(err.status_code, f"http_{err.status_code}"), str(err.detail)
        )
        response.headers.update(err.headers or {})
        return response

    @app.exception_handler(Exception)
    async def internal_error(request: Request, err: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return error_response(500, "internal_error", "internal server error; see the server log")

    async def read_upload(file: UploadFile) -> tuple[bytes, str]:
        name = _upload_name(file.filename)
        data = await file.read(settings.max_upload_bytes + 1)
        if len(data) > settings.max_upload_bytes:
            raise ApiError(413, "upload_too_large", f"{name}: larger than {settings.max_upload_bytes} bytes")
        return data, name

    def workspace(request: Request) -> Workspace:
        ws: Workspace = request.app.state.workspace
        return ws

    @app.get("/health", response_model=Health, tags=["service"])
    async def health(request: Request) -> Health:
        """Liveness and what is being served."""
        ws = workspace(request)
        return Health(
            status="ok",
            fingerprint=ws.fingerprint,
            backend=ws.backend,
            gallery_size=len(ws.embeddings),
            embedding_dim=int(ws.embeddings.shape[1]),
            rankers=ws.rankers_on_offer(),
        )

    @app.post("/embed", response_model=Embedding, responses=errors, tags=["search"])
    async def embed(
        request: Request, file: Annotated[UploadFile, File(description="an image (JPEG, PNG, WebP...)")]
    ) -> Embedding:
        """The L2-normalised embedding of an uploaded image."""
        ws = workspace(request)
        data, name = await read_upload(file)

        def work() -> np.ndarray:
            return ws.embed([check_image(data, name, settings.max_pixels)])[0]

        vector = await anyio.to_thread.run_sync(work, limiter=limiter)
        return Embedding(fingerprint=ws.fingerprint, backend=ws.backend, dim=len(vector), embedding=vector.tolist())

    @app.post("/search", response_model=SearchResponse, responses=errors, tags=["search"])
    async def search(
        request: Request,
        file: Annotated[UploadFile, File(description="the query image")],
        k: Annotated[int, Form(ge=1, le=settings.max_k, description="how many results")] = 10,
        ranker: Annotated[
            RankerName, Form(description="learned rankers only once fitted for this featurizer")
        ] = DEFAULT_RANKER,
    ) -> SearchResponse:
        """The ``k`` gallery images most similar to an uploaded image, best first, with scores."""
        ws = workspace(request)
        if ranker.value not in ws.rankers_on_offer():
            raise ApiError(422, "ranker_unavailable", f"ranker {ranker.value!r} is not fitted for {ws.fingerprint}")
        data, name = await read_upload(file)

        def work() -> tuple[list[SearchHit], float, float]:
            start = time.perf_counter()
            image = check_image(data, name, settings.max_pixels)
            decoded = time.perf_counter()
            hits = ws.search(image, ranker.value, k)
            return hits, decoded - start, time.perf_counter() - decoded

        start = time.perf_counter()
        hits, decode_s, search_s = await anyio.to_thread.run_sync(work, limiter=limiter)
        return SearchResponse(
            fingerprint=ws.fingerprint,
            ranker=ranker.value,
            k=k,
            hits=[Hit(rank=h.rank, label=h.record.label, path=ws.relative_path(h.record), score=h.score) for h in hits],
            timing=Timing(
                decode_ms=decode_s * 1e3, search_ms=search_s * 1e3, total_ms=(time.perf_counter() - start) * 1e3
            ),
        )

    return app


class _BodyLimit:
    """ASGI middleware: refuse request bodies over ``max_bytes``, from ``Content-Length`` or while streaming.

    The 413 is raised from ``receive`` as an HTTP exception, so it reaches the app's structured error
    handler; a route that never reads the body is unaffected.
    """

    def __init__(self, app, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        from starlette.exceptions import HTTPException

        declared = dict(scope.get("headers") or []).get(b"content-length")
        too_large = f"request body over {self.max_bytes} bytes"
        received = 0

        async def limited_receive():
            nonlocal received
            if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
                raise HTTPException(413, too_large)
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise HTTPException(413, too_large)
            return message

        await self.app(scope, limited_receive, send)


def serve(settings: ServeSettings, host: str = "127.0.0.1", port: int = 8000, log_level: str = "info") -> None:
    """Run the service with uvicorn until interrupted."""
    import uvicorn

    logging.basicConfig(level=log_level.upper(), format="%(levelname)s %(name)s %(message)s")
    uvicorn.run(create_app(settings), host=host, port=port, log_level=log_level)
