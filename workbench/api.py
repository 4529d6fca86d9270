"""REST service: ``POST /search``, ``POST /embed``, ``GET /health`` over one workspace, with OpenAPI docs.

``create_app(settings)`` builds the FastAPI app and does no heavy work: the workspace (prepared data,
featurizer, gallery embeddings, rankers) opens once at start-up through the app's lifespan, with
``workbench.workspace.open_workspace``, exactly as the CLI and the app open it.

Input limits, each answered with ``{"error": {"code", "message"}}`` and never a stack trace:

* request body over the upload limit (``[uploads] max_file_bytes`` plus a little multipart overhead): 413
  ``upload_too_large``, checked from ``Content-Length`` and again while the body streams in, so an oversize
  upload is cut off instead of spooled; a body not delivered within ``body_timeout_s``: 408;
* more pixels than the upload limits allow, read from the header before any pixel is decoded: 413
  ``image_too_large``;
* anything but JPEG, PNG, WebP, GIF, BMP or TIFF (text, PDF, PostScript...), whatever the file name or
  declared type: 415 ``unsupported_media_type``; an empty upload: 400 ``empty_upload``; a truncated or
  corrupt image, or one too small to rank: 422 ``invalid_image``;
* costly images (over ``heavy_pixels`` once decoded) are decoded one at a time at low CPU priority, beside
  the ordinary slots; when too many wait: 503 ``server_busy`` with ``Retry-After``;
* bad form fields (``k`` outside 1..100, an unknown ranker, a missing file, a ``fuse`` item that is not
  ``MEANING=WEIGHT``, a meaning the dataset lacks, weights negative or all 0, ``fuse`` beside another ranker or a
  look weight): 422 ``invalid_request``; ``fuse`` on a dataset without an ``attributes.csv`` to fuse (or with an
  unusable one), or weighing a meaning whose ranker cannot be fitted: 422 ``fusion_unavailable``;
  a learned ranker (``svm``, ``projection``) before it was fitted for this featurizer, or whose saved file is
  damaged or does not fit the featurizer (checked before the upload is decoded): 422 ``ranker_unavailable`` (the
  server log names the file and the command that refits it); likewise a fused search weighing a meaning whose ranker
  is missing or stale: the service never fits one on a request, the message names ``python -m workbench fit
  --fusion``;
* any other unusable saved artifact: 503 ``artifact_unavailable``; no library error is ever a 500;
* a client (by address) that earned more than ``refusal_burst`` refusals (4xx answers) at more than
  ``refusals_per_s``: 429 ``too_many_refusals`` with ``Retry-After``, answered after ``refusal_delay_s`` without
  reading the body, so a flood of refused uploads cannot starve the good clients. A body declared over the upload
  limit is refused (413) before any routing, and its connection closed.

``/openapi.json`` works offline; the interactive ``/docs`` page loads Swagger UI's JavaScript and CSS from
a CDN, so it renders only where the browser can reach one.

Run it with ``python -m workbench serve --port 8000``; it listens on 127.0.0.1 unless ``--host`` says otherwise.
"""

import asyncio
import logging
import os
import threading
import time
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import anyio
from fastapi import FastAPI, File, Form, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from PIL import Image
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from core.attributes import ATTRIBUTES_FILE
from core.config import ImageLimits
from core.errors import ArtifactError, ImageLoadError, ImageTooLargeError, UnsupportedImageError, WorkbenchError
from core.fusion import FusionRanker
from core.images import ImageHeader, decode_image, printable, probe_image
from core.rankers import list_rankers, ranker_spec
from workbench import attribute_fusion
from workbench.workflows import since_fit
from workbench.workspace import RankerUnavailableError, Workspace, WorkspaceSpec, open_workspace

log = logging.getLogger(__name__)

#: Room for the multipart envelope and the small form fields around the image.
MULTIPART_SLACK_BYTES = 64 * 1024


