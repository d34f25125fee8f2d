"""The HTTP service: OpenAI Images API compatible endpoints, fastmuse's own editing endpoints,
health, Prometheus metrics and the web UI. `create_app(pipe, ServeSettings(...))`.

    POST /v1/images/generations   JSON {prompt, n, size, response_format: "b64_json",
                                  model, seed, steps, guidance}          -> {created, data}
    POST /v1/images/edits         multipart image + mask (+ prompt, ...): inpaint where the
                                  mask (or the image) is transparent, as OpenAI's API does
    POST /v1/fastmuse/outpaint    multipart image + prompt + left/right/top/bottom pixels
    POST /v1/fastmuse/edit        multipart image + prompt + strength/iterations (mask-free)
    GET  /v1/models, /healthz, /metrics (Prometheus text), /  (web UI)

Every error is OpenAI-shaped JSON {"error": {"message", "type", "param", "code"}} with a
4xx/5xx status; `param` names the offending field.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import hmac
import io
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from importlib.resources import files
from typing import Annotated, Any

import numpy as np
from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from PIL import Image, UnidentifiedImageError
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from ..editing import canvas_size
from ..errors import ConfigError, FastMuseError
from ..pipeline import MAX_IMAGES, Pipeline
from .batcher import Batcher, Job, QueueFull


@dataclass
class ServeSettings:
    model_name: str = "muse-128"
    api_key: str | None = None  # None: no authentication (bind to localhost)
    max_batch_images: int = 16  # images per sampler batch
    batch_window_ms: float = 20.0  # how long the oldest request waits for company
    max_queue: int = 64  # waiting requests beyond this get 429
    timeout_s: float = 120.0  # per request, queueing included
    max_prompt_chars: int = 1000
    max_n: int = 8
    max_image_bytes: int = 4 << 20
    max_image_pixels: int = 1024 * 1024
    max_body_bytes: int = 10 << 20
    max_steps: int = 64


IMAGE_FORMATS = ("PNG", "JPEG", "WEBP")  # what PIL may open: no GIF, TIFF or rarer decoders


class ApiError(Exception):
    def __init__(
        self,
        status: int,
        message: str,
        param: str | None = None,
        kind: str = "invalid_request_error",
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.kind, self.headers = status, message, param, kind, headers


class BodyTooLarge(Exception):
    pass


class BodyLimit:
    """ASGI middleware: counts the request body's bytes as they arrive, whatever the framing
    (Content-Length or chunked), and stops reading past `limit` (BodyTooLarge -> 413), so a
    body is never held in memory beyond the limit."""

    def __init__(self, app: Any, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        seen = 0

        async def counted() -> dict:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise BodyTooLarge
            return message

        await self.app(scope, counted, send)


def error_response(e: ApiError) -> JSONResponse:
    body = {"error": {"message": e.message, "type": e.kind, "param": e.param, "code": None}}
    return JSONResponse(body, status_code=e.status, headers=e.headers)


class Metrics:
    def __init__(self) -> None:
        self.registry = r = CollectorRegistry()
        self.requests = Counter(
            "fastmuse_requests", "HTTP requests by endpoint and status", ["endpoint", "status"], registry=r
        )
        self.latency = Histogram(
            "fastmuse_request_seconds",
            "request latency, queueing included",
            ["endpoint"],
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
            registry=r,
        )
        self.batch = Histogram(
            "fastmuse_batch_images", "images per sampler batch", buckets=(1, 2, 4, 8, 16, 32, 64), registry=r
        )
        self.images = Counter("fastmuse_images", "images returned", registry=r)
        self.queue = Gauge("fastmuse_queue_depth", "requests waiting for the model", registry=r)


# -- request parsing: every failure names its field ------------------------------------------
def _int(value: Any, name: str, low: int, high: int) -> int:
    if isinstance(value, str):
        try:
            value = int(value)
        except ValueError:
            pass
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ApiError(400, f"{name} is {value!r}; accepted: an integer from {low} to {high}", name)
    return value


def _float(value: Any, name: str, low: float, high: float) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        v = float("nan")
    if isinstance(value, bool) or not low <= v <= high:
        raise ApiError(400, f"{name} is {value!r}; accepted: a number from {low} to {high}", name)
    return v


class Server:
    """The app's state: pipeline, batcher, settings, metrics."""

    def __init__(self, pipe: Pipeline, s: ServeSettings) -> None:
        self.pipe, self.s, self.metrics = pipe, s, Metrics()
        self.batcher = Batcher(
            pipe,
            s.max_batch_images,
            s.batch_window_ms / 1000,
            s.max_queue,
            on_batch=self.metrics.batch.observe,
        )
        self.size = f"{pipe.resolution}x{pipe.resolution}"

    def prompt(self, value: Any) -> str:
        if not isinstance(value, str) or not value.strip():
            raise ApiError(400, "prompt is missing or empty; accepted: a non-empty string", "prompt")
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:  # a lone surrogate (JSON "\ud800") is not text
            raise ApiError(400, "prompt is not valid Unicode text (it holds a lone surrogate); "
                           "accepted: UTF-8 text", "prompt") from None
        if len(value) > self.s.max_prompt_chars:
            raise ApiError(
                400,
                f"prompt has {len(value)} characters; accepted: at most {self.s.max_prompt_chars}",
                "prompt",
            )
        return value

    def common(self, f: dict[str, Any], size_of: tuple[int, int] | None = None) -> dict[str, Any]:
        """n, seed, steps, guidance, response_format, size and model of any request."""
        fmt = f.get("response_format") or "b64_json"
        if fmt != "b64_json":
            raise ApiError(
                400,
                f"response_format is {fmt!r}; accepted: 'b64_json' (this server keeps no image URLs)",
                "response_format",
            )
        model = f.get("model")
        if model not in (None, "", self.s.model_name):
            raise ApiError(400, f"model is {model!r}; accepted: {self.s.model_name!r}", "model")
        size = f.get("size")
        want = self.size if size_of is None else f"{size_of[0]}x{size_of[1]}"
        if size not in (None, "", "auto", want):
            raise ApiError(400, f"size is {size!r}; accepted: {want!r} or 'auto'", "size")
        out = {
            "n": _int(f.get("n", 1), "n", 1, min(self.s.max_n, MAX_IMAGES)),
            "seed": _int(f.get("seed", 0), "seed", 0, 2**63 - 1),
        }
        if f.get("steps") not in (None, ""):
            out["steps"] = _int(f["steps"], "steps", 1, self.s.max_steps)
        if f.get("guidance") not in (None, ""):
            out["guidance"] = _float(f["guidance"], "guidance", 0.0, 50.0)
        return out

    def image(self, data: Any, name: str) -> Image.Image:
        if data is None or isinstance(data, str):
            raise ApiError(
                400,
                f"{name} is missing; accepted: an image file (PNG, JPEG, WebP) in a "
                "multipart/form-data field",
                name,
            )
        raw = data
        if not isinstance(raw, bytes):
            raise ApiError(400, f"{name} must be a file upload or a base64 string", name)
        if len(raw) > self.s.max_image_bytes:
            raise ApiError(
                413, f"{name} has {len(raw)} bytes; accepted: at most {self.s.max_image_bytes}", name
            )
        try:
            with Image.open(io.BytesIO(raw), formats=IMAGE_FORMATS) as probe:
                w, h = probe.size
                if w * h > self.s.max_image_pixels:
                    raise ApiError(
                        413, f"{name} is {w}x{h}; accepted: at most {self.s.max_image_pixels} pixels", name
                    )
                probe.load()
                return probe.copy()
        except Image.DecompressionBombError:  # PIL refuses to even open it: far over our limit too
            raise ApiError(
                413, f"{name} has too many pixels; accepted: at most {self.s.max_image_pixels} pixels", name
            ) from None
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
            raise ApiError(
                400, f"{name} is not a readable image; accepted: PNG, JPEG or WebP", name
            ) from None

    def canvas(self, canvas: tuple[int, int], image: tuple[int, int]) -> None:
        """Refuse, before queueing, an edit whose canvas editing.canvas_size would refuse."""
        try:
            canvas_size(canvas, image, self.pipe.resolution, self.pipe.tokenizer.downsample)
        except ConfigError as e:
            raise ApiError(413, str(e), "image") from None

    async def run(self, request: Request, job: Job) -> Any:
        """Queue a job and wait for it; a timeout or a client that went away drops it."""
        try:
            self.batcher.submit(job)
        except QueueFull:
            raise ApiError(
                429,
                f"the server is busy ({self.s.max_queue} requests waiting); retry shortly",
                kind="rate_limit_error",
                headers={"Retry-After": "1"},
            ) from None
        self.metrics.queue.set(self.batcher.depth)
        deadline = time.monotonic() + self.s.timeout_s
        try:
            while True:
                done, _ = await asyncio.wait({job.future}, timeout=1.0)  # a result wakes it at once
                if done:
                    return job.future.result()
                if await request.is_disconnected():
                    raise ApiError(499, "client closed the request", kind="client_closed")
                if time.monotonic() > deadline:
                    raise ApiError(504, f"not finished within {self.s.timeout_s:g} s", kind="timeout")
        except FastMuseError as e:  # the pipeline's own checks (e.g. a mask with nothing to edit)
            raise ApiError(400, str(e)) from None
        finally:
            job.cancelled = True  # no-op once it ran; drops it from the queue otherwise
            self.metrics.queue.set(self.batcher.depth)

    def respond(self, images: list[Image.Image]) -> dict:
        data = []
        for im in images:
            buf = io.BytesIO()
            im.save(buf, format="PNG")
            data.append(
                {"b64_json": base64.b64encode(buf.getvalue()).decode("ascii"), "revised_prompt": None}
            )
        self.metrics.images.inc(len(images))
        return {"created": int(time.time()), "data": data}


