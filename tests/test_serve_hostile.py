"""Hostile and careless requests: every one is answered with OpenAI-shaped JSON 4xx within a
bounded time, work is bounded before it is queued, running work stops when no one waits for
it, and the server keeps serving. A seeded fuzz list keeps the reproductions fixed."""

import json
import random
import socket
import struct
import subprocess
import threading
import time
import zlib

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from fastmuse.pipeline import Pipeline
from fastmuse.sampling.control import Cancelled, Control, check_cancelled, controlled
from fastmuse.serve import ServeSettings, create_app
from fastmuse.serve.batcher import Batcher, Job
from fastmuse.serve.process import start_server
from helpers import png, tiny_pipeline


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return tiny_pipeline(tmp_path_factory.mktemp("hostile"))


@pytest.fixture(scope="module")
def pipe(model_dir):
    return Pipeline.from_pretrained(model_dir)


@pytest.fixture(scope="module")
def client(pipe):
    settings = ServeSettings(model_name="tiny", max_body_bytes=1 << 20)
    with TestClient(create_app(pipe, settings), raise_server_exceptions=False) as c:
        yield c


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height (a decompression bomb's first bytes)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 16)) \
        + chunk(b"IEND", b"")


def assert_openai_error(r, status: int, *words: str) -> dict:
    assert r.status_code == status, (r.status_code, r.text[:300])
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert "Traceback" not in r.text
    for w in words:
        assert w.lower() in error["message"].lower(), error["message"]
    return error


def test_a_thin_image_is_refused_before_any_work(client):
    thin = png(Image.new("RGBA", (3, 1000), (255, 0, 0, 0)))
    for path, data in [("/v1/images/edits", {"prompt": "blue heart", "steps": "2"}),
                       ("/v1/fastmuse/edit", {"prompt": "blue heart"})]:
        t0 = time.monotonic()
        r = client.post(path, files={"image": ("thin.png", thin, "image/png")}, data=data)
        assert time.monotonic() - t0 < 5
        assert assert_openai_error(r, 413, "aspect ratio", "4:1")["param"] == "image"
    square = png(Image.new("RGB", (32, 32), "red"))
    r = client.post("/v1/fastmuse/outpaint", files={"image": ("a.png", square, "image/png")},
                    data={"prompt": "x", "right": "512"})
    assert_openai_error(r, 413, "aspect ratio")
    assert client.post("/v1/images/generations", json={"prompt": "a red square"}).status_code == 200


def test_a_thin_image_is_refused_by_the_library_too(pipe):
    from fastmuse.errors import ConfigError

    with pytest.raises(ConfigError, match=r"3x1000 px \(aspect ratio 333.3:1\); accepted: at most 4:1"):
        pipe.inpaint(Image.new("RGB", (3, 1000)), "x", box=(0, 0, 3, 10))
    with pytest.raises(ConfigError, match="accepted: at most 16384 px"):  # 16 x 32 x 32
        pipe.outpaint(Image.new("RGB", (32, 32)), "x", right=128, bottom=128)


@pytest.mark.parametrize("body, words", [
    ("[" * 100000 + "]" * 100000, ["nested too deeply"]),
    ('{"prompt": "\\ud800 x"}', ["lone surrogate"]),
])
def test_bodies_that_used_to_give_a_500(client, body, words):
    r = client.post("/v1/images/generations", content=body.encode(),
                    headers={"content-type": "application/json"})
    assert_openai_error(r, 400, *words)


def test_a_data_url_without_data(client):
    r = client.post("/v1/images/edits", json={"image": "data:image/png;base64", "prompt": "x"})
    assert assert_openai_error(r, 400, "data: URL without data")["param"] == "image"


def test_image_bombs_and_formats(client):
    bomb = png_header_only(20000, 20000)
    r = client.post("/v1/images/edits", files={"image": ("b.png", bomb, "image/png")}, data={"prompt": "x"})
    assert_openai_error(r, 413, "too many pixels")
    for fmt in ("GIF", "TIFF"):
        data = png(Image.new("RGB", (32, 32), "red"), fmt)
        r = client.post("/v1/images/edits", files={"image": ("a.img", data, "image/x")}, data={"prompt": "x"})
        assert_openai_error(r, 400, "PNG, JPEG or WebP")


def test_a_chunked_body_is_cut_at_the_limit(client):
    sent = []

    def chunks():  # 4 MiB without a Content-Length: the limit is 1 MiB
        for _ in range(64):
            sent.append(1)
            yield b" " * (64 << 10)

    r = client.post("/v1/images/generations", content=chunks(), headers={"content-type": "application/json"})
    assert_openai_error(r, 413, "more than 1048576 bytes")


def test_an_unexpected_error_is_a_json_500(pipe, client, monkeypatch):
    def boom(*a, **k):
        raise RuntimeError("secret internals")

    monkeypatch.setattr(pipe, "generate_tokens", boom)
    r = client.post("/v1/images/generations", json={"prompt": "a red square"})
    error = assert_openai_error(r, 500, "internal error")
    assert error["type"] == "server_error" and "secret" not in r.text


def test_a_running_job_stops_when_cancelled(pipe):
    with controlled(Control(cancelled=lambda: True)), pytest.raises(Cancelled):
        pipe("a red square", steps=3)
    batcher = Batcher(pipe, window_s=0.0)
    try:
        import asyncio

        loop = asyncio.new_event_loop()
        threading.Thread(target=loop.run_forever, daemon=True).start()
        steps = []

        def slow():
            for i in range(1000):
                check_cancelled()
                steps.append(i)
                time.sleep(0.01)

        job = batcher.submit(Job(loop.create_future(), call=slow))
        while len(steps) < 3:
            time.sleep(0.01)
        job.cancelled = True
        t0 = time.monotonic()
        while not job.future.done() and time.monotonic() - t0 < 5:
            time.sleep(0.01)
        assert isinstance(job.future.exception(), Cancelled) and len(steps) < 100
        after = batcher.submit(Job(loop.create_future(), call=lambda: "next"))
        t0 = time.monotonic()
        while not after.future.done() and time.monotonic() - t0 < 5:
            time.sleep(0.01)
        assert after.future.result() == "next"
        loop.call_soon_threadsafe(loop.stop)
    finally:
        batcher.close()


def fuzz_requests(seed: int, n: int) -> list[tuple[str, dict]]:
    """Seeded hostile requests: wrong types, out-of-range numbers, junk bodies and images."""
    rng = random.Random(seed)
    junk = [None, True, -1, 0, 10**30, 1e308, float("inf"), "", " ", "\u0000", "x" * 5000, [], {}, [1, [2]],
            {"a": {"b": None}}, "NaN", "-0", "1e9", "data:,", "🙂" * 50]
    fields = ["prompt", "n", "seed", "steps", "guidance", "size", "response_format", "model", "strength",
              "iterations", "left", "right", "image", "mask"]
    out = []
    for _ in range(n):
        path = rng.choice(["/v1/images/generations", "/v1/images/edits", "/v1/fastmuse/outpaint",
                           "/v1/fastmuse/edit"])
        kind = rng.random()
        if kind < 0.5:
            body = {"prompt": "a red square"}
            for f in rng.sample(fields, rng.randint(1, 4)):
                body[f] = rng.choice(junk)
            out.append((path, {"content": json.dumps(body, allow_nan=True).encode(),
                               "headers": {"content-type": "application/json"}}))
        elif kind < 0.8:
            raw = bytes(rng.getrandbits(8) for _ in range(rng.randint(0, 300)))
            ctype = rng.choice(["application/json", "multipart/form-data; boundary=x", "text/plain", ""])
            out.append((path, {"content": raw, "headers": {"content-type": ctype}}))
        else:
            image = bytes(rng.getrandbits(8) for _ in range(rng.randint(0, 200)))
            out.append((path, {"files": {"image": ("a.png", image, "image/png")},
                               "data": {"prompt": rng.choice(["x", ""]), "n": str(rng.choice(junk))}}))
    return out


def test_fuzzed_requests_get_json_4xx_and_the_server_keeps_serving(client):
    statuses = []
    for path, kwargs in fuzz_requests(seed=0, n=120):
        t0 = time.monotonic()
        r = client.post(path, **kwargs)
        assert time.monotonic() - t0 < 10, (path, kwargs)
        assert r.status_code == 200 or 400 <= r.status_code < 500, (path, kwargs, r.status_code, r.text[:300])
        statuses.append(r.status_code)
        if r.status_code != 200:  # junk that happens to be valid (e.g. steps "") is served
            assert set(r.json()["error"]) == {"message", "type", "param", "code"}
    assert statuses.count(200) < len(statuses) // 4
    assert client.get("/healthz").status_code == 200
    assert client.post("/v1/images/generations", json={"prompt": "a red square"}).status_code == 200


@pytest.fixture(scope="module")
def server(model_dir):
    proc, url = start_server("--model", str(model_dir), "--name", "tiny", stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)
    yield url, proc
    proc.terminate()
    proc.wait(timeout=30)


def test_a_big_chunked_body_does_not_grow_the_server(server):
    """50 MB of chunked JSON against the real process (default 10 MB limit): 413, RSS bounded."""
    import psutil

    url, proc = server
    rss = psutil.Process(proc.pid).memory_info().rss
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(b"POST /v1/images/generations HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Transfer-Encoding: chunked\r\n\r\n")
        block = b" " * (1 << 20)
        try:
            for _ in range(50):
                sock.sendall(b"%x\r\n" % len(block) + block + b"\r\n")
            sock.sendall(b"0\r\n\r\n")
        except OSError:  # the server answered and closed early: what we want
            pass
        reply = sock.recv(65536).decode(errors="replace")
    assert reply.startswith("HTTP/1.1 413"), reply[:200]
    grew = psutil.Process(proc.pid).memory_info().rss - rss
    assert grew < 20 << 20, grew
    r = __import__("httpx").post(url + "/v1/images/generations", json={"prompt": "a red square"}, timeout=60)
    assert r.status_code == 200


def test_server_log_has_no_progress_bars(server, pipe):
    url, proc = server
    import httpx

    square = png(Image.new("RGB", (32, 32), "red"))
    r = httpx.post(url + "/v1/fastmuse/outpaint", files={"image": ("a.png", square, "image/png")},
                   data={"prompt": "x", "right": "64"}, timeout=60)
    assert r.status_code == 200, r.text
    proc.terminate()
    out, _ = proc.communicate(timeout=30)
    assert "windows:" not in out and "win/s" not in out
