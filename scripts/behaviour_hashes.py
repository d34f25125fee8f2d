"""sha256 of what every bundled model makes (3 prompts x 2 seeds, fp32), one inpaint and one
server response: run before and after a refactor that must not change behaviour, on the same
machine (float results differ across CPU instruction sets), and compare the two files.

    python scripts/behaviour_hashes.py -o before.json   # ... refactor ...
    python scripts/behaviour_hashes.py -o after.json && cmp before.json after.json
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import io
import json

from PIL import Image

from fastmuse.fsutil import atomic_write_text
from fastmuse.pipeline import Pipeline

PROMPTS = ["red heart", "a blue circle", "two yellow stars"]
MODELS = [["muse-128"], ["dimo-128"], ["ar-128"], ["dit-128"], ["dmd-128"], ["muse-64", "muse-sr-128"]]


def digest(img: Image.Image) -> str:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return hashlib.sha256(buf.getvalue()).hexdigest()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-o", "--output", required=True, help="JSON file to write")
    a = ap.parse_args()
    out: dict[str, list[str]] = {}
    for names in MODELS:
        pipe = Pipeline.from_stages(names, precision="fp32") if len(names) > 1 else \
            Pipeline.from_pretrained(names[0], precision="fp32")
        key = "+".join(names)
        out[key] = [digest(img) for seed in (0, 1) for img in pipe(PROMPTS, seed=seed)]
        print(key, out[key][0][:12])
    pipe = Pipeline.from_pretrained("muse-128", precision="fp32")
    source = pipe("red heart", seed=0)[0]
    out["inpaint"] = [digest(img) for img in pipe.inpaint(source, "blue heart", box=(20, 28, 108, 68),
                                                          n=2, seed=1).images]
    from fastapi.testclient import TestClient

    from fastmuse.serve import ServeSettings, create_app
    with TestClient(create_app(pipe, ServeSettings(model_name="muse-128"))) as client:
        r = client.post("/v1/images/generations", json={"prompt": "pizza", "n": 2, "seed": 1})
        r.raise_for_status()
        out["serve"] = [hashlib.sha256(base64.b64decode(d["b64_json"])).hexdigest() for d in r.json()["data"]]
    atomic_write_text(a.output, json.dumps(out, indent=1) + "\n")
    print(f"wrote {a.output}")


if __name__ == "__main__":
    main()
