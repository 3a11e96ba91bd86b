#!/usr/bin/env bash
# Build the local base image the offline container build starts FROM: Debian bookworm (minbase)
# with its python3 (3.11) and pip, imported into buildah's storage as $BASE_IMAGE.
# Nothing is pulled from a registry; packages come from the Debian mirror. The root filesystem is
# cached as a tarball under $ROOTFS_CACHE_DIR, so only the first run on a machine pays for
# debootstrap (~50-80 s); every checkout's first build imports it from there.
#
#   BASE_IMAGE        image name in buildah's storage (default localhost/xgb-serving-base:bookworm)
#   BUILD_DIR         this checkout's container directory (default /var/tmp/xgb-serving<this checkout>/container, as the Makefile's)
#   ROOTFS_CACHE_DIR  the root filesystem tarball, shared by checkouts: it depends only on the
#                     Debian release and packages below (default /var/tmp/xgb-serving/debootstrap)
#   DEBIAN_MIRROR                (default http://deb.debian.org/debian)
set -euo pipefail

BASE_IMAGE=${BASE_IMAGE:-localhost/xgb-serving-base:bookworm}
BUILD_DIR=${BUILD_DIR:-/var/tmp/xgb-serving$PWD/container}
DEBIAN_MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
# pip is there only because BentoML's Dockerfile installs uv with it; python3 is what the service runs.
PACKAGES=python3,python3-pip
# The host's CA bundle: the build's RUN steps reach PyPI through the same network (and TLS
# inspection, if any) as this host. This base is for local builds only and is never pushed.
HOST_CA_BUNDLE=${SSL_CERT_FILE:-/etc/ssl/certs/ca-certificates.crt}

ROOTFS_CACHE_DIR=${ROOTFS_CACHE_DIR:-/var/tmp/xgb-serving/debootstrap}
ROOTFS_TAR="$ROOTFS_CACHE_DIR/base-rootfs-bookworm-${PACKAGES//,/-}.tar"

if buildah inspect --type image "$BASE_IMAGE" >/dev/null 2>&1; then
  echo "==> base image $BASE_IMAGE already in buildah's storage"
  exit 0
fi

mkdir -p "$BUILD_DIR" "$ROOTFS_CACHE_DIR"
if [ ! -s "$ROOTFS_TAR" ]; then
  rootfs=$(mktemp -d "$BUILD_DIR/rootfs.XXXXXX")
  trap 'rm -rf "$rootfs"' EXIT
  echo "==> debootstrap --variant=minbase bookworm (+ $PACKAGES) from $DEBIAN_MIRROR"
  started=$SECONDS
  debootstrap --variant=minbase --include="$PACKAGES" bookworm "$rootfs" "$DEBIAN_MIRROR" \
    > "$BUILD_DIR/debootstrap.log" 2>&1 \
    || { tail -20 "$BUILD_DIR/debootstrap.log"; echo "debootstrap failed (log: $BUILD_DIR/debootstrap.log)" >&2; exit 1; }
  echo "    done in $((SECONDS - started)) s"
  # What a runtime image never reads: package caches and lists, docs, man pages, translations.
  rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/* \
    "$rootfs"/usr/share/doc/* "$rootfs"/usr/share/man/* "$rootfs"/usr/share/info/* \
    "$rootfs"/usr/share/locale/* "$rootfs"/var/log/* "$rootfs"/etc/resolv.conf "$rootfs"/etc/hostname
  if [ -s "$HOST_CA_BUNDLE" ]; then
    mkdir -p "$rootfs/etc/ssl/certs"
    cp "$HOST_CA_BUNDLE" "$rootfs/etc/ssl/certs/ca-certificates.crt"
  fi
  # written under a name of its own, then renamed: another checkout may be building it too
  partial=$(mktemp "$ROOTFS_CACHE_DIR/.rootfs.XXXXXX")
  trap 'rm -rf "$rootfs" "$partial"' EXIT
  tar -C "$rootfs" --numeric-owner -cf "$partial" .
  mv "$partial" "$ROOTFS_TAR"
  rm -rf "$rootfs"
  trap - EXIT
fi

echo "==> importing $ROOTFS_TAR into buildah's storage as $BASE_IMAGE"
container=$(buildah from scratch)
trap 'buildah rm "$container" >/dev/null 2>&1 || true' EXIT
buildah add --quiet "$container" "$ROOTFS_TAR" /
buildah config \
  --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
  --env SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt \
  --env PIP_CERT=/etc/ssl/certs/ca-certificates.crt \
  --cmd '["python3"]' \
  --label org.opencontainers.image.description="Debian bookworm minbase + python3, built locally by container/build-base-image.sh" \
  "$container"
buildah commit --quiet --rm "$container" "$BASE_IMAGE" >/dev/null
trap - EXIT
echo "==> $BASE_IMAGE: $(buildah images --format '{{.Size}}' "$BASE_IMAGE")"
