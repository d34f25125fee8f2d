"""`fastmuse serve` in a child process on a free local port, returned once /healthz answers:
what the client tests, the throughput benchmark and the screenshot script run against."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from typing import Any


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(*args: str, timeout_s: float = 120.0, **popen: Any) -> tuple[subprocess.Popen, str]:
    """`fastmuse serve --port P *args` -> (process, base URL). Raises RuntimeError (with the
    output, when piped) if it exits or is not healthy within `timeout_s`."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "fastmuse", "serve", "--port", str(port), *args], **popen)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            output = proc.stdout.read() if proc.stdout is not None else ""
            raise RuntimeError(f"fastmuse serve exited with {proc.returncode}: {output}")
        try:
            with urllib.request.urlopen(url + "/healthz", timeout=1) as r:
                if r.status == 200:
                    return proc, url
        except (urllib.error.URLError, OSError):
            time.sleep(0.1)
    proc.terminate()
    raise RuntimeError(f"fastmuse serve on {url} was not healthy after {timeout_s:.0f} s")
