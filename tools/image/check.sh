#!/usr/bin/env bash
# `make image-check`: the image, for real, without a cluster. Checks the prerequisites (one line each), builds the
# stand-in Ray base and the images (FLAVOURS, default "cpu gpu"), then runs the job and the server inside the CPU
# image as the chart runs them, and the chart's pure defaults (a GPU per worker) to the job's refusal
# (k8s/image_check.py). DATA_URI: a host folder of full MNIST, mounted read-only
# (default: the sample shipped in the package). Every container and network it makes is removed; images are kept.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
cd "$REPO"

missing=0
check_prerequisites "${NEED_GB:-40}" || missing=1
[ -x .venv/bin/python ] || { echo "prerequisite: .venv is missing (make setup)" >&2; missing=1; }
[ -x .venv-s3/bin/moto_server ] || { echo "prerequisite: .venv-s3/bin/moto_server is missing (make test-deps)" >&2; missing=1; }
if [ -n "${DATA_URI:-}" ] && [ ! -d "$DATA_URI" ]; then
    echo "prerequisite: DATA_URI=$DATA_URI is not a folder (full MNIST: the four IDX .gz files or mnist.npz)" >&2
    missing=1
fi
[ $missing = 0 ] || exit 1

read -r -a flavours <<<"${FLAVOURS:-cpu gpu}"
"$IMAGE_DIR/build.sh" "${flavours[@]}"
.venv/bin/python k8s/image_check.py all ${DATA_URI:+--data-uri "$DATA_URI"} ${HOST_RESULTS:+--host-results "$HOST_RESULTS"}
# The chart's pure defaults ask for a GPU per worker: without one, the run must end with the job's one-line refusal.
defaults_image=$CPU_IMAGE
for f in "${flavours[@]}"; do [ "$f" = gpu ] && defaults_image=$GPU_IMAGE; done
.venv/bin/python k8s/image_check.py cluster --chart-defaults --image "$defaults_image" --report-dir /var/tmp/mnist-image-report/chart-defaults
echo "image-check: kept the images $STANDIN_BASE$(for f in "${flavours[@]}"; do
    [ "$f" = cpu ] && printf ' %s' "$CPU_IMAGE"; [ "$f" = gpu ] && printf ' %s' "$GPU_IMAGE"; done)" \
    "(podman rmi them to free the disk)"