@dataclass(frozen=True)
class ServeSettings:
    """What the service serves and the limits it enforces.

    Upload size and pixel ceilings are the workspace config's ``uploads`` limits (``[uploads]`` in TOML,
    ``--max-upload-mb`` / ``--max-pixels`` on ``serve``), the same as the app's.

    Attributes:
        workspace: The workspace to serve (dataset, condition, workdir, featurizer, back end, config), opened
            exactly as the CLI and the app open it.
        max_k: Most results one search may ask for.
        inference_threads: Queries decoded and embedded at once; more wait their turn.
        heavy_pixels: Uploads that decode to more pixels than this are decoded in one separate lane at low CPU
            priority, so a few costly images cannot hold the slots of ordinary ones.
        heavy_queue: Heavy uploads waiting for that lane at most; more are answered 503 with Retry-After.
        header_timeout_s: A connection must deliver its request line and headers within this time.
        body_timeout_s: A request must deliver its whole body within this time (408 otherwise).
        max_connections: Concurrent connections and requests; more are answered 503 by the server.
        refusal_burst: Refusals (4xx answers) one client address may earn at once before it is answered 429.
        refusals_per_s: How fast a client's refusal budget refills.
        refusal_delay_s: How long a 429 waits before it is sent (an idle wait: it slows a flooding client that
            ignores ``Retry-After`` down to one request per delay per connection, at no CPU cost).
    """

    workspace: WorkspaceSpec = field(default_factory=WorkspaceSpec)
    max_k: int = 100
    inference_threads: int = 2
    heavy_pixels: int = 4_000_000
    heavy_queue: int = 32
    header_timeout_s: float = 10.0
    body_timeout_s: float = 30.0
    max_connections: int = 200
    refusal_burst: int = 20
    refusals_per_s: float = 2.0
    refusal_delay_s: float = 1.0
    #: How often (at most) a request checks the dataset folder for changes (seconds).
    folder_check_s: float = 1.0

    def __post_init__(self) -> None:
        if self.refusal_burst < 1 or not self.refusals_per_s > 0 or not self.refusal_delay_s >= 0:
            raise ValueError(
                "ServeSettings: refusal_burst must be >= 1, refusals_per_s > 0 and refusal_delay_s >= 0, got "
                f"{self.refusal_burst}, {self.refusals_per_s}, {self.refusal_delay_s}"
            )

    @property
    def limits(self) -> ImageLimits:
        """Upload ceilings, checked from the size and the header before any pixel is decoded."""
        return self.workspace.config.uploads


#: The rankers a search can name: the registry's, as an enum so the OpenAPI document lists them.
RankerName = StrEnum("RankerName", {name: name for name in list_rankers()})  # type: ignore[misc]
DEFAULT_RANKER = RankerName("cosine")
#: The ranker field's OpenAPI text: each ranker with what its score means (the registry's lines).
RANKER_DESCRIPTION = (
    "which ranker orders the gallery; learned rankers only once fitted for this featurizer. What each score means:\n"
    + "\n".join(f"- `{name}`: {ranker_spec(name).score_meaning}" for name in list_rankers())
)


class ApiError(Exception):
    """An error answered as ``{"error": {"code", "message"}}`` with an HTTP status."""

    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.headers = status, code, message, headers or {}


@dataclass(frozen=True)
class FusedSearch:
    """A fused search, checked and ready before the upload is decoded.

    Attributes:
        model: The fused ranker.
        score_meaning: What its score is (:func:`workbench.attribute_fusion.fusion_score_meaning`).
        shares: Each meaning's share of the score, by its ``fuse`` name.
    """

    model: FusionRanker
    score_meaning: str
    shares: dict[str, float]


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
    since_fit: str | None = Field(
        default=None,
        description="what changed in the dataset since the learned rankers were fitted, and which are stale; "
        "null when they are current",
    )


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
    score: float = Field(description="higher = more similar; what the number is: the response's `score_meaning`")
    agreement: float | None = Field(
        None, description="label agreement part of the score, -1..1 (rankers that blend it with the look: projection)"
    )
    look: float | None = Field(None, description="look part of the score: cosine of the embeddings, -1..1")
    probability: float | None = Field(
        None,
        description="calibrated probability that the two photos share a label (svm: a Platt sigmoid of the score; "
        "projection: of its label agreement part, fitted on validation pairs)",
    )


class Timing(BaseModel):
    """Where a search spent its time, in milliseconds."""

    decode_ms: float
    search_ms: float = Field(description="embedding the query and ranking the gallery")
    total_ms: float


