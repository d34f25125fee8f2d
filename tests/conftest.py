import os

# Tests never reach a model hub; two CPU cores are the target machine.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def pytest_configure(config):
    """`--precision auto` (the CLI default) resolves to fp32 in tests, on every machine, so CLI
    outputs compare with the Python API's (fp32); tests/test_fast.py checks the probe itself."""
    import json
    import tempfile

    from fastmuse.fast import machine_key

    cache = tempfile.mkdtemp(prefix="fastmuse-cache-")
    with open(os.path.join(cache, "precision.json"), "w", encoding="utf-8") as f:
        json.dump({machine_key(): {"precision": "fp32"}}, f)
    os.environ["FASTMUSE_CACHE"] = cache
