# The two commands the README opens with:  `make train`  and  `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
ARGS ?=

.PHONY: setup train test test-fast test-deps lint bench bench-mnist clean image-check

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

# Two test processes, a test file each at a time (module fixtures start once): the suite waits on Ray, servers and
# subprocesses more than it computes; on 2 cores 634-641 s of tests instead of 974-1,097 s in one (docs/development.md).
TEST_PROCESSES ?= 2
test: setup test-deps
	$(PY) -m pytest -n $(TEST_PROCESSES) --dist loadfile $(ARGS)

# Everything that needs no training run and no server: config, data, models, ledger, augmentation, chart, kind flow.
FAST := tests/test_cli.py tests/test_data.py tests/test_models.py tests/test_ledger.py tests/test_augment.py \
	tests/test_repo.py tests/test_private_apis.py tests/test_bench.py tests/test_serve_calls.py \
	tests/chart tests/k8s tests/metrics/test_dashboard.py tests/metrics/test_local_prometheus.py
test-fast: setup
	$(PY) -m pytest $(FAST) $(ARGS)

lint: setup
	$(VENV)/bin/ruff check job tests tools bench k8s
	$(VENV)/bin/ruff format --check job tests tools bench k8s

bench: setup
	$(PY) bench/mlp_fashion.py $(ARGS)

# Every model on full MNIST (about 1.5 h on 2 cores; run it again to go on where it stopped):
#   make bench-mnist DATA_URI=/data/mnist   (a folder of the four IDX .gz files, or mnist.npz)
bench-mnist: setup
	@test -n "$(DATA_URI)" || { echo "make bench-mnist: set DATA_URI to full MNIST (a folder of the four IDX .gz files or mnist.npz)"; exit 2; }
	$(PY) bench/mnist_full.py --data-uri $(DATA_URI) $(ARGS)

# The image, for real, without a cluster (root, podman, buildah, debootstrap; about half an hour on 2 cores):
#   make image-check [FLAVOURS=cpu] [DATA_URI=/data/mnist]   (docs/kubernetes.md)
image-check: setup test-deps
	FLAVOURS="$(FLAVOURS)" DATA_URI="$(DATA_URI)" tools/image/check.sh

clean:
	rm -rf $(VENV) .venv-s3 artifacts bench-mnist .pytest_cache
