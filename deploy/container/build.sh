#!/usr/bin/env bash
# `make image`: build the project's image with Podman on this machine.
#
#   bash deploy/container/build.sh           IMAGE (default localhost/coffee-payment-server:latest)
#                                            BASE_IMAGE (default: the local base image, built
#                                            from this machine's Debian mirror when missing)
#
# With BASE_IMAGE=python:3.11-slim-bookworm (the Dockerfile's own default) Podman pulls the
# official image instead, where a registry is reachable.
set -euo pipefail

HERE="$(cd "$(dirname "$0")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
LOCAL_BASE=localhost/coffee-payments-base:bookworm
IMAGE="${IMAGE:-localhost/coffee-payment-server:latest}"
BASE_IMAGE="${BASE_IMAGE:-$LOCAL_BASE}"

bash "$HERE/podman-setup.sh"
# shellcheck source=/dev/null
. "$REPO/.podman/env.sh"

pull=missing
if [[ "$BASE_IMAGE" == "$LOCAL_BASE" ]]; then
  BASE_IMAGE="$BASE_IMAGE" bash "$HERE/base-image.sh"
  pull=never
fi

mapfile -t pip_args < <(bash "$HERE/pip-build-args.sh")
revision="$(git -C "$REPO" rev-parse HEAD 2>/dev/null || echo unknown)"
# --format docker keeps the HEALTHCHECK (the OCI image format has no field for it).
SECONDS=0
podman build --pull="$pull" --format docker \
  --build-arg BASE_IMAGE="$BASE_IMAGE" --build-arg REVISION="$revision" "${pip_args[@]}" \
  --tag "$IMAGE" --file "$REPO/Dockerfile" "$REPO"
printf '[build] %s from %s: %ss\n' "$IMAGE" "$BASE_IMAGE" "$SECONDS" >&2