def _edit_mask(image: Image.Image, mask: Image.Image | None) -> np.ndarray:
    """OpenAI's rule: edit where the mask (or, without one, the image) is transparent."""
    source, name = (mask, "mask") if mask is not None else (image, "image")
    if mask is not None and mask.size != image.size:
        raise ApiError(
            400,
            f"mask is {mask.size[0]}x{mask.size[1]}, image is {image.size[0]}x{image.size[1]}; "
            "accepted: a mask of the image's size",
            "mask",
        )
    if "A" not in source.getbands() and source.mode != "P":
        raise ApiError(
            400,
            f"{name} has no alpha channel; accepted: a PNG whose transparent pixels mark the area to edit",
            name,
        )
    alpha = np.asarray(source.convert("RGBA"))[..., 3]
    edit = alpha < 128
    if not edit.any():
        raise ApiError(400, f"{name} has no transparent pixels; accepted: transparent where to edit", name)
    return edit


async def _fields(request: Request) -> dict[str, Any]:
    """An editing request's fields: multipart/form-data (files as bytes; `image[]`, as newer
    OpenAI clients send it, read as `image`) or JSON with base64 images (plain or data: URLs)."""
    ctype = request.headers.get("content-type", "")
    if ctype.startswith("application/json"):
        body = await _json(request)
        for name in ("image", "mask"):
            if isinstance(body.get(name), str):
                text = body[name]
                if text.startswith("data:"):
                    if "," not in text:
                        raise ApiError(400, f"{name} is a data: URL without data; accepted: "
                                       "data:image/png;base64,<base64>", name)
                    text = text.split(",", 1)[1]
                try:
                    body[name] = base64.b64decode(text, validate=True)
                except (binascii.Error, ValueError):
                    raise ApiError(
                        400, f"{name} is not valid base64; accepted: a base64 image or a data: URL", name
                    ) from None
        return body
    if not ctype.startswith("multipart/form-data"):
        raise ApiError(
            415,
            f"Content-Type is {ctype or 'missing'!r}; accepted: multipart/form-data or application/json",
            "Content-Type",
        )
    try:
        form = await request.form()
    except Exception as e:  # noqa: BLE001  (python-multipart's parse errors)
        raise ApiError(400, f"the multipart body could not be parsed ({e})") from None
    out: dict[str, Any] = {}
    for key, value in form.multi_items():
        out.setdefault(key.removesuffix("[]"), await value.read() if hasattr(value, "read") else value)
    return out


