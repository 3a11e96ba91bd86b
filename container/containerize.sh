#!/usr/bin/env bash
# Build the Bento (`bentoml build`) and its image (`bentoml containerize`), tagged with the Bento
# version. Run from the repository root (the Makefile does); the model comes from BentoML's store
# (~/bentoml, or $BENTOML_HOME).
#
#   CONTAINER_BACKEND  docker | buildah | auto (default: docker if an engine answers, else buildah)
#   BASE_IMAGE         overrides the image's FROM (default: docker.base_image in bentofile.yaml);
#                      the offline build points it at the local Debian base (build-base-image.sh)
#   BENTO_TAG          containerize this existing Bento instead of building a new one
#
# The last line of output is `IMAGE <name>:<bento version>`.
set -euo pipefail

BENTOML=${BENTOML:-$PWD/.venv/bin/bentoml}
BACKEND=${CONTAINER_BACKEND:-auto}

if [ "$BACKEND" = auto ]; then
  if command -v docker >/dev/null && docker info >/dev/null 2>&1; then
    BACKEND=docker
  elif command -v buildah >/dev/null; then
    BACKEND=buildah
  else
    echo "no container builder: install Docker (with a running engine) or buildah" >&2
    exit 1
  fi
fi

if [ -z "${BENTO_TAG:-}" ]; then
  echo "==> bentoml build"
  BENTO_TAG=$("$BENTOML" build -o tag | sed -n 's/^__tag__://p')
  [ -n "$BENTO_TAG" ] || { echo "bentoml build printed no tag" >&2; exit 1; }
fi
echo "==> Bento $BENTO_TAG"

args=(--backend "$BACKEND" --image-tag "$BENTO_TAG")
if [ -n "${BASE_IMAGE:-}" ]; then
  args+=(--opt "build-arg=BASE_IMAGE=$BASE_IMAGE")
fi
if [ "$BACKEND" = buildah ]; then
  # Keep intermediate layers, so a rebuild with unchanged requirements skips the pip install; not
  # with vfs, which stores every layer as a full copy (a cold build takes 3x longer).
  if [ "$(buildah info --format '{{.store.GraphDriverName}}')" != vfs ]; then
    args+=(--opt layers)
  fi
  # Build steps run in a chroot (no OCI runtime or user namespaces needed).
  export BUILDAH_ISOLATION=${BUILDAH_ISOLATION:-chroot}
fi

# BentoML 1.4.40 resolves the Bento's Dockerfile template inside a temporary copy of the Bento
# and refuses paths outside the working directory (or under a dot-directory), so containerize
# runs from a fresh temporary directory that is also its TMPDIR.
workdir=$(mktemp -d "${TMPDIR:-/tmp}/bento-containerize.XXXXXX")
trap 'rm -rf "$workdir"' EXIT
echo "==> bentoml containerize --backend $BACKEND${BASE_IMAGE:+ (FROM $BASE_IMAGE)}"
started=$SECONDS
if ! (cd "$workdir" && TMPDIR="$workdir" "$BENTOML" containerize "$BENTO_TAG" "${args[@]}"); then
  echo "bentoml containerize failed (see above)." >&2
  if [ "$BACKEND" = buildah ] && [ -z "${BASE_IMAGE:-}" ]; then
    echo "No registry to pull the base image from? Build a local one and use it:" >&2
    echo "  make container-base && make image BASE_IMAGE=localhost/xgb-serving-base:bookworm" >&2
  fi
  exit 1
fi
echo "==> image built in $((SECONDS - started)) s"
echo "IMAGE $BENTO_TAG"
