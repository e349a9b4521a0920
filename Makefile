# remedis-tf: every target creates .venv and installs into it when missing.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.remedis-installed
BEAM_VENV := .venv-beam
BEAM_STAMP := $(BEAM_VENV)/.remedis-installed
RESULTS := .test-results
DEMO_DIR ?= demo_output
# Three xdist workers on 2 cores: the tests also wait on child processes and trace in
# single-threaded Python, so a third worker keeps both cores busy. Measured on one
# fresh clone, 2-core AVX-512, same hour: 2 workers 673 s, 3 workers 559 s.
PYTEST_WORKERS ?= 3

.PHONY: venv beam-venv test test-fast demo bazel-build bazel-test lint format clean

venv: $(STAMP)

# requirements-onnx.lock: the `onnx` extra (tf2onnx, onnx, onnxruntime); the tests cover it.
# requirements-reference.lock: scikit-learn for the tests, in $(VENV)/reference, which only
# the pytest process puts on sys.path (tests/conftest.py): Keras imports scikit-learn
# whenever it can, which cost every TensorFlow process 1.3 s of CPU.
$(STAMP): requirements.lock requirements-onnx.lock requirements-reference.lock pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check --upgrade pip
	$(PY) -m pip install -q --disable-pip-version-check -r requirements.lock -r requirements-onnx.lock
	$(PY) -m pip install -q --disable-pip-version-check --no-deps --upgrade \
	  --target $(VENV)/reference -r requirements-reference.lock
	$(PY) -m pip install -q --disable-pip-version-check --no-deps -e .
	@touch $@

# Apache Beam needs protobuf < 7, so its pipeline test runs in a second venv.
beam-venv: $(BEAM_STAMP)

$(BEAM_STAMP): requirements-beam.lock
	@test -x $(BEAM_VENV)/bin/python || $(PYTHON) -m venv $(BEAM_VENV)
	$(BEAM_VENV)/bin/python -m pip install -q --disable-pip-version-check --upgrade pip
	$(BEAM_VENV)/bin/python -m pip install -q --disable-pip-version-check -r requirements-beam.lock
	@touch $@

# The README's test command: the whole pytest suite (unit, slow, integration),
# then the Beam DirectRunner test in the Beam venv.
test: $(STAMP) $(BEAM_STAMP)
	@mkdir -p $(RESULTS)
	$(PY) -m pytest -n $(PYTEST_WORKERS) --dist loadfile --junitxml=$(RESULTS)/pytest.xml \
	  --ignore=tests/beam_pipeline_test.py --ignore=tests/tile_beam_test.py tests
	PYTHONPATH=$(CURDIR) $(BEAM_VENV)/bin/python -m pytest -p no:cacheprovider \
	  --junitxml=$(RESULTS)/pytest-beam.xml tests/beam_pipeline_test.py tests/tile_beam_test.py

# Fast unit tests only (what Bazel runs).
test-fast: $(STAMP)
	$(PY) -m pytest -n $(PYTEST_WORKERS) -m "not slow and not integration" tests

# The README's main-job command: the REMEDIS data-efficiency study on built-in synthetic data.
demo: $(STAMP)
	$(VENV)/bin/remedis-demo --output_dir $(DEMO_DIR)

bazel-build: $(STAMP)
	bazel build //...

bazel-test: $(STAMP)
	bazel test //...

lint: $(STAMP)
	$(VENV)/bin/ruff check remedis_tf tfrecords_tools hub_export tests benchmarks bazel
	$(VENV)/bin/ruff format --check remedis_tf tfrecords_tools hub_export tests benchmarks bazel

format: $(STAMP)
	$(VENV)/bin/ruff format remedis_tf tfrecords_tools hub_export tests benchmarks bazel
	$(VENV)/bin/ruff check --fix remedis_tf tfrecords_tools hub_export tests benchmarks bazel

clean:
	rm -rf $(RESULTS) .pytest_cache
	-bazel clean
