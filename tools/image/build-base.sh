#!/usr/bin/env bash
# Builds the stand-in for the Ray base image from Debian's and PyPI's registries (see Containerfile.base):
#   tools/image/build-base.sh            -> localhost/ray-standin:2.60.0-py311 (skipped if it exists; FORCE=1 rebuilds)
# Needs root, debootstrap, podman, buildah and runc.
set -euo pipefail
. "$(dirname "$0")/lib.sh"

if [ -z "${FORCE:-}" ] && podman image exists "$STANDIN_BASE"; then
    log "$STANDIN_BASE exists (FORCE=1 rebuilds it)"
    exit 0
fi
check_prerequisites 10 || exit 1

ROOTFS_IMAGE=localhost/ray-standin-rootfs:$DEBIAN_SUITE
work=$(mktemp -d /var/tmp/ray-standin.XXXXXX)
trap 'rm -rf "$work"' EXIT

start=$(date +%s)
log "debootstrap $DEBIAN_SUITE from $(debian_mirror)"
# Everything from Debian comes in here, so the image build itself runs no apt.
debootstrap --variant=minbase \
    --include=python3,python3-venv,ca-certificates,wget,git,haproxy,socat,tzdata,netbase \
    "$DEBIAN_SUITE" "$work/rootfs" "$(debian_mirror)" >"$work/debootstrap.log" 2>&1 ||
    { tail -20 "$work/debootstrap.log" >&2; die "debootstrap failed"; }
rm -rf "$work/rootfs/var/cache/apt/archives/"*.deb "$work/rootfs/var/lib/apt/lists/"*
tar -C "$work/rootfs" -c . | podman import --change 'CMD ["/bin/bash"]' - "$ROOTFS_IMAGE" >/dev/null
log "rootfs imported as $ROOTFS_IMAGE after $(($(date +%s) - start)) s"

mapfile -t mounts < <(pip_mounts)
buildargs=(--build-arg "ROOTFS_IMAGE=$ROOTFS_IMAGE")
printf '%s\n' "${mounts[@]}" | grep -q ':/etc/pip-user.conf:' && buildargs+=(--build-arg PIP_CONFIG_FILE=/etc/pip-user.conf)
buildah bud --isolation chroot --layers "${mounts[@]}" "${buildargs[@]}" \
    -f "$IMAGE_DIR/Containerfile.base" -t "$STANDIN_BASE" "$IMAGE_DIR"
podman rmi "$ROOTFS_IMAGE" >/dev/null
log "$STANDIN_BASE built in $(($(date +%s) - start)) s"