async def _json(request: Request) -> dict[str, Any]:
    try:
        body = json.loads(await request.body())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ApiError(400, f"the body is not valid JSON ({e})") from None
    except RecursionError:
        raise ApiError(400, "the body is JSON nested too deeply; accepted: a flat JSON object") from None
    if not isinstance(body, dict):
        raise ApiError(400, "the body must be a JSON object")
    return body


# -- what each editing request asks for: parsed and checked before it is queued ----------------
def inpaint_call(srv: Server, f: dict[str, Any]) -> Callable[[], Any]:
    image = srv.image(f.get("image"), "image")
    mask = srv.image(f["mask"], "mask") if f.get("mask") is not None else None
    prompt = srv.prompt(f.get("prompt"))
    c = srv.common(f, size_of=image.size)
    srv.canvas(image.size, image.size)
    edit = _edit_mask(image, mask)
    return lambda: srv.pipe.inpaint(image.convert("RGB"), prompt, edit, **c)


def outpaint_call(srv: Server, f: dict[str, Any]) -> Callable[[], Any]:
    image = srv.image(f.get("image"), "image")
    prompt = srv.prompt(f.get("prompt"))
    pads = {k: _int(f.get(k, 0), k, 0, 512) for k in ("left", "right", "top", "bottom")}
    if not any(pads.values()):
        raise ApiError(400, "left, right, top and bottom are all 0; accepted: pixels to add on at least one "
                       "side", "left")
    size = (image.size[0] + pads["left"] + pads["right"], image.size[1] + pads["top"] + pads["bottom"])
    if size[0] * size[1] > srv.s.max_image_pixels:
        raise ApiError(413, f"the outpainted canvas would be {size[0]}x{size[1]}; accepted: at most "
                       f"{srv.s.max_image_pixels} pixels", "left")
    c = srv.common(f, size_of=size)
    srv.canvas(size, image.size)
    return lambda: srv.pipe.outpaint(image, prompt, **pads, **c)


