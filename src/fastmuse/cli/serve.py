"""`fastmuse serve`: run a model as an HTTP service (needs the [serve] extra)."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from ..errors import ConfigError
from .common import DEFAULT_MODEL, add_fast_args, bounded, fast_options, positive


def cmd_serve(a: argparse.Namespace) -> None:
    try:
        import uvicorn

        from ..serve import ServeSettings, create_app
    except ImportError as e:
        raise ConfigError(f"serving needs the [serve] extra ({e.name} is missing): "
                          "pip install 'fastmuse[serve]'") from None
    from ..pipeline import Pipeline

    key = os.environ.get("FASTMUSE_API_KEY") or None
    if a.host not in ("127.0.0.1", "localhost", "::1") and key is None and not a.no_auth:
        raise ConfigError(f"--host {a.host} exposes the server beyond this machine; set "
                          "FASTMUSE_API_KEY (clients send Authorization: Bearer KEY) or pass --no-auth")
    settings = ServeSettings(model_name=a.name or Path(a.model).name, api_key=key,
                             max_batch_images=a.max_batch, batch_window_ms=a.batch_window_ms,
                             max_queue=a.max_queue, timeout_s=a.timeout, max_n=a.max_n)
    app = create_app(Pipeline.from_pretrained(a.model, **fast_options(a)), settings)
    print(f"fastmuse: serving {settings.model_name} on http://{a.host}:{a.port} "
          f"({'API key required' if key else 'no API key'}); web UI at /, API docs at /docs", flush=True)
    uvicorn.run(app, host=a.host, port=a.port, log_level=a.log_level, timeout_graceful_shutdown=5)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="serve a model over HTTP (OpenAI Images API compatible, web UI)",
                       description="Serve a model: POST /v1/images/generations and /v1/images/edits as in "
                                   "OpenAI's Images API (the official client works), /v1/fastmuse/outpaint "
                                   "and /v1/fastmuse/edit, /healthz, /metrics (Prometheus) and a web UI at "
                                   "/. Requests that arrive together are batched. Set FASTMUSE_API_KEY to "
                                   "require Authorization: Bearer KEY.")
    p.add_argument("--model", default=DEFAULT_MODEL, help=f"bundled name or folder (default {DEFAULT_MODEL})")
    p.add_argument("--name", default=None, help="the model id clients send and /v1/models lists "
                                                "(default: the model's folder or bundled name)")
    p.add_argument("--host", default="127.0.0.1", help="interface to bind (default 127.0.0.1: this machine "
                                                       "only)")
    p.add_argument("--port", type=bounded("--port", int, 1, 65535), default=8000, help="default 8000")
    p.add_argument("--max-batch", type=positive("--max-batch"), default=16,
                   help="images per sampler batch (default 16; 1 turns batching off)")
    p.add_argument("--batch-window-ms", type=bounded("--batch-window-ms", float, 0, 10_000), default=20.0,
                   help="how long a request waits for others to batch with (default 20)")
    p.add_argument("--max-queue", type=positive("--max-queue"), default=64,
                   help="waiting requests beyond this are answered 429 (default 64)")
    p.add_argument("--timeout", type=bounded("--timeout", float, 1, 3600), default=120.0,
                   help="seconds per request, queueing included (default 120)")
    p.add_argument("--max-n", type=positive("--max-n"), default=8, help="images per request (default 8)")
    p.add_argument("--no-auth", action="store_true", help="allow a non-local --host without an API key")
    p.add_argument("--log-level", default="warning", choices=["debug", "info", "warning", "error"],
                   help="uvicorn's log level (default warning)")
    add_fast_args(p)
    p.set_defaults(func=cmd_serve)
