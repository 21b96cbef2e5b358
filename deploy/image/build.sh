#!/usr/bin/env bash
# Build the hpcinsight OCI image with podman: `make image` runs this.
#
# No container registry is reachable on the project's machines, so by default the base layer is made
# here from Debian packages (debootstrap, Debian 12 "bookworm": its python3.11 is the project's
# Python) and imported into podman; the rootfs tarball is cached under ~/.cache/hpcinsight/image so
# the next build only re-imports it. Where a registry exists, BASE=<image> (with PYTHON=<interpreter>
# in that image) builds on any base instead, e.g. BASE=docker.io/library/python:3.11-slim-bookworm
# PYTHON=python3.11.
#
# The Python packages are resolved on the build host (pip's cache makes that quick) into a wheelhouse
# in the build context and installed offline in the image: the build itself needs no network.
#
# Environment: IMAGE (tag, default hpcinsight:<version>), BASE, PYTHON, HPCINSIGHT_CACHE
# (default ~/.cache/hpcinsight), DEBIAN_MIRROR (default: the host's apt mirror or deb.debian.org).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
HOST_PYTHON="${HOST_PYTHON:-$ROOT/.venv/bin/python}"
VERSION="$("$HOST_PYTHON" -c 'import hpcinsight; print(hpcinsight.__version__)')"
IMAGE="${IMAGE:-hpcinsight:$VERSION}"
CACHE="${HPCINSIGHT_CACHE:-$HOME/.cache/hpcinsight}/image"
SUITE=bookworm
# What the base holds: the interpreter and venv module, CA certificates for TLS to Kafka and
# ClickHouse, and tini as PID 1 (forwards signals, reaps children: the agent and worker stop
# cleanly on SIGTERM only if a real init passes it on).
BASE_PACKAGES="python3.11,python3.11-venv,ca-certificates,tini"
BASE_TAG="localhost/hpcinsight-base:$SUITE-$(echo "$BASE_PACKAGES" | sha256sum | cut -c1-12)"
mkdir -p "$CACHE"

die() { echo "image: $*" >&2; exit 1; }

# This VM's podman needs no default ulimits (the kernel refuses them here) and runc (crun fails on
# its cgroup mode). Both are harmless elsewhere; an operator's own CONTAINERS_CONF is kept.
if [ -z "${CONTAINERS_CONF:-}" ]; then
  export CONTAINERS_CONF="$CACHE/containers.conf"
  # replaced atomically, and only when it differs: a podman starting meanwhile must never read it half-written
  if [ "$(cat "$CONTAINERS_CONF" 2>/dev/null)" != "$(printf '[containers]\ndefault_ulimits = []')" ]; then
    printf '[containers]\ndefault_ulimits = []\n' > "$CONTAINERS_CONF.$$" && mv -f "$CONTAINERS_CONF.$$" "$CONTAINERS_CONF"
  fi
fi
PODMAN=(podman --runtime "${PODMAN_RUNTIME:-runc}")
command -v podman >/dev/null || die "podman is not installed (Debian: apt-get install podman runc)"