def edit_call(srv: Server, f: dict[str, Any]) -> Callable[[], Any]:
    image = srv.image(f.get("image"), "image")
    prompt = srv.prompt(f.get("prompt"))
    strength = _float(f.get("strength", 0.3), "strength", 0.01, 1.0)
    iterations = _int(f.get("iterations", 4), "iterations", 1, 16)
    c = srv.common(f, size_of=image.size)
    srv.canvas(image.size, image.size)
    return lambda: srv.pipe.edit(image, prompt, strength=strength, iterations=iterations, **c)


# -- routes ------------------------------------------------------------------------------------
def server(request: Request) -> Server:
    """Every route's dependency: the app's state."""
    return request.app.state.server


State = Annotated[Server, Depends(server)]
router = APIRouter()
IMAGE_ENDPOINTS = ("/v1/images/generations", "/v1/images/edits", "/v1/fastmuse/outpaint", "/v1/fastmuse/edit")
OPEN_PATHS = ("/", "/healthz")  # no API key needed


def editing_job(call: Callable[[], Any]) -> Job:
    return Job(asyncio.get_running_loop().create_future(), call=call)


@router.post("/v1/images/generations")
async def generations(request: Request, srv: State) -> dict:
    ctype = request.headers.get("content-type", "")
    if not ctype.startswith("application/json"):
        raise ApiError(415, f"Content-Type is {ctype or 'missing'!r}; accepted: application/json",
                       "Content-Type")
    body = await _json(request)
    prompt = srv.prompt(body.get("prompt"))
    c = srv.common(body)
    key = (c.get("steps"), c.get("guidance"), ())
    job = Job(asyncio.get_running_loop().create_future(), key, prompt, c["n"], c["seed"])
    return srv.respond(await srv.run(request, job))


@router.post("/v1/images/edits")
async def edits(request: Request, srv: State) -> dict:
    call = inpaint_call(srv, await _fields(request))
    return srv.respond((await srv.run(request, editing_job(call))).images)


