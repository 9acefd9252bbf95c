#!/usr/bin/env bash
# Builds the CPU and GPU images from the Dockerfile with buildah, on the stand-in Ray base (build-base.sh), and
# measures them:
#   tools/image/build.sh [cpu] [gpu]       default: both
# For each image: the cold build (no cached layers), the rebuild after a change to job/ only (on a copy of the
# build context), the size uncompressed and as gzip-compressed layers, and the five largest layers.
# The figures go to stdout and to $REPORT_DIR/build-<flavour>.txt. SKIP_COLD=1 measures the rebuild only,
# SKIP_MEASURE=1 leaves out the sizes.
set -euo pipefail
. "$(dirname "$0")/lib.sh"

flavours=("$@")
[ ${#flavours[@]} -gt 0 ] || flavours=(cpu gpu)
REPORT_DIR=${REPORT_DIR:-/var/tmp/mnist-image-report}
mkdir -p "$REPORT_DIR"
"$IMAGE_DIR/build-base.sh"

work=$(mktemp -d /var/tmp/mnist-build.XXXXXX)
trap 'rm -rf "$work"' EXIT
# The builds below leave untagged images (each build replaces the tag; --layers keeps every step): about 40 GB after
# two runs here. Those that this run made are removed at its end; a user's own untagged images stay.
podman images --quiet --no-trunc --filter dangling=true | sort >"$work/dangling-before"
# The build context as the builder sees it: the files .dockerignore lets through (an allow-list), copied so that
# the job/-only change below never touches the checkout. From the commit (HEAD), so that the image is what GIT_SHA
# names; WORKTREE=1 (or no git) takes the working tree instead, uncommitted changes included.
context=(pyproject.toml README.md constraints.txt job tools/image/pins.py Dockerfile .dockerignore)
git_sha=$(git -C "$REPO" rev-parse HEAD 2>/dev/null || true)
if [ -n "$git_sha" ] && [ -z "${WORKTREE:-}" ]; then
    git -C "$REPO" archive --format=tar HEAD "${context[@]}" | tar -C "$work" -x
else
    (cd "$REPO" && tar -c --exclude=__pycache__ --exclude='*.pyc' "${context[@]}") | tar -C "$work" -x
    git_sha=""
fi

mapfile -t mounts < <(pip_mounts)
pipconf=()
printf '%s\n' "${mounts[@]}" | grep -q ':/etc/pip-user.conf:' && pipconf=(--build-arg PIP_CONFIG_FILE=/etc/pip-user.conf)

build() {  # build <image> <extras> [buildah options...]
    local image=$1 extras=$2
    shift 2
    buildah bud --isolation chroot --layers "${mounts[@]}" "${pipconf[@]}" "$@" \
        --build-arg "BASE_IMAGE=$STANDIN_BASE" --build-arg "EXTRAS=$extras" --build-arg "GIT_SHA=$git_sha" \
        -f "$work/Dockerfile" -t "$image" "$work"
}

seconds() { awk -v a="$1" -v b="$(date +%s.%N)" 'BEGIN {printf "%.0f", b - a}'; }

measure() {  # measure <image>: sizes and largest layers
    local image=$1 out
    out=$(mktemp -d /var/tmp/mnist-layers.XXXXXX)
    podman push --quiet --compress --format oci "$image" "dir:$out" >/dev/null
    local compressed
    compressed=$(find "$out" -type f ! -name '*.json' ! -name version -printf '%s\n' | awk '{s += $1} END {print s}')
    rm -rf "$out"
    # (podman 4.3's Go templates clamp sizes at 2^31 - 1: read them from the JSON)
    podman image inspect "$image" | python3 -c 'import json, sys; s = json.load(sys.stdin)[0]["Size"]
print(f"size uncompressed: {s / 1e9:.2f} GB ({s} bytes)")'
    echo "size as gzip layers (what a registry stores and a node pulls): $(awk -v s="$compressed" 'BEGIN {printf "%.2f GB (%.0f bytes)", s / 1e9, s}')"
    echo "largest layers (uncompressed):"
    podman history --format json "$image" | python3 -c 'import json, sys
for layer in sorted(json.load(sys.stdin), key=lambda l: -l["size"])[:5]:
    print("  %9.1f MB  %s" % (layer["size"] / 1e6, layer["CreatedBy"][:110]))'
}

for flavour in "${flavours[@]}"; do
    case $flavour in
        cpu) image=$CPU_IMAGE extras= ;;
        gpu) image=$GPU_IMAGE extras=gpu ;;
        *) die "unknown flavour $flavour (cpu or gpu)" ;;
    esac
    report=$REPORT_DIR/build-$flavour.txt
    if [ -z "${SKIP_COLD:-}" ]; then
        log "$image: cold build (EXTRAS=$extras, base $STANDIN_BASE)"
        start=$(date +%s.%N)
        build "$image" "$extras" --no-cache >"$REPORT_DIR/build-$flavour.log" 2>&1 ||
            { tail -30 "$REPORT_DIR/build-$flavour.log" >&2; die "$image: the build failed (log: $REPORT_DIR/build-$flavour.log)"; }
        cold="$(seconds "$start") s"
    else
        cold="not measured (SKIP_COLD)"
    fi
    # buildah 1.28 does not reuse the ENV step of a --no-cache build: one plain build first, as a developer's
    # machine has had, so that the rebuild below measures the change alone.
    build "$image" "$extras" >>"$REPORT_DIR/build-$flavour.log" 2>&1 ||
        { tail -30 "$REPORT_DIR/build-$flavour.log" >&2; die "$image: the build failed"; }
    log "$image: rebuild after a change to job/ only"
    # A change of its own each time: the same line again would be a layer the cache already holds (1 s, not a build).
    echo "# a change to job/ only, $(date +%s%N)" >>"$work/job/__init__.py"
    start=$(date +%s.%N)
    build "$image" "$extras" >>"$REPORT_DIR/build-$flavour.log" 2>&1 ||
        { tail -30 "$REPORT_DIR/build-$flavour.log" >&2; die "$image: the rebuild failed"; }
    rebuild=$(seconds "$start")
    sed -i '$ d' "$work/job/__init__.py"
    # The image left tagged is the one built from the checkout as it is.
    build "$image" "$extras" >>"$REPORT_DIR/build-$flavour.log" 2>&1
    {
        echo "== $image (EXTRAS=$extras) on $STANDIN_BASE, $(nproc) CPUs, $(date -u +%FT%TZ)"
        echo "cold build: $cold"
        echo "rebuild after a change to job/ only: $rebuild s"
        [ -n "${SKIP_MEASURE:-}" ] || measure "$image"
        grep -h 'pins.py: kept' "$REPORT_DIR/build-$flavour.log" | sort -u | sed 's/^/  /' || true
    } | tee "$report"
done

podman images --quiet --no-trunc --filter dangling=true | sort | comm -13 "$work/dangling-before" - >"$work/made"
xargs --no-run-if-empty podman rmi --force <"$work/made" >/dev/null 2>&1 || true
log "removed the $(wc -l <"$work/made") untagged images these builds left"
