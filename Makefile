# Two commands for a fresh machine: `make demo` (the main job) and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test install clean

# A plain `pip install .` is the runtime only (predict/bench of exported bundles, no torch). The demo trains, so it
# needs the [train] extra and the offline teacher's weights; the tests also the test tools and the optional
# extras they exercise (FAISS for retrieval, NVIDIA Model Optimizer for QAT and 2:4 sparsity, OpenVINO + NNCF,
# ExecuTorch). --no-compile: byte-compiling all of torch and its CUDA wheels took 40 of the 170 s of a fresh
# install; modules compile when imported.
$(VENV)/.demo: pyproject.toml
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --no-compile -e '.[train,lite,openvino,executorch]'
	touch $@

$(VENV)/.test: pyproject.toml
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --no-compile -e '.[train,lite,dev,retrieve,optimize,openvino,executorch]'
	touch $@ $(VENV)/.demo

install: $(VENV)/.test

demo: $(VENV)/.demo
	$(BIN)/edgedistill demo

test: $(VENV)/.test
	$(BIN)/python -m pytest -q

clean:
	rm -rf runs/demo