@router.post("/v1/fastmuse/outpaint")
async def outpaint(request: Request, srv: State) -> dict:
    call = outpaint_call(srv, await _fields(request))
    return srv.respond((await srv.run(request, editing_job(call))).images)


@router.post("/v1/fastmuse/edit")
async def mask_free_edit(request: Request, srv: State) -> dict:
    call = edit_call(srv, await _fields(request))
    return srv.respond((await srv.run(request, editing_job(call))).images)


@router.get("/v1/models")
async def models(srv: State) -> dict:
    return {"object": "list",
            "data": [{"id": srv.s.model_name, "object": "model", "created": 0, "owned_by": "fastmuse"}]}


@router.get("/healthz")
async def healthz(srv: State) -> dict:
    return {"status": "ok", "model": srv.s.model_name, "size": srv.size, "queue_depth": srv.batcher.depth}


@router.get("/metrics")
async def metrics(srv: State) -> Response:
    srv.metrics.queue.set(srv.batcher.depth)
    return Response(generate_latest(srv.metrics.registry), media_type=CONTENT_TYPE_LATEST)


@router.get("/", response_class=HTMLResponse)
async def ui(srv: State) -> str:
    page = files("fastmuse.serve").joinpath("ui.html").read_text(encoding="utf-8")
    return page.replace("{{MODEL}}", srv.s.model_name).replace("{{SIZE}}", srv.size)


# -- every request: API key, declared size, metrics; errors as OpenAI-shaped JSON ---------------
async def guard(request: Request, call_next):
    srv: Server = request.app.state.server
    s, endpoint, t0 = srv.s, request.url.path, time.monotonic()
    try:
        if s.api_key and endpoint not in OPEN_PATHS:
            given = request.headers.get("authorization", "")
            if not hmac.compare_digest(given.encode(), f"Bearer {s.api_key}".encode()):
                raise ApiError(401, "missing or wrong API key; accepted: Authorization: Bearer <key>",
                               "Authorization", kind="authentication_error")
        length = request.headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > s.max_body_bytes):
            raise ApiError(413, f"Content-Length is {length}; accepted: at most {s.max_body_bytes} bytes",
                           "Content-Length")
        response = await call_next(request)
    except ApiError as e:
        response = error_response(e)
    if endpoint in IMAGE_ENDPOINTS:
        srv.metrics.requests.labels(endpoint, str(response.status_code)).inc()
        srv.metrics.latency.labels(endpoint).observe(time.monotonic() - t0)
    return response


async def api_error(request: Request, e: ApiError) -> JSONResponse:
    return error_response(e)


async def body_too_large(request: Request, e: BodyTooLarge) -> JSONResponse:
    limit = request.app.state.server.s.max_body_bytes
    return error_response(ApiError(413, f"the body has more than {limit} bytes; accepted: at most {limit}",
                                   "body"))


async def internal(request: Request, e: Exception) -> JSONResponse:
    # the traceback goes to the server's log (Starlette re-raises to uvicorn), not to the client
    return error_response(ApiError(500, "internal error; the server log has the details",
                                   kind="server_error"))


async def not_found(request: Request, e: Exception) -> JSONResponse:
    return error_response(ApiError(404, f"no endpoint {request.url.path}; see /docs", "path"))


async def bad_method(request: Request, e: Exception) -> JSONResponse:
    return error_response(ApiError(405, f"{request.method} is not accepted on {request.url.path}", "method"))


def create_app(pipe: Pipeline, settings: ServeSettings | None = None) -> FastAPI:
    srv = Server(pipe, settings or ServeSettings())

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        srv.batcher.close()

    app = FastAPI(title="fastmuse", version="1", docs_url="/docs", redoc_url=None, lifespan=lifespan)
    app.state.server = srv
    app.add_middleware(BodyLimit, limit=srv.s.max_body_bytes)
    app.middleware("http")(guard)
    for error, handler in ((ApiError, api_error), (BodyTooLarge, body_too_large), (Exception, internal),
                           (404, not_found), (405, bad_method)):
        app.add_exception_handler(error, handler)
    app.include_router(router)
    return app
