# Two entry points on a fresh machine: `make demo` (the main job end to end) and `make test`.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
RUN    := runs/demo
# The demo model: the tutorial's U-Net and schedule (T=200), narrowed (dim 16, two resolutions) to train in
# minutes on 2 CPU cores, on the embedded digits at their native 8x8 (no flips: mirrored digits are not digits).
DEMO_MODEL := --image-size 8 --dim 16 --dim-mults 1,2 --timesteps 200
DEMO_TRAIN := --steps 1200 --batch-size 64 --lr 2e-3 --ema 0.995 --no-hflip --checkpoint-every 400
# `make train-dp`: the demo's training, data-parallel on WORKERS msrun workers on this machine (README: "Training on several devices").
DP_RUN      := runs/dp
WORKERS     ?= 2
MASTER_PORT ?= 8118

# The sampler the demo bakes into its sampler-step artifacts and uses on the runtime (docs/quality.md).
DEMO_SAMPLER := dpmpp-sde
DEMO_STEPS   := 10
HOST         := runtime/hosts/cpp/build/bin/ddpm-sample
WEB          := runtime/hosts/web
# Debian packages of the C++ host (JSON reader, PNG writer) and of its bundle test (strace: which files the bundled
# host opens): installed with apt-get, as root, where missing.
HOST_PACKAGES := nlohmann-json3-dev libpng-dev strace

.PHONY: setup mslite hosts web demo train-dp test clean
setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[train,export,openvino,dev]"
	touch $@

# The MindSpore Lite native bridge (fetches the PyPI mindspore-lite 2.0.0 wheel into .cache/, compiles; no-op when built).
mslite: setup
	$(PY) -m ms_ddpm.runtime.mslite.build

# The C++ host $(HOST) on the Lite wheel's C++ API (after mslite, which fetches the wheel).
hosts: mslite
	@dpkg -s $(HOST_PACKAGES) >/dev/null 2>&1 || [ "$$(id -u)" = 0 ] || { echo "error: make hosts needs Debian's $(HOST_PACKAGES): apt-get install $(HOST_PACKAGES), as root" >&2; exit 2; }
	dpkg -s $(HOST_PACKAGES) >/dev/null 2>&1 || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(HOST_PACKAGES))
	$(MAKE) -C runtime/hosts/cpp $$($(PY) -m ms_ddpm.runtime.mslite.build --make-variables)

# The browser host's npm packages, pinned by $(WEB)/package-lock.json (onnxruntime-web 1.30.0 for the page that
# `ms-ddpm web` serves, playwright-core for its tests), and, as root, Debian's chromium for the tests.
web: $(WEB)/node_modules/.package-lock.json
	@command -v chromium >/dev/null || [ "$$(id -u)" != 0 ] || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium)
	@command -v chromium >/dev/null || echo "make web: no chromium on PATH (Debian: apt-get install chromium, as root): the browser tests will skip"
$(WEB)/node_modules/.package-lock.json: $(WEB)/package-lock.json
	npm ci --prefix $(WEB) --no-audit --no-fund

# Train, sample with the MindSpore reference, export every format behind its gate, then sample without MindSpore:
# the Python runtime, and the C++ host on MindSpore Lite running the sampler-step artifact (same seed, same images).
demo: hosts
	rm -rf $(RUN)
	$(PY) cli.py train --out $(RUN) $(DEMO_MODEL) $(DEMO_TRAIN)
	$(PY) cli.py sample --checkpoint $(RUN) --n 64 --out $(RUN)/reference.png --gif $(RUN)/reference.gif
	$(PY) cli.py export --checkpoint $(RUN) --format onnx
	$(PY) cli.py export --checkpoint $(RUN) --format mindir
	$(PY) cli.py export --checkpoint $(RUN) --format mslite
	$(PY) cli.py verify $(RUN)/export/unet.onnx --checkpoint $(RUN) --end-to-end
	$(PY) cli.py verify $(RUN)/export/unet.lite.mindir --checkpoint $(RUN) --end-to-end
	$(PY) cli.py export --checkpoint $(RUN) --format onnx --sampler $(DEMO_SAMPLER) --steps $(DEMO_STEPS)
	$(PY) cli.py export --checkpoint $(RUN) --format mslite --sampler $(DEMO_SAMPLER) --steps $(DEMO_STEPS)
	$(PY) cli.py sample --artifact $(RUN)/export/unet.onnx --scheduler $(DEMO_SAMPLER) --steps $(DEMO_STEPS) --n 64 --out $(RUN)/runtime.png --gif $(RUN)/runtime.gif
	$(PY) cli.py sample --artifact $(RUN)/export/unet.sampler.onnx --n 64 --out $(RUN)/runtime-sampler.png
	$(HOST) --model $(RUN)/export/unet.sampler.lite.mindir --n 64 --seed 0 --out $(RUN)/cpp-lite.png
	@echo "demo done: see $(RUN)/ (reference.png/.gif: MindSpore; runtime*.png: the Python runtime; cpp-lite.png: the C++ host on Lite)"

train-dp: setup
	rm -rf $(DP_RUN)
	$(PY) cli.py train --out $(DP_RUN) $(DEMO_MODEL) $(DEMO_TRAIN) --workers $(WORKERS) --master-port $(MASTER_PORT)

test: hosts web
	$(PY) -m pytest

clean:
	rm -rf $(VENV) runs .pytest_cache $(WEB)/node_modules runtime/hosts/cpp/build
