"""sha256 of what every bundled model makes (3 prompts x 2 seeds, fp32, one thread), one
inpaint and one server response. Float results differ across CPU instruction sets, CPU models
and thread counts, so hashes are only comparable on one kind of CPU: they are recorded per
`machine_key()` under tests/behaviour/, and tests/test_behaviour.py compares against the file
of the CPU it runs on (skipped where none was recorded).

    python scripts/behaviour_hashes.py --record          # write tests/behaviour/<machine key>.json
    python scripts/behaviour_hashes.py -o now.json       # or any file, to compare by hand
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import io
import json
import platform
import re
from pathlib import Path

import torch
from PIL import Image

from fastmuse.fsutil import atomic_write_text
from fastmuse.pipeline import Pipeline

PROMPTS = ["red heart", "a blue circle", "two yellow stars"]
MODELS = [["muse-128"], ["dimo-128"], ["ar-128"], ["dit-128"], ["dmd2-128"], ["dmd2-2step-128"], ["scd-128"],
          ["muse-64", "muse-sr-128"]]
RECORDS = Path(__file__).resolve().parents[1] / "tests" / "behaviour"


def machine_key() -> str:
    """torch version, the vector ISA torch dispatches to and the CPU model: what float results
    depend on besides the thread count (fixed at one)."""
    cpu = platform.processor()
    try:
        info = Path("/proc/cpuinfo").read_text()
        flags = set(re.search(r"^flags\s*:\s*(.+)$", info, re.M).group(1).split())
        cpu = re.search(r"^model name\s*:\s*(.+)$", info, re.M).group(1) + "".join(
            f"-{f}" for f in ("avx512_bf16", "amx_tile") if f in flags)
    except (OSError, AttributeError):
        pass
    raw = f"torch{torch.__version__}-{torch.backends.cpu.get_cpu_capability()}-{cpu}"
    return re.sub(r"[^A-Za-z0-9.+-]+", "_", raw).strip("_")


def digest(img: Image.Image) -> str:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return hashlib.sha256(buf.getvalue()).hexdigest()


def behaviour_hashes() -> dict[str, list[str]]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        out: dict[str, list[str]] = {}
        for names in MODELS:
            pipe = Pipeline.from_stages(names, precision="fp32") if len(names) > 1 else \
                Pipeline.from_pretrained(names[0], precision="fp32")
            out["+".join(names)] = [digest(img) for seed in (0, 1) for img in pipe(PROMPTS, seed=seed)]
        pipe = Pipeline.from_pretrained("muse-128", precision="fp32")
        source = pipe("red heart", seed=0)[0]
        out["inpaint"] = [digest(img) for img in pipe.inpaint(source, "blue heart", box=(20, 28, 108, 68),
                                                              n=2, seed=1).images]
        from fastapi.testclient import TestClient

        from fastmuse.serve import ServeSettings, create_app
        with TestClient(create_app(pipe, ServeSettings(model_name="muse-128"))) as client:
            r = client.post("/v1/images/generations", json={"prompt": "pizza", "n": 2, "seed": 1})
            r.raise_for_status()
            out["serve"] = [hashlib.sha256(base64.b64decode(d["b64_json"])).hexdigest()
                            for d in r.json()["data"]]
        return out
    finally:
        torch.set_num_threads(threads)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    where = ap.add_mutually_exclusive_group(required=True)
    where.add_argument("-o", "--output", help="JSON file to write")
    where.add_argument("--record", action="store_true", help="write tests/behaviour/<machine key>.json")
    a = ap.parse_args()
    path = RECORDS / f"{machine_key()}.json" if a.record else Path(a.output)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(behaviour_hashes(), indent=1) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