class Match(BaseModel):
    """The "no close match" signal, the same as the app's banner and the CLI's line."""

    close: bool = Field(
        description="false when the query's best cosine similarity to the gallery is below `floor` and no higher "
        "than its similarity to a generated non-photo (`non_photo_cosine`): noise, a flat colour, a screenshot"
    )
    best_cosine: float = Field(description="the query's best cosine similarity to any gallery image")
    floor: float = Field(
        description="the cosine similarity 95 % of gallery images reach with their nearest other gallery image"
    )
    non_photo_cosine: float = Field(
        description="the query's best cosine similarity to generated non-photos (noise, flat colours, gradients, "
        "patterns, text), embedded by the same featurizer"
    )
    non_photo_kind: str = Field(description="the kind of that nearest non-photo, e.g. `noise` or `flat colour`")
    explanation: str = Field(description="the verdict in one sentence, the same as the app's banner and the CLI's line")


#: The ``fuse`` field's OpenAPI text.
FUSE_DESCRIPTION = (
    'fuse meanings of "similar" instead of one ranker, one `MEANING=WEIGHT` item each (repeat the field), as the '
    "CLI's `search --fuse`: `label` (the label folders) or a column of the dataset's `attributes.csv`; meanings not "
    'named weigh 0. The score is then the weighted mean of each meaning\'s calibrated probability of "same", 0..1. '
    "Leave `ranker` and `look_weight` out. The rankers are fitted by `python -m workbench fit --fusion`, never by a "
    "request"
)


class SearchResponse(BaseModel):
    """Hits for one query image, best first."""

    fingerprint: str
    ranker: str = Field(description="the ranker's name; `fusion` for a fused search (`fuse`)")
    score_meaning: str = Field(description="what the ranker's scores are, their range and which way is more alike")
    fusion_weights: dict[str, float] | None = Field(
        None,
        description="fused search only: each meaning's share of the score (`label` = the label folders), the "
        'weights normalised to sum 1; the score is the fused probability of "same", 0..1, higher = more alike',
    )
    k: int
    hits: list[Hit]
    timing: Timing
    match: Match


def probe_upload(data: bytes, name: str, limits: ImageLimits) -> ImageHeader:
    """Format and size of upload bytes from the header alone, every refusal classified for the HTTP answer.

    Raises:
        ApiError: 400 empty, 415 not an allowed image format, 413 over the size or pixel ceilings, 422 corrupt.
    """
    if not data:
        raise ApiError(400, "empty_upload", f"{name}: empty file (0 bytes)")
    try:
        return probe_image(data, name, limits)
    except ImageLoadError as err:
        raise _api_error(err) from err


def decode_upload(data: bytes, name: str, limits: ImageLimits, draft_size: int | None = None) -> Image.Image:
    """Decode upload bytes (already probed) into upright RGB.

    Raises:
        ApiError: As :func:`probe_upload`, for what only decoding reveals (truncation, too small to rank).
    """
    try:
        return decode_image(data, name=name, draft_size=draft_size, limits=limits)
    except ImageLoadError as err:
        raise _api_error(err) from err


def _api_error(err: ImageLoadError) -> ApiError:
    if isinstance(err, UnsupportedImageError):
        return ApiError(415, "unsupported_media_type", str(err))
    if isinstance(err, ImageTooLargeError):
        return ApiError(413, "image_too_large", str(err))
    return ApiError(422, "invalid_image", str(err))