base_image() {
  if [ -n "${BASE:-}" ]; then echo "$BASE"; return; fi
  if "${PODMAN[@]}" image exists "$BASE_TAG"; then echo "$BASE_TAG"; return; fi
  local tarball="$CACHE/base-$SUITE-${BASE_TAG##*-}.tar"
  if [ ! -s "$tarball" ]; then
    command -v debootstrap >/dev/null || die "debootstrap is not installed (Debian: apt-get install debootstrap)"
    [ "$(id -u)" = 0 ] || die "debootstrap needs root to build the base layer (or give BASE=<image>)"
    local mirror="${DEBIAN_MIRROR:-$(sed -n 's/^URIs: *//p' /etc/apt/sources.list.d/debian.sources 2>/dev/null | head -1)}"
    mirror="${mirror:-http://deb.debian.org/debian}"
    local rootfs; rootfs="$(mktemp -d "$CACHE/rootfs.XXXXXX")"
    trap 'rm -rf "$rootfs"' EXIT
    echo "image: building the $SUITE base from $mirror (once; cached in $tarball)" >&2
    # minbase first, then the packages with apt inside it: debootstrap's own --include configures
    # python3.11-venv before its dependencies and fails
    debootstrap --variant=minbase "$SUITE" "$rootfs" "$mirror" >"$CACHE/debootstrap.log" 2>&1 \
      || { cp "$rootfs/debootstrap/debootstrap.log" "$CACHE/debootstrap-inner.log" 2>/dev/null;
           die "debootstrap failed; see $CACHE/debootstrap.log"; }
    chroot "$rootfs" /usr/bin/env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
      ${BASE_PACKAGES//,/ } >>"$CACHE/debootstrap.log" 2>&1 || die "apt-get install in the base failed; see $CACHE/debootstrap.log"
    chroot "$rootfs" apt-get clean
    # smaller and reproducible: no apt lists, caches, docs or man pages
    rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/*.bin "$rootfs"/var/cache/apt/archives/*.deb \
           "$rootfs"/usr/share/doc/* "$rootfs"/usr/share/man/* "$rootfs"/usr/share/info/* "$rootfs"/var/log/*.log
    tar --numeric-owner -C "$rootfs" -cf "$tarball.tmp" . && mv "$tarball.tmp" "$tarball"
    rm -rf "$rootfs"; trap - EXIT
  fi
  "${PODMAN[@]}" import --quiet --change 'CMD ["/bin/bash"]' "$tarball" "$BASE_TAG" >/dev/null
  echo "$BASE_TAG"
}

if [ "${1:-}" = "--base-only" ]; then base_image; exit 0; fi

CONTEXT="$(mktemp -d)"
trap 'rm -rf "$CONTEXT"' EXIT
# the project's wheel and every dependency at the versions of constraints.txt (the ones `make setup`
# installs and the suite tests), with every extra: one image runs every component, the Kubernetes
# scheduler watcher of the Helm chart included. Built from a copy of what the wheel ships: setuptools
# builds in the tree's build/, and a module removed from the tree since an earlier build stays there
# and would be in the wheel.
"$HOST_PYTHON" - "$ROOT" "$CONTEXT/src" <<'EOF' || die "could not copy the sources"
import shutil, sys, tomllib
from pathlib import Path
root, src = Path(sys.argv[1]), Path(sys.argv[2])
src.mkdir()
for name in ("pyproject.toml", "README.md", "LICENSE"):
    shutil.copy2(root / name, src / name)
for folder in set(tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"].values()):
    shutil.copytree(root / folder, src / folder, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
EOF
"$HOST_PYTHON" -m pip wheel --quiet --wheel-dir "$CONTEXT/wheels" --constraint "$ROOT/constraints.txt" "$CONTEXT/src[all]" \
  || die "pip could not build the wheelhouse"
rm -rf "$CONTEXT/src"
# the project's own wheel apart: it changes with every commit, its dependencies seldom, so podman
# reuses the dependency layer
mkdir "$CONTEXT/app" && mv "$CONTEXT"/wheels/hpcinsight-*.whl "$CONTEXT/app/"
cp "$ROOT/deploy/image/Containerfile" "$CONTEXT/Containerfile"
BASE_REF="$(base_image)"
REVISION="$(git -C "$ROOT" rev-parse HEAD 2>/dev/null || echo unknown)"
# where the source is: the clone's origin, or SOURCE=<url> (the project has no public address yet)
SOURCE="${SOURCE:-$(git -C "$ROOT" config --get remote.origin.url 2>/dev/null || echo "hpcinsight $VERSION (no origin)")}"
"${PODMAN[@]}" build --network host --layers \
  --build-arg BASE="$BASE_REF" --build-arg PYTHON="${PYTHON:-python3.11}" \
  --build-arg DEPS_WHEELS="$(ls "$CONTEXT/wheels" | sha256sum | cut -c1-16)" \
  --build-arg APP_WHEEL="$(cat "$CONTEXT"/app/*.whl | sha256sum | cut -c1-16)" \
  --build-arg VERSION="$VERSION" --build-arg REVISION="$REVISION" --build-arg SOURCE="$SOURCE" \
  --build-arg CREATED="$(date -u +%Y-%m-%dT%H:%M:%SZ)" \
  -t "$IMAGE" "$CONTEXT" >&2
# the previous build of this image, now untagged
"${PODMAN[@]}" image prune -f --filter label=org.opencontainers.image.title=hpcinsight >/dev/null || true
SIZE="$("${PODMAN[@]}" image inspect --format '{{.Size}}' "$IMAGE")"
echo "image: $IMAGE $(( SIZE / 1000000 )) MB" >&2
echo "$IMAGE"
