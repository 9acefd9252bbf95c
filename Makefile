# The two commands the README opens with:  `make train`  and  `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
ARGS ?=

.PHONY: setup train test test-fast test-deps lint bench clean

setup: $(VENV)/.installed

# tools/install.sh is the same install step the Dockerfile runs.
$(VENV)/.installed: pyproject.toml constraints.txt tools/install.sh
	test -x $(PY) || python3 -m venv $(VENV)
	PIP="$(PY) -m pip" tools/install.sh dev
	touch $@

train: setup
	$(VENV)/bin/mnist-train train $(ARGS)

test-deps:
	tools/install-test-deps.sh

test: setup test-deps
	$(PY) -m pytest $(ARGS)

# Everything that needs no training run and no server: config, data, models, ledger, augmentation, chart, kind flow.
FAST := tests/test_cli.py tests/test_data.py tests/test_models.py tests/test_ledger.py tests/test_augment.py \
	tests/chart tests/k8s tests/metrics/test_dashboard.py tests/metrics/test_local_prometheus.py
test-fast: setup
	$(PY) -m pytest $(FAST) $(ARGS)

lint: setup
	$(VENV)/bin/ruff check job tests tools bench k8s
	$(VENV)/bin/ruff format --check job tests tools bench k8s

bench: setup
	$(PY) bench/mlp_fashion.py $(ARGS)

clean:
	rm -rf $(VENV) .venv-s3 artifacts .pytest_cache
