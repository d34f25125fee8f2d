"""The HTTP service: OpenAI-shaped API, batching, bad input (in process); the official openai
client and a 200-request load test against a real `fastmuse serve` process."""

import asyncio
import base64
import io
import json
import os
import subprocess
import time

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from fastmuse.pipeline import Pipeline
from fastmuse.serve import ServeSettings, create_app
from fastmuse.serve.process import start_server
from helpers import png, tiny_pipeline


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return tiny_pipeline(tmp_path_factory.mktemp("serve"))


@pytest.fixture(scope="module")
def pipe(model_dir):
    return Pipeline.from_pretrained(model_dir)


@pytest.fixture(scope="module")
def client(pipe):
    with TestClient(create_app(pipe, ServeSettings(model_name="tiny", api_key="sekrit"))) as c:
        c.headers["Authorization"] = "Bearer sekrit"
        yield c


def decode(item: dict) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(item["b64_json"])))


SOURCE = Image.new("RGB", (32, 32), "red")
HOLE = Image.new("RGBA", (32, 32), (0, 0, 0, 255))
HOLE.paste((0, 0, 0, 0), (8, 8, 24, 24))  # transparent = edit


def test_generation_matches_the_library(client, pipe):
    r = client.post(
        "/v1/images/generations",
        json={"prompt": "a red square", "n": 2, "seed": 3, "size": "32x32", "response_format": "b64_json"},
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert isinstance(body["created"], int) and len(body["data"]) == 2
    want = pipe("a red square", n=2, seed=3)
    assert [decode(d).tobytes() for d in body["data"]] == [im.tobytes() for im in want]


def test_edits_inpaint_only_the_transparent_area(client):
    files = {"image": ("a.png", png(SOURCE), "image/png"), "mask": ("m.png", png(HOLE), "image/png")}
    r = client.post("/v1/images/edits", files=files, data={"prompt": "a blue square", "seed": "1"})
    assert r.status_code == 200, r.text
    out = np.asarray(decode(r.json()["data"][0]).convert("RGB")).astype(int)
    keep = np.ones((32, 32), bool)
    keep[6:26, 6:26] = False  # the hole plus a token of dilation/feather margin
    assert out.shape == (32, 32, 3) and np.abs(out[keep] - [255, 0, 0]).max() == 0
    # JSON with data: URLs (what the web UI sends) gives the same image
    as_url = lambda im: "data:image/png;base64," + base64.b64encode(png(im)).decode()  # noqa: E731
    r2 = client.post(
        "/v1/images/edits",
        json={"prompt": "a blue square", "seed": 1, "image": as_url(SOURCE), "mask": as_url(HOLE)},
    )
    assert r2.json()["data"][0]["b64_json"] == r.json()["data"][0]["b64_json"]


def test_outpaint_and_mask_free_edit(client):
    files = {"image": ("a.png", png(SOURCE), "image/png")}
    r = client.post("/v1/fastmuse/outpaint", files=files, data={"prompt": "a red square", "right": "16"})
    assert r.status_code == 200, r.text
    assert decode(r.json()["data"][0]).size == (48, 32)
    r = client.post(
        "/v1/fastmuse/edit",
        files=files,
        data={"prompt": "a blue square", "strength": "0.2", "iterations": "1", "n": "2"},
    )
    assert r.status_code == 200 and len(r.json()["data"]) == 2


def test_health_models_metrics_and_ui(client):
    assert client.get("/healthz").json()["status"] == "ok"
    assert client.get("/v1/models").json()["data"][0]["id"] == "tiny"
    client.post("/v1/images/generations", json={"prompt": "a red square"})
    text = client.get("/metrics").text
    assert 'fastmuse_requests_total{endpoint="/v1/images/generations",status="200"}' in text
    assert "fastmuse_batch_images_bucket" in text and "fastmuse_queue_depth" in text
    page = client.get("/")
    assert page.status_code == 200 and "fastmuse · tiny" in page.text and "/v1/images/edits" in page.text


def test_batched_requests_get_their_solo_images(pipe):
    """Concurrent requests share sampler batches, yet each gets the images it gets alone."""
    app = create_app(pipe, ServeSettings(model_name="tiny", batch_window_ms=300, max_batch_images=16))
    reqs = [
        {"prompt": p, "n": n, "seed": s}
        for p, n, s in [("a red square", 2, 1), ("a blue circle", 1, 2), ("two green stars", 3, 3)]
    ]

    async def run():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
            return await asyncio.gather(*(c.post("/v1/images/generations", json=r) for r in reqs))

    responses = asyncio.run(run())
    server = app.state.server
    try:
        assert [r.status_code for r in responses] == [200, 200, 200]
        for r, q in zip(responses, reqs, strict=True):
            want = pipe(q["prompt"], n=q["n"], seed=q["seed"])
            assert [decode(d).tobytes() for d in r.json()["data"]] == [im.tobytes() for im in want]
        batches = server.metrics.batch.collect()[0].samples
        count = next(s.value for s in batches if s.name.endswith("_count"))
        total = next(s.value for s in batches if s.name.endswith("_sum"))
        assert (count, total) == (1, 6)  # one sampler batch of 2 + 1 + 3 images
    finally:
        server.batcher.close()


BAD = [  # (method, path, kwargs, status, param)
    ("post", "/v1/images/generations", {"json": {}}, 400, "prompt"),
    ("post", "/v1/images/generations", {"json": {"prompt": ""}}, 400, "prompt"),
    ("post", "/v1/images/generations", {"json": {"prompt": "   "}}, 400, "prompt"),
    ("post", "/v1/images/generations", {"json": {"prompt": "x" * 1001}}, 400, "prompt"),
    ("post", "/v1/images/generations", {"json": {"prompt": 42}}, 400, "prompt"),
    ("post", "/v1/images/generations", {"json": {"prompt": "a", "n": 0}}, 400, "n"),
    ("post", "/v1/images/generations", {"json": {"prompt": "a", "n": 1000}}, 400, "n"),
    ("post", "/v1/images/generations", {"json": {"prompt": "a", "n": "two"}}, 400, "n"),
    ("post", "/v1/images/generations", {"json": {"prompt": "a", "n": 1.5}}, 400, "n"),
    ("post", "/v1/images/generations", {"json": {"prompt": "a", "size": "big"}}, 400, "size"),
    ("post", "/v1/images/generations", {"json": {"prompt": "a", "size": "1024x1024"}}, 400, "size"),
    (
        "post",
        "/v1/images/generations",
        {"json": {"prompt": "a", "response_format": "url"}},
        400,
        "response_format",
    ),
    ("post", "/v1/images/generations", {"json": {"prompt": "a", "model": "dall-e-3"}}, 400, "model"),
    ("post", "/v1/images/generations", {"json": {"prompt": "a", "seed": -1}}, 400, "seed"),
    ("post", "/v1/images/generations", {"json": {"prompt": "a", "steps": 0}}, 400, "steps"),
    ("post", "/v1/images/generations", {"json": {"prompt": "a", "steps": 10_000}}, 400, "steps"),
    ("post", "/v1/images/generations", {"json": {"prompt": "a", "guidance": -1}}, 400, "guidance"),
    ("post", "/v1/images/generations", {"json": {"prompt": "a", "guidance": "lots"}}, 400, "guidance"),
    ("post", "/v1/images/generations", {"json": ["a"]}, 400, None),
    (
        "post",
        "/v1/images/generations",
        {"content": b"{not json", "headers": {"Content-Type": "application/json"}},
        400,
        None,
    ),
    ("post", "/v1/images/generations", {"data": {"prompt": "a"}}, 415, "Content-Type"),
    (
        "post",
        "/v1/images/generations",
        {
            "content": b"x" * 100,
            "headers": {"Content-Type": "application/json", "Content-Length": str(1 << 30)},
        },
        413,
        "Content-Length",
    ),
    (
        "post",
        "/v1/images/generations",
        {"json": {"prompt": "a"}, "headers": {"Authorization": "Bearer nope"}},
        401,
        "Authorization",
    ),
    (
        "post",
        "/v1/images/generations",
        {"json": {"prompt": "a"}, "headers": {"Authorization": ""}},
        401,
        "Authorization",
    ),
    ("get", "/v1/images/generations", {}, 405, "method"),
    ("get", "/v1/nothing", {}, 404, "path"),
    ("get", "/metrics", {"headers": {"Authorization": "Bearer nope"}}, 401, "Authorization"),
    ("post", "/v1/images/edits", {"data": {"prompt": "a"}}, 415, "Content-Type"),
    (
        "post",
        "/v1/images/edits",
        {"files": {"mask": ("m.png", png(HOLE), "image/png")}, "data": {"prompt": "a"}},
        400,
        "image",
    ),
    (
        "post",
        "/v1/images/edits",
        {"files": {"image": ("a.txt", b"hello, not an image", "text/plain")}, "data": {"prompt": "a"}},
        400,
        "image",
    ),
    (
        "post",
        "/v1/images/edits",
        {"files": {"image": ("a.png", png(SOURCE), "image/png")}, "data": {"prompt": "a"}},
        400,
        "image",
    ),  # no mask and no transparency in the image
    (
        "post",
        "/v1/images/edits",
        {
            "files": {
                "image": ("a.png", png(SOURCE), "image/png"),
                "mask": ("m.png", png(HOLE.resize((16, 16))), "image/png"),
            },
            "data": {"prompt": "a"},
        },
        400,
        "mask",
    ),
    (
        "post",
        "/v1/images/edits",
        {
            "files": {
                "image": ("a.png", png(SOURCE), "image/png"),
                "mask": ("m.png", png(SOURCE), "image/png"),
            },
            "data": {"prompt": "a"},
        },
        400,
        "mask",
    ),  # no alpha channel
    (
        "post",
        "/v1/images/edits",
        {"files": {"image": ("a.png", png(SOURCE), "image/png"), "mask": ("m.png", png(HOLE), "image/png")}},
        400,
        "prompt",
    ),
    (
        "post",
        "/v1/images/edits",
        {
            "files": {
                "image": ("a.png", png(SOURCE), "image/png"),
                "mask": ("m.png", png(HOLE), "image/png"),
            },
            "data": {"prompt": "a", "size": "64x64"},
        },
        400,
        "size",
    ),
    ("post", "/v1/images/edits", {"json": {"prompt": "a", "image": "%%%not-base64%%%"}}, 400, "image"),
    (
        "post",
        "/v1/images/edits",
        {
            "json": {
                "prompt": "a",
                "image": base64.b64encode(png(SOURCE)).decode(),
                "mask": "data:image/png;base64,@@@",
            }
        },
        400,
        "mask",
    ),
    (
        "post",
        "/v1/images/edits",
        {
            "files": {"image": ("big.png", png(Image.new("RGB", (2048, 2048))), "image/png")},
            "data": {"prompt": "a"},
        },
        413,
        "image",
    ),
    (
        "post",
        "/v1/fastmuse/outpaint",
        {"files": {"image": ("a.png", png(SOURCE), "image/png")}, "data": {"prompt": "a"}},
        400,
        "left",
    ),
    (
        "post",
        "/v1/fastmuse/outpaint",
        {"files": {"image": ("a.png", png(SOURCE), "image/png")}, "data": {"prompt": "a", "top": "-4"}},
        400,
        "top",
    ),
    (
        "post",
        "/v1/fastmuse/edit",
        {"files": {"image": ("a.png", png(SOURCE), "image/png")}, "data": {"prompt": "a", "strength": "2"}},
        400,
        "strength",
    ),
    (
        "post",
        "/v1/fastmuse/edit",
        {"files": {"image": ("a.png", png(SOURCE), "image/png")}, "data": {"prompt": "a", "iterations": "0"}},
        400,
        "iterations",
    ),
]


@pytest.mark.parametrize(
    "method,path,kwargs,status,param", BAD, ids=[f"{i}-{b[1]}-{b[4]}" for i, b in enumerate(BAD)]
)
def test_bad_input_is_a_named_4xx(client, method, path, kwargs, status, param):
    r = getattr(client, method)(path, **kwargs)
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert error["param"] == param and error["message"]
    if param:
        assert param.split("-")[0].lower() in error["message"].lower() or status in (404, 405)
    assert client.get("/healthz").status_code == 200  # still serving


@pytest.fixture(scope="module")
def server(model_dir):
    """A real `fastmuse serve` process on a free port; a small queue so that load finds its limit."""
    proc, url = start_server("--model", str(model_dir), "--name", "tiny", "--max-queue", "16",
                             "--max-batch", "8", stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             text=True, env={**os.environ, "FASTMUSE_API_KEY": "k3y"})
    yield url, proc
    proc.terminate()
    proc.wait(timeout=30)


def test_official_openai_client(server):
    from openai import OpenAI

    url, _ = server
    client = OpenAI(base_url=url + "/v1", api_key="k3y", max_retries=0)
    out = client.images.generate(
        model="tiny",
        prompt="a red square",
        n=2,
        size="32x32",
        response_format="b64_json",
        extra_body={"seed": 4},
    )
    assert len(out.data) == 2 and decode(out.data[0].model_dump()).size == (32, 32)
    edit = client.images.edit(
        image=("a.png", png(SOURCE), "image/png"),
        mask=("m.png", png(HOLE), "image/png"),
        prompt="a blue square",
        n=1,
        response_format="b64_json",
    )
    assert decode(edit.data[0].model_dump()).size == (32, 32)
    import openai

    with pytest.raises(openai.BadRequestError, match="prompt"):
        client.images.generate(prompt="", n=1)
    with pytest.raises(openai.AuthenticationError):
        OpenAI(base_url=url + "/v1", api_key="wrong", max_retries=0).images.generate(prompt="a red square")


def test_load_200_concurrent_requests(server):
    import psutil

    url, proc = server
    rss = psutil.Process(proc.pid).memory_info().rss

    async def run():
        limits = httpx.Limits(max_connections=200)
        async with httpx.AsyncClient(
            base_url=url, timeout=120, limits=limits, headers={"Authorization": "Bearer k3y"}
        ) as c:
            return await asyncio.gather(
                *(
                    c.post("/v1/images/generations", json={"prompt": f"a red square {i % 7}", "seed": i})
                    for i in range(200)
                ),
                return_exceptions=True,
            )

    t0 = time.monotonic()
    responses = asyncio.run(run())
    took = time.monotonic() - t0
    codes = [r.status_code if isinstance(r, httpx.Response) else repr(r) for r in responses]
    assert set(codes) <= {200, 429}, codes  # none lost, none hung, nothing else
    assert codes.count(200) >= 16 and took < 120
    assert all(r.headers.get("retry-after") for r in responses if r.status_code == 429)
    assert proc.poll() is None and httpx.get(url + "/healthz").json()["queue_depth"] == 0
    assert psutil.Process(proc.pid).memory_info().rss < rss + (300 << 20)  # bounded (+300 MiB)
    metrics = httpx.get(url + "/metrics", headers={"Authorization": "Bearer k3y"}).text
    ok = [
        json.loads(line.split()[-1])
        for line in metrics.splitlines()
        if line.startswith('fastmuse_requests_total{endpoint="/v1/images/generations",status="200"')
    ]
    assert ok and ok[0] >= codes.count(200)
