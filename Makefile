PYTHON ?= python3
VENV ?= .venv
# cpu: tensorflow-cpu (no CUDA, half the download); gpu: tensorflow[and-cuda].
PLATFORM ?= cpu
# The test extra's PyTorch, as a CPU-only build (PyPI's torch pulls GBs of CUDA): installed first,
# alone and without its dependencies (one look-up on that index), so the extra finds it satisfied.
TORCH ?= torch~=2.13.0
TORCH_INDEX ?= https://download.pytorch.org/whl/cpu
STAMP := $(VENV)/.installed-$(PLATFORM)

.PHONY: venv test test-slow demo bench figures loss-table lint clean

venv: $(STAMP)

$(STAMP): setup.cfg pyproject.toml
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install -q --upgrade pip
	$(VENV)/bin/python -m pip install -q --no-deps "$(TORCH)" --extra-index-url $(TORCH_INDEX)
	$(VENV)/bin/python -m pip install -q -e ".[$(PLATFORM),test]"
	rm -f $(VENV)/.installed-*
	touch $@

# The whole suite on TensorFlow, then the backend-agnostic tests (heads, losses) on JAX and PyTorch.
test: $(STAMP)
	$(VENV)/bin/python -m pytest -q
	KERAS_BACKEND=jax $(VENV)/bin/python -m pytest -q -m "multibackend and not slow"
	KERAS_BACKEND=torch $(VENV)/bin/python -m pytest -q -m "multibackend and not slow"

test-slow: $(STAMP)
	$(VENV)/bin/python -m pytest -q -m slow

demo: $(STAMP)
	$(VENV)/bin/python examples/demo.py

bench: $(STAMP)
	$(VENV)/bin/python benchmarks/bench_heads.py

figures: $(STAMP)
	$(VENV)/bin/python examples/feature_space.py --out docs/figures

DATA ?= ../shared/data/emoji-4vendor
loss-table: $(STAMP)
	$(VENV)/bin/python benchmarks/loss_table.py --data $(DATA) --out runs/loss_table

lint: $(STAMP)
	$(VENV)/bin/ruff check keras_facemargin tests examples benchmarks

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
