# Two entry points on a fresh machine: `make demo` (the main job end to end) and `make test`.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
RUN    := runs/demo
# The demo model: the tutorial's U-Net, narrowed to train in minutes on 2 CPU cores, on the embedded digits at 16x16.
DEMO_MODEL := --image-size 16 --dim 16 --dim-mults 1,2 --timesteps 200
DEMO_TRAIN := --steps 1500 --batch-size 64 --lr 2e-3 --ema 0.995 --checkpoint-every 500

.PHONY: setup demo test clean
setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[train,export,dev]"
	touch $@

demo: setup
	rm -rf $(RUN)
	$(PY) cli.py train --out $(RUN) $(DEMO_MODEL) $(DEMO_TRAIN)
	$(PY) cli.py sample --checkpoint $(RUN) --n 64 --out $(RUN)/reference.png --gif $(RUN)/reference.gif
	@echo "demo done: see $(RUN)/"

test: setup
	$(PY) -m pytest

clean:
	rm -rf $(VENV) runs .pytest_cache