def decoded_pixels(header: ImageHeader, draft_size: int | None) -> int:
    """About how many pixels decoding will produce: JPEG decodes reduced (1/2, 1/4, 1/8) towards ``draft_size``."""
    width, height = header.width, header.height
    scale = 1
    if header.format == "JPEG" and draft_size:
        while scale < 8 and min(width, height) // (scale * 2) >= draft_size:
            scale *= 2
    return (width // scale) * (height // scale)


def _decode_reduced(data: bytes, name: str, limits: ImageLimits, draft_size: int, duty: float = 0.5) -> Image.Image:
    """Decode, then shrink by a whole factor to about twice ``draft_size`` on the short side, all in the caller's
    (low-priority) thread, so the costly pixels never reach the ordinary inference slots; then rest so the lane
    uses at most ``duty`` of a core however many costly images queue up."""
    start = time.perf_counter()
    try:
        image = decode_upload(data, name, limits, draft_size)
        factor = min(image.size) // (2 * draft_size)
        return image.reduce(factor) if factor >= 2 else image
    finally:
        busy = time.perf_counter() - start
        time.sleep(busy * (1.0 - duty) / duty)


def _low_priority_thread() -> None:
    """Run this worker thread at the lowest CPU priority (Linux: per-thread nice), where the OS allows it."""
    with suppress(OSError, AttributeError):
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)


def _upload_name(filename: str | None) -> str:
    """The client's file name without any directory part, for messages."""
    name = Path((filename or "").replace("\\", "/")).name
    return name[:120] or "upload"


