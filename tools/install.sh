#!/usr/bin/env bash
# Installs this package with the pinned versions of constraints.txt. Used by the Makefile (CI) and the Dockerfile,
# so the image and CI get the same packages.  Usage: tools/install.sh [EXTRAS]   e.g. "dev" or "gpu"
set -euo pipefail
cd "$(dirname "$0")/.."
PIP=${PIP:-python -m pip}
EXTRAS=${1:-}
$PIP install --quiet --upgrade "pip>=24"
$PIP install --quiet --constraint constraints.txt -e ".${EXTRAS:+[$EXTRAS]}"
