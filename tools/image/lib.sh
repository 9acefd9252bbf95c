# Shared by the tools/image scripts: the container settings, the prerequisite checks, and the pip mounts.
# Source it; it sets IMAGE_DIR, REPO and CONTAINERS_CONF.
IMAGE_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$IMAGE_DIR/../.." && pwd)
export CONTAINERS_CONF=${CONTAINERS_CONF:-$IMAGE_DIR/containers.conf}

STANDIN_BASE=${STANDIN_BASE:-localhost/ray-standin:2.60.0-py311}
CPU_IMAGE=${CPU_IMAGE:-localhost/mnist-train:0.1.0-cpu}
GPU_IMAGE=${GPU_IMAGE:-localhost/mnist-train:0.1.0-gpu}
DEBIAN_SUITE=${DEBIAN_SUITE:-bookworm}

die() { echo "$(basename "$0"): $*" >&2; exit 1; }
log() { echo "[$(date -u +%H:%M:%S)] $*" >&2; }

# The first URI of the Debian suite apt uses here (deb822 or one-line sources).
debian_mirror() {
    local uri
    uri=$(grep -hs '^URIs:' /etc/apt/sources.list.d/*.sources | awk '{print $2}' | grep -v security | head -1)
    [ -n "$uri" ] || uri=$(grep -hs '^deb ' /etc/apt/sources.list | awk '{print $2}' | grep -v security | head -1)
    echo "${uri:-http://deb.debian.org/debian}"
}

# One line for each missing prerequisite, then a non-zero exit. $1: how much free disk (GiB) the step needs.
check_prerequisites() {
    local need_gb=${1:-20} missing=0 tool
    [ "$(id -u)" = 0 ] || { echo "prerequisite: run as root (debootstrap, podman and buildah need it here)" >&2; missing=1; }
    for tool in podman buildah runc debootstrap; do
        command -v "$tool" >/dev/null ||
            { echo "prerequisite: $tool is not installed (Debian: apt-get install -y podman buildah runc debootstrap)" >&2; missing=1; }
    done
    local mirror
    mirror=$(debian_mirror)
    curl -fsS -o /dev/null --max-time 20 "$mirror/dists/$DEBIAN_SUITE/Release" ||
        { echo "prerequisite: the Debian mirror $mirror does not answer (debootstrap needs it)" >&2; missing=1; }
    local index
    index=$(pip_index_url)
    case "$index" in
        file://*) [ -d "${index#file://}" ] || { echo "prerequisite: pip's index $index is missing" >&2; missing=1; } ;;
        *) curl -fsS -o /dev/null --max-time 20 "${index%/}/pip/" ||
               { echo "prerequisite: pip's index $index does not answer (the builds install from it)" >&2; missing=1; } ;;
    esac
    local store free_gb
    store=$(podman info --format '{{.Store.GraphRoot}}' 2>/dev/null || echo /var/lib/containers)
    mkdir -p "$store"
    free_gb=$(df -P --block-size=1G "$store" | awk 'NR==2 {print $4}')
    [ "${free_gb:-0}" -ge "$need_gb" ] ||
        { echo "prerequisite: ${free_gb:-0} GiB free under $store, this step needs about $need_gb GiB" >&2; missing=1; }
    return $missing
}

pip_index_url() {
    local url
    url=$(python3 -m pip config get global.index-url 2>/dev/null || true)
    echo "${PIP_INDEX_URL:-${url:-https://pypi.org/simple}}"
}

# `-v host:container:ro` for everything pip needs on this machine: its config files, the CA bundle and the local
# indexes they name. Mounted into RUN steps only: nothing of it ends up in an image.
pip_mounts() {
    local f args=()
    # pip reads /etc/pip.conf and /etc/xdg/pip/pip.conf for every user; root's own file is read by root only, so
    # it goes to the build user's place (HOME=/home/ray).
    [ -f /etc/pip.conf ] && args+=(--volume=/etc/pip.conf:/etc/pip.conf:ro)
    [ -d /etc/xdg/pip ] && args+=(--volume=/etc/xdg/pip:/etc/xdg/pip:ro)
    for f in "${XDG_CONFIG_HOME:-$HOME/.config}/pip/pip.conf" "$HOME/.pip/pip.conf"; do
        [ -f "$f" ] && { args+=("--volume=$f:/etc/pip-user.conf:ro"); break; }
    done
    local cert
    cert=$(python3 -m pip config get global.cert 2>/dev/null || true)
    cert=${PIP_CERT:-${cert:-/etc/ssl/certs/ca-certificates.crt}}
    [ -f "$cert" ] && args+=("--volume=$cert:$cert:ro")
    # Local indexes and wheel folders the configuration names (file:// URLs, find-links paths).
    local paths
    paths=$(python3 -m pip config list 2>/dev/null | grep -oE "(file://)?/[^' ]+" | sed 's|^file://||' | sort -u)
    for f in $paths ${PIP_FIND_LINKS:-}; do
        case "$f" in *.conf|*.txt|*.crt|*.pem) continue ;; esac
        f=${f%/simple}
        [ -d "$f" ] && args+=("--volume=$f:$f:ro")
    done
    printf '%s\n' "${args[@]}" | awk '!seen[$0]++'
}