def create_app(settings: ServeSettings = ServeSettings()) -> FastAPI:
    """The FastAPI app for ``settings``; the workspace loads when the app starts (lifespan)."""
    errors: dict[int | str, dict[str, Any]] = {
        status: {"model": ErrorResponse} for status in (400, 408, 413, 415, 422, 429, 500, 503)
    }
    limiter = anyio.CapacityLimiter(max(1, settings.inference_threads))
    heavy_lane = ThreadPoolExecutor(max_workers=1, thread_name_prefix="heavy-decode", initializer=_low_priority_thread)
    heavy_waiting = 0

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.workspace = await anyio.to_thread.run_sync(load_workspace, settings)
        yield
        heavy_lane.shutdown(wait=False, cancel_futures=True)

    app = FastAPI(
        title="Similarity workbench",
        version="1",
        summary="Find the gallery images most similar to an uploaded photo.",
        lifespan=lifespan,
    )
    app.add_middleware(
        _BodyLimit, max_bytes=settings.limits.max_file_bytes + MULTIPART_SLACK_BYTES, timeout_s=settings.body_timeout_s
    )
    app.add_middleware(  # outermost: a client over its refusal budget never reaches routing or the body
        _RefusalBudget,
        burst=settings.refusal_burst,
        per_second=settings.refusals_per_s,
        delay_s=settings.refusal_delay_s,
    )

    def error_response(status: int, code: str, message: str) -> JSONResponse:
        return JSONResponse({"error": {"code": code, "message": message}}, status_code=status)

    @app.exception_handler(ApiError)
    async def api_error(request: Request, err: ApiError) -> JSONResponse:
        response = error_response(err.status, err.code, err.message)
        response.headers.update(err.headers)
        return response

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, err: RequestValidationError) -> JSONResponse:
        parts = []
        for item in err.errors():
            where = ".".join(str(part) for part in item.get("loc", ()) if part not in ("body", "query"))
            parts.append(f"{where}: {item.get('msg', 'invalid')}" if where else str(item.get("msg", "invalid")))
        return error_response(422, "invalid_request", "; ".join(parts) or "invalid request")

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, err: StarletteHTTPException) -> JSONResponse:
        codes = {
            400: "bad_request",
            404: "not_found",
            405: "method_not_allowed",
            408: "request_timeout",
            413: "upload_too_large",
        }
        response = error_response(
            err.status_code, codes.get(err.status_code, f"http_{err.status_code}"), str(err.detail)
        )
        response.headers.update(err.headers or {})
        return response

    @app.exception_handler(WorkbenchError)
    async def workbench_error(request: Request, err: WorkbenchError) -> JSONResponse:
        """A library error that escaped a route: never a 500 (nor a dropped keep-alive connection)."""
        log.warning("%s %s: %s", request.method, request.url.path, err)
        if isinstance(err, ArtifactError):
            message = "a saved artifact of this server is unusable (the server log names it and how to rebuild it)"
            return error_response(503, "artifact_unavailable", message)
        return error_response(422, "invalid_request", printable(str(err))[:300])

    @app.exception_handler(Exception)
    async def internal_error(request: Request, err: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return error_response(500, "internal_error", "internal server error; see the server log")

    async def read_upload(file: UploadFile) -> tuple[bytes, str]:
        name = _upload_name(file.filename)
        most = settings.limits.max_file_bytes
        data = await file.read(most + 1)
        if len(data) > most:
            raise ApiError(413, "upload_too_large", f"{name}: larger than {most} bytes")
        return data, name

    async def decode(ws: Workspace, data: bytes, name: str) -> Image.Image:
        """Probe, then decode in the ordinary slots, or in the low-priority lane when the image is costly."""
        nonlocal heavy_waiting
        draft = ws.featurizer.preprocessing.resize_size
        header = probe_upload(data, name, settings.limits)
        if decoded_pixels(header, draft) <= settings.heavy_pixels:
            return await anyio.to_thread.run_sync(decode_upload, data, name, settings.limits, draft, limiter=limiter)
        if heavy_waiting >= settings.heavy_queue:
            raise ApiError(
                503,
                "server_busy",
                f"{name}: too many large images are being decoded; retry shortly",
                {"Retry-After": "2"},
            )
        heavy_waiting += 1
        try:
            future = heavy_lane.submit(_decode_reduced, data, name, settings.limits, draft)
            return await asyncio.wrap_future(future)
        finally:
            heavy_waiting -= 1

    reopening = asyncio.Lock()
    last_check = [time.monotonic()]

    async def workspace(request: Request) -> Workspace:
        """The served workspace, opened again (in a worker thread) when its dataset folder changed: photos added,
        removed or replaced are in the gallery of the next request. The folder is checked at most once a second."""
        ws: Workspace = request.app.state.workspace
        if time.monotonic() - last_check[0] < settings.folder_check_s:
            return ws
        last_check[0] = time.monotonic()
        if not await anyio.to_thread.run_sync(ws.folder_changed, limiter=limiter):
            return ws
        async with reopening:
            if request.app.state.workspace is ws:
                log.info("dataset folder changed: opening the workspace again")
                request.app.state.workspace = await anyio.to_thread.run_sync(load_workspace, settings)
        reopened: Workspace = request.app.state.workspace
        return reopened

    async def usable_ranker(ws: Workspace, name: str) -> None:
        """Check that the ranker ``name`` can serve, before the upload is decoded: a learned one is loaded (once
        per file version) and checked against the featurizer; plain ones always can.

        Raises:
            ApiError: 422 ``ranker_unavailable``: not fitted, or its file is damaged or fits another featurizer.
        """
        if not ranker_spec(name).learned:
            return
        if name not in ws.rankers_on_offer():
            raise ApiError(422, "ranker_unavailable", f"ranker {name!r} is not fitted for {ws.fingerprint}")
        try:
            await anyio.to_thread.run_sync(ws.ranker, name, limiter=limiter)
        except (ArtifactError, RankerUnavailableError) as err:
            log.warning("ranker %s refused: %s", name, err)
            raise ApiError(
                422,
                "ranker_unavailable",
                f"ranker {name!r} cannot be used: its saved file is missing, damaged or fits another featurizer "
                f"than {ws.fingerprint}; refit it (`python -m workbench fit --ranker {name}`); the server log "
                "names the file",
            ) from err

    fusion_kept: list[tuple[Workspace, tuple[int, int, float], attribute_fusion.AttributeRankers]] = []

    def attribute_rankers(ws: Workspace) -> attribute_fusion.AttributeRankers:
        """The workspace's attribute rankers, none fitted here; kept while the workspace, its attributes file and
        its label folders' ranker stay the same and every ranker was ready (until then each request looks again,
        so a `fit --fusion` run meanwhile is seen)."""
        stamp = attribute_fusion.fusion_stamp(ws)
        if fusion_kept and fusion_kept[0][0] is ws and fusion_kept[0][1] == stamp:
            return fusion_kept[0][2]
        rankers = attribute_fusion.attribute_rankers(ws, fit=False)
        if not rankers.unfitted:
            fusion_kept[:] = [(ws, stamp, rankers)]
        return rankers

    async def fused_ranker(ws: Workspace, items: list[str]) -> FusedSearch:
        """The fused ranker of ``fuse`` items, checked before the upload is decoded; nothing is fitted.

        Raises:
            ApiError: 422 ``invalid_request`` (syntax, unknown meaning, weights), ``fusion_unavailable`` (no or an
                unusable attributes file, a meaning that cannot be fitted), ``ranker_unavailable`` (not fitted yet).
        """
        option = "fuse"
        try:
            weights = attribute_fusion.parse_fusion_weights(items, option)
        except WorkbenchError as err:
            raise ApiError(422, "invalid_request", printable(str(err))[:300]) from err
        if not attribute_fusion.fusion_conditions(ws.spec):
            raise ApiError(
                422, "fusion_unavailable", f"{option}: this dataset has no {ATTRIBUTES_FILE} with attributes to fuse"
            )
        try:
            rankers = await anyio.to_thread.run_sync(attribute_rankers, ws, limiter=limiter)
        except ArtifactError as err:
            log.warning("fusion refused: %s", err)
            raise ApiError(
                422,
                "ranker_unavailable",
                f"{option}: a saved ranker of the fusion is damaged or fits another featurizer than {ws.fingerprint}; "
                f"run `{attribute_fusion.FIT_FUSION_COMMAND}`; the server log names the file",
            ) from err
        except WorkbenchError as err:
            log.warning("fusion refused: %s", err)
            raise ApiError(
                422,
                "fusion_unavailable",
                f"{option}: this dataset's {ATTRIBUTES_FILE} is unusable; the server log names the file and the row",
            ) from err
        try:
            model = attribute_fusion.fusion_model(rankers, weights, option)
        except attribute_fusion.UnfittedFusionError as err:
            raise ApiError(422, "ranker_unavailable", printable(str(err))[:300]) from err
        except attribute_fusion.FusionUnavailableError as err:
            raise ApiError(422, "fusion_unavailable", printable(str(err))[:300]) from err
        except WorkbenchError as err:
            raise ApiError(422, "invalid_request", printable(str(err))[:300]) from err
        total = sum(weights.get(condition, 0.0) for condition in rankers.conditions)
        shares = {
            attribute_fusion.meaning_name(condition): weights.get(condition, 0.0) / total
            for condition in rankers.conditions
        }
        return FusedSearch(model, attribute_fusion.fusion_score_meaning(rankers, weights), shares)

    @app.get("/health", response_model=Health, tags=["service"])
    async def health(request: Request) -> Health:
        """Liveness and what is being served."""
        ws = await workspace(request)
        return Health(
            status="ok",
            fingerprint=ws.fingerprint,
            backend=ws.backend,
            gallery_size=len(ws.embeddings),
            embedding_dim=int(ws.embeddings.shape[1]),
            rankers=ws.rankers_on_offer(),
            since_fit=since_fit(ws).line(),
        )

    @app.post("/embed", response_model=Embedding, responses=errors, tags=["search"])
    async def embed(
        request: Request, file: Annotated[UploadFile, File(description="an image (JPEG, PNG, WebP...)")]
    ) -> Embedding:
        """The L2-normalised embedding of an uploaded image."""
        ws = await workspace(request)
        data, name = await read_upload(file)

        image = await decode(ws, data, name)
        vector = (await anyio.to_thread.run_sync(ws.embed, [image], limiter=limiter))[0]
        return Embedding(fingerprint=ws.fingerprint, backend=ws.backend, dim=len(vector), embedding=vector.tolist())

    @app.post("/search", response_model=SearchResponse, responses=errors, tags=["search"])
    async def search(
        request: Request,
        file: Annotated[UploadFile, File(description="the query image")],
        k: Annotated[int, Form(ge=1, le=settings.max_k, description="how many results")] = 10,
        ranker: Annotated[RankerName, Form(description=RANKER_DESCRIPTION)] = DEFAULT_RANKER,
        look_weight: Annotated[
            float | None,
            Form(
                ge=0.0,
                le=1.0,
                description="projection only: the look's share of the score, (1 - w) x label agreement + w x look "
                "(default: the ranker's own, 0.6); 1 ranks by looks alone, 0 by label agreement alone",
            ),
        ] = None,
        fuse: Annotated[list[str] | None, Form(description=FUSE_DESCRIPTION)] = None,
    ) -> SearchResponse:
        """The ``k`` gallery images most similar to an uploaded image, best first, with scores; with ``fuse``, by
        the fused probability of "same" over the meanings weighed."""
        ws = await workspace(request)
        fused: FusedSearch | None = None
        if fuse:
            if ranker != DEFAULT_RANKER or look_weight is not None:
                raise ApiError(
                    422, "invalid_request", "fuse ranks by the fused meanings; leave out ranker and look_weight"
                )
            fused = await fused_ranker(ws, fuse)
        else:
            await usable_ranker(ws, ranker.value)
        data, name = await read_upload(file)

        start = time.perf_counter()
        image = await decode(ws, data, name)
        decode_s = time.perf_counter() - start
        try:
            query = await anyio.to_thread.run_sync(ws.embed, [image], limiter=limiter)
            if fused is None:
                hits = await anyio.to_thread.run_sync(
                    ws.search_embedding, query, ranker.value, k, look_weight, limiter=limiter
                )
            else:
                hits = await anyio.to_thread.run_sync(
                    attribute_fusion.fused_search, ws, query, fused.model, k, limiter=limiter
                )
            strength = await anyio.to_thread.run_sync(ws.match, query, limiter=limiter)
        except (ArtifactError, RankerUnavailableError) as err:  # replaced or removed since the check above
            if fused is None:
                await usable_ranker(ws, ranker.value)
            raise ApiError(503, "artifact_unavailable", "the ranker changed during the search; retry") from err
        search_s = time.perf_counter() - start - decode_s
        return SearchResponse(
            fingerprint=ws.fingerprint,
            ranker=ranker.value if fused is None else fused.model.name,
            score_meaning=ranker_spec(ranker.value).score_meaning if fused is None else fused.score_meaning,
            fusion_weights=None if fused is None else fused.shares,
            k=k,
            hits=[
                Hit(
                    rank=h.rank,
                    label=printable(h.record.label),
                    path=printable(ws.relative_path(h.record)),
                    score=h.score,
                    agreement=None if h.parts is None else h.parts[0],
                    look=None if h.parts is None else h.parts[1],
                    probability=h.probability,
                )
                for h in hits
            ],
            timing=Timing(
                decode_ms=decode_s * 1e3, search_ms=search_s * 1e3, total_ms=(time.perf_counter() - start) * 1e3
            ),
            match=Match(
                close=strength.close,
                best_cosine=strength.best,
                floor=strength.floor,
                non_photo_cosine=strength.non_photo,
                non_photo_kind=strength.non_photo_kind,
                explanation=strength.explain(),
            ),
        )

    return app


class _RefusalBudget:
    """ASGI middleware: a token bucket of refusals per client address.

    Every 4xx answer (but 429 itself) spends one of ``burst`` tokens, refilled at ``per_second``. A client with
    no token left is answered 429 ``too_many_refusals`` with ``Retry-After`` and ``Connection: close``, after
    ``delay_s`` of idle waiting, before routing and without reading its body: a flood of refused uploads costs the
    server a sleeping coroutine per connection instead of a parse and an answer each, and good clients (another
    address, or the same one asking sensibly) are not slowed. The table forgets full buckets when it grows.
    """

    _MAX_CLIENTS = 10_000

    def __init__(self, app: Any, burst: int, per_second: float, delay_s: float) -> None:
        self.app = app
        self.burst = float(burst)
        self.per_second = per_second
        self.delay_s = delay_s
        self._buckets: dict[str, tuple[float, float]] = {}  # address -> (tokens, time of the last update)

    def _tokens(self, client: str, now: float) -> float:
        tokens, then = self._buckets.get(client, (self.burst, now))
        return min(self.burst, tokens + (now - then) * self.per_second)

    def _spend(self, client: str) -> None:
        now = time.monotonic()
        self._buckets[client] = (self._tokens(client, now) - 1.0, now)
        if len(self._buckets) > self._MAX_CLIENTS:
            full = [key for key in self._buckets if self._tokens(key, now) >= self.burst]
            for key in full or list(self._buckets)[: len(self._buckets) // 2]:
                self._buckets.pop(key, None)

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        client = str((scope.get("client") or ("unknown",))[0])
        if self._tokens(client, time.monotonic()) < 1.0:
            wait = max(1, round((1.0 - self._tokens(client, time.monotonic())) / self.per_second + 0.5))
            await anyio.sleep(self.delay_s)
            await _send_error(
                send,
                429,
                "too_many_refusals",
                f"too many refused requests from this client; retry in {wait} s",
                {"retry-after": str(wait), "connection": "close"},
            )
            return

        async def counting_send(message: Any) -> None:
            if message["type"] == "http.response.start" and 400 <= message["status"] < 500:
                self._spend(client)
            await send(message)

        await self.app(scope, receive, counting_send)


async def _send_error(send: Any, status: int, code: str, message: str, headers: dict[str, str]) -> None:
    """Answer ``{"error": {"code", "message"}}`` straight from ASGI middleware (no routing, body unread)."""
    import json

    body = json.dumps({"error": {"code": code, "message": message}}).encode()
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    raw += [(key.encode(), value.encode()) for key, value in headers.items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})


class _BodyLimit:
    """ASGI middleware: refuse request bodies over ``max_bytes`` (from ``Content-Length`` or while streaming) or
    not delivered within ``timeout_s`` of the request's start (slow clients cannot hold a connection).

    The 413 and 408 are raised from ``receive`` as HTTP exceptions, so they reach the app's structured error
    handler; a route that never reads the body is unaffected.
    """

    def __init__(self, app: Any, max_bytes: int, timeout_s: float) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.timeout_s = timeout_s

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        too_large = f"request body over {self.max_bytes} bytes"
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            # refused from the head alone, before routing: the body is never read, the connection closed
            await _send_error(send, 413, "upload_too_large", too_large, {"connection": "close"})
            return
        deadline = anyio.current_time() + self.timeout_s
        received = 0

        async def limited_receive() -> Any:
            nonlocal received
            if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
                raise StarletteHTTPException(413, too_large)
            try:
                with anyio.fail_after(max(0.0, deadline - anyio.current_time())):
                    message = await receive()
            except TimeoutError:
                raise StarletteHTTPException(
                    408, f"request body not received within {self.timeout_s:g} s", {"Connection": "close"}
                ) from None
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise StarletteHTTPException(413, too_large)
            return message

        await self.app(scope, limited_receive, send)


def _protocol_with_header_deadline(header_timeout_s: float) -> type:
    """uvicorn's HTTP/1.1 protocol, closing connections that have not sent a complete request head in time.

    uvicorn arms its keep-alive timer only after a first response, so a client that opens a connection and
    trickles its headers would otherwise hold it for ever.
    """
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class HeaderDeadlineProtocol(H11Protocol):
        _head_deadline: asyncio.TimerHandle | None = None

        def connection_made(self, transport: Any) -> None:
            super().connection_made(transport)
            self._head_deadline = self.loop.call_later(header_timeout_s, self._close_without_request)

        def handle_events(self) -> None:
            super().handle_events()
            if self.cycle is not None and self._head_deadline is not None:
                self._head_deadline.cancel()
                self._head_deadline = None

        def connection_lost(self, exc: Exception | None) -> None:
            if self._head_deadline is not None:
                self._head_deadline.cancel()
            super().connection_lost(exc)

        def _close_without_request(self) -> None:
            self._head_deadline = None
            if self.cycle is None and not self.transport.is_closing():
                self.transport.close()

    return HeaderDeadlineProtocol


def serve(settings: ServeSettings, host: str = "127.0.0.1", port: int = 8000, log_level: str = "info") -> None:
    """Run the service with uvicorn until interrupted."""
    import uvicorn

    logging.basicConfig(level=log_level.upper(), format="%(levelname)s %(name)s %(message)s")
    uvicorn.run(create_app(settings), **uvicorn_options(settings, host, port, log_level))


def uvicorn_options(settings: ServeSettings, host: str, port: int, log_level: str = "info") -> dict[str, Any]:
    """uvicorn settings that enforce the connection limits and timeouts of ``settings``."""
    return {
        "host": host,
        "port": port,
        "log_level": log_level,
        "http": _protocol_with_header_deadline(settings.header_timeout_s),
        "limit_concurrency": settings.max_connections,
        "timeout_keep_alive": 5,
    }
