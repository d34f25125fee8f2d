"""One GPU check in one command: `bash benchmarks/gpu_check.sh` (under 8 minutes on one GPU).

Sections, each timed and isolated (one that fails is recorded and the next runs); the JSON is
rewritten after each, so a run cut short still reports what it finished:

    reference  aMUSEd-256 with random weights in diffusers and in fastmuse: the two transformers'
               logits on the same input (fp32 max |diff|; bf16 relative L2 against fp32), then
               s/img at batch 1 and 16, 12 steps, for diffusers fp32 / bf16 autocast and fastmuse
               fp32 / bf16 (best of 2 timed calls after a warm-up), and a profile of one
               fastmuse batch-1 call (top operators by host and by device time)
    bundled    muse-128 on the device in its auto precision: 4 images (PNG beside the JSON)
    train      the masked-transformer trainer (muse-128's recipe on shapes) on the device, bf16
               autocast and TF32: seconds per step, from runs of 1 and `--train-steps` steps
               (the same setup, end-of-run eval and save around both)
    serve      the HTTP server answering one generation request (FastAPI's test client)

`--device cpu --smoke` runs every section at toy sizes on a CPU: what a session without a GPU
can check of this script.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from fastmuse.fsutil import atomic_write_text  # noqa: E402
from fastmuse.pipeline import Pipeline  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def best_seconds(call, device: torch.device, repeats: int = 2) -> float:
    call()  # warm-up: kernels picked, caches filled
    times = []
    for _ in range(repeats):
        sync(device)
        t0 = time.perf_counter()
        call()
        sync(device)
        times.append(time.perf_counter() - t0)
    return min(times)


def reference(device: torch.device, smoke: bool, out: Path) -> dict:
    from fastmuse.eval.speed_reference import PROMPT, amused_256, fastmuse_twin

    steps, guidance = (2, 10.0) if smoke else (12, 10.0)  # guidance on diffusers' scale
    ref = amused_256(tiny=smoke)
    twin = fastmuse_twin(ref, steps, guidance)
    ref.to(device)
    res: dict = {"steps": steps, "guidance_diffusers": guidance}
    ours = {p: Pipeline(twin.transformer, twin.tokenizer, twin.text_encoder, twin.defaults, precision=p,
                        device=device) for p in ("fp32", "bf16")}
    m = ours["fp32"].transformer
    grid, codes = m.config.grid, m.config.codebook_size
    ids = torch.randint(0, codes, (2, grid, grid), device=device)
    text = ours["fp32"].text_encoder.encode([PROMPT, ""])
    micro = torch.tensor([m.config.micro_conds] * 2, device=device)
    with torch.no_grad():
        want = ref.transformer(ids, text.hidden, text.pooled, micro).permute(0, 2, 3, 1)
        got = m(ids, m.prepare_text(text))
        with torch.autocast(device.type, dtype=torch.bfloat16):
            half = m(ids, m.prepare_text(text)).float()
    res["logits_fp32_max_abs_diff_vs_diffusers"] = float((got - want).abs().max())
    res["logits_bf16_rel_l2_vs_fp32"] = float((half - got).norm() / got.norm())
    # on a CPU, bf16 is skipped (on AVX2 it takes minutes per image: README, inference speed)
    for n in (1, 2) if smoke else (1, 16):
        for p in ("fp32", "bf16") if device.type == "cuda" else ("fp32",):
            def diffusers_call(p=p, n=n):
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=p == "bf16"):
                    ref(PROMPT, num_images_per_prompt=n, num_inference_steps=steps, guidance_scale=guidance,
                        generator=torch.Generator(device).manual_seed(0))
            res[f"diffusers_{p}_b{n}_s_per_img"] = best_seconds(diffusers_call, device) / n
            res[f"fastmuse_{p}_b{n}_s_per_img"] = best_seconds(
                lambda p=p, n=n: ours[p](PROMPT, n=n, steps=steps, guidance=guidance - 1, seed=0), device) / n
            print(f"  batch {n} {p}: diffusers {res[f'diffusers_{p}_b{n}_s_per_img']:.4f} s/img, fastmuse "
                  f"{res[f'fastmuse_{p}_b{n}_s_per_img']:.4f} s/img", flush=True)
    # where one batch-1 image's time goes (both libraries took ~60 ms a step on an H200 for a
    # model that needs a few): the top operators by their own host and device time
    res["profile_fastmuse_b1"] = profile(lambda: ours["fp32"](PROMPT, n=1, steps=steps, guidance=guidance - 1,
                                                              seed=0), device)
    return res


def profile(call, device: torch.device, rows: int = 15) -> dict:
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with torch_profile(activities=activities) as prof:
        call()
        sync(device)
    table = {}
    for key in ("self_cpu_time_total",) + (("self_device_time_total",) if device.type == "cuda" else ()):
        table[key] = prof.key_averages().table(sort_by=key, row_limit=rows, max_name_column_width=60)
        print(table[key], flush=True)
    return table


def bundled(device: torch.device, smoke: bool, out: Path) -> dict:
    from fastmuse.data.images import make_grid

    pipe = Pipeline.from_pretrained("muse-128", precision="auto", device=device)
    prompts = ["red heart", "a blue circle", "two yellow stars", "pizza"]
    seconds = best_seconds(lambda: pipe(prompts, seed=0), device, repeats=1)
    make_grid(pipe(prompts, seed=0), ncols=4, captions=prompts).save(out / "bundled.png")
    return {"precision": pipe.precision, "images": 4, "s_per_img": seconds / 4, "png": "bundled.png"}


def train(device: torch.device, smoke: bool, out: Path, steps: int) -> dict:
    from fastmuse.config import read_json
    from fastmuse.train.masked import TransformerTrainConfig, train_transformer

    cfg = TransformerTrainConfig.from_dict(read_json(ROOT / "configs" / "muse-128.json"))
    with tempfile.TemporaryDirectory() as tmp:
        cfg = cfg.replace(data=("shapes:0",), repeats=(1,), shapes_train=64 if smoke else 2048, shapes_val=16,
                          cache_dir=f"{tmp}/cache", eval_shapes=(), eval_every=10**6, save_every=10**6,
                          mixed_precision="bf16" if device.type == "cuda" else "no",
                          batch_size=4 if smoke else cfg.batch_size)
        if smoke:
            cfg = cfg.replace(sample_prompts=cfg.sample_prompts[:1], sample_steps=2)
        train_transformer(cfg.replace(steps=1), f"{tmp}/warm")  # builds the token cache
        seconds = {}
        for n in (1, steps):  # the same setup, end-of-run eval and save around 1 and `steps` steps
            t0 = time.perf_counter()
            train_transformer(cfg.replace(steps=n), f"{tmp}/run{n}")
            seconds[n] = time.perf_counter() - t0
    return {"steps": steps, "batch_size": cfg.batch_size, "run_seconds": seconds[steps],
            "s_per_step": (seconds[steps] - seconds[1]) / (steps - 1),
            "mixed_precision": cfg.mixed_precision}


def serve(device: torch.device, smoke: bool, out: Path) -> dict:
    from fastapi.testclient import TestClient

    from fastmuse.serve import ServeSettings, create_app

    pipe = Pipeline.from_pretrained("muse-128", precision="auto", device=device)
    with TestClient(create_app(pipe, ServeSettings(model_name="muse-128"))) as client:
        t0 = time.perf_counter()
        r = client.post("/v1/images/generations", json={"prompt": "red heart", "n": 1, "seed": 0,
                                                         "response_format": "b64_json"})
        seconds = time.perf_counter() - t0
    return {"status": r.status_code, "seconds": seconds, "images": len(r.json().get("data", []))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="outputs/gpu-check", help="folder for gpu_check.json and bundled.png")
    ap.add_argument("--device", default="cuda", help="cuda (default) or cpu")
    ap.add_argument("--smoke", action="store_true", help="toy sizes: check the script on a CPU")
    ap.add_argument("--sections", nargs="+", default=["reference", "bundled", "train", "serve"])
    ap.add_argument("--train-steps", type=int, default=200)
    a = ap.parse_args()
    device = torch.device(a.device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    result: dict = {"torch": torch.__version__, "device": str(device),
                    "name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
                    "smoke": a.smoke}
    sections = {"reference": reference, "bundled": bundled, "serve": serve,
                "train": lambda d, s, o: train(d, s, o, 3 if a.smoke else a.train_steps)}
    for name in a.sections:
        print(f"{name} ...", flush=True)
        t0 = time.perf_counter()
        try:
            result[name] = sections[name](device, a.smoke, out)
        except Exception as e:  # noqa: BLE001 - recorded; the next section still runs
            result[name] = {"error": f"{type(e).__name__}: {e}",
                            "traceback": traceback.format_exc()[-3000:]}
        result[name]["section_seconds"] = time.perf_counter() - t0
        shown = {k: v for k, v in result[name].items() if k != "traceback"}
        print(f"{name}: {json.dumps(shown)}", flush=True)
        atomic_write_text(out / "gpu_check.json", json.dumps(result, indent=2) + "\n")
    print(f"wrote {out / 'gpu_check.json'}")


if __name__ == "__main__":
    main()
