#!/usr/bin/env bash
# Build a Debian 12 (bookworm, Python 3.11) base image from Debian packages and import it,
# for machines that cannot pull images from a registry. The Dockerfile takes it as
#   docker build --network host --build-arg PYTHON_IMAGE=radlens-base:bookworm .
#
# usage: scripts/container_base.sh [TAG]        (root; needs debootstrap and a Docker engine)
# The apt mirror is the one this machine uses; pip inside the image gets this machine's CA
# bundle, and its timeout, but none of its local wheel folders or constraint files.
set -euo pipefail
tag="${1:-radlens-base:bookworm}"
if docker image inspect "$tag" >/dev/null 2>&1; then
  echo "base image $tag exists"
  exit 0
fi
command -v debootstrap >/dev/null || { echo "debootstrap is missing: apt-get install -y debootstrap" >&2; exit 1; }
mirror="$(cat /etc/apt/sources.list /etc/apt/sources.list.d/* 2>/dev/null \
  | awk '$1 ~ /^(URIs:|deb)$/ && $2 ~ /\/debian\/?$/ {print $2; exit}')" || true
mirror="${mirror:-http://deb.debian.org/debian}"
rootfs="$(mktemp -d /var/tmp/radlens-rootfs.XXXXXX)"
trap 'rm -rf "$rootfs"' EXIT
debootstrap --variant=minbase \
  --include=python3,python3-venv,python-is-python3,ca-certificates \
  bookworm "$rootfs" "$mirror" >"$rootfs.log" 2>&1 \
  || { echo "debootstrap failed; see $rootfs.log" >&2; tail -5 "$rootfs.log" >&2; exit 1; }
rm -f "$rootfs.log"
# the machine's CA bundle (it may hold a local CA that pip's downloads go through)
cp /etc/ssl/certs/ca-certificates.crt "$rootfs/etc/ssl/certs/ca-certificates.crt"
printf '[global]\ncert = /etc/ssl/certs/ca-certificates.crt\ntimeout = 180\n' >"$rootfs/etc/pip.conf"
# what a slim image leaves out: apt lists and caches, documentation
rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/*.bin "$rootfs"/usr/share/doc/* \
  "$rootfs"/usr/share/man/* "$rootfs"/usr/share/locale/*
tar -C "$rootfs" -c . | docker import \
  --change 'ENV LANG=C.UTF-8 PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  --change 'ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt' \
  --change 'CMD ["python"]' - "$tag" >/dev/null
echo "base image $tag imported ($(docker image inspect -f '{{.Size}}' "$tag" | awk '{printf "%.0f MB", $1/1e6}'))"
