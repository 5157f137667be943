#!/usr/bin/env bash
# Build a stand-in for the official python:3.11-slim-bookworm base image from Debian's own
# packages, for machines that reach Debian's archive but not Docker Hub (CI here):
#
#   images/standin_base.sh [TAG]      # default TAG: searchtune-standin/python:3.11-slim-bookworm
#   make image-cpu BUILD_ARGS="--build-arg BASE_IMAGE=searchtune-standin/python:3.11-slim-bookworm"
#
# What the Dockerfiles need of a base: python3.11 as `python`, pip as `pip`, pip allowed to
# install into the system Python (the official image's /usr/local Python allows it; Debian's
# marks itself externally managed), CA certificates, useradd/groupadd. Debian bookworm's
# Python is 3.11 like the lock's. Needs root, debootstrap and a Docker engine.
set -euo pipefail
TAG="${1:-searchtune-standin/python:3.11-slim-bookworm}"
MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
ROOTFS="$(mktemp -d)"
trap 'rm -rf "$ROOTFS"' EXIT

debootstrap --variant=minbase --include=python3,python3-pip,python3-venv,ca-certificates \
  bookworm "$ROOTFS" "$MIRROR" > "$ROOTFS.log" 2>&1 || { tail -20 "$ROOTFS.log"; exit 1; }
rm -f "$ROOTFS.log" "$ROOTFS"/usr/lib/python3.11/EXTERNALLY-MANAGED
ln -sf /usr/bin/python3 "$ROOTFS/usr/local/bin/python"
ln -sf /usr/bin/pip3 "$ROOTFS/usr/local/bin/pip"
rm -rf "$ROOTFS"/var/cache/apt/archives/*.deb "$ROOTFS"/var/lib/apt/lists/*
tar -C "$ROOTFS" -c . | docker import \
  --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8' \
  --change 'CMD ["python3"]' - "$TAG" > /dev/null
echo "$TAG: $(docker run --rm "$TAG" python --version) ($(docker image inspect -f '{{.Size}}' "$TAG" | awk '{printf "%.0f MB", $1/1e6}'))"
