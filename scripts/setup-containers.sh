#!/bin/sh
# sh scripts/setup-containers.sh — the system packages scripts/build-image.sh and scripts/compose-check.sh need, on
# top of npm run setup's: podman and runc (the container engine and the runtime that works on cgroup v1/hybrid
# hosts), podman-compose (deploy/compose.yaml), debootstrap (a Debian base image where no registry answers).
# As root on Debian or Ubuntu it installs what is missing with apt-get; otherwise it stops with one line naming
# exactly what to install. A machine with a running Docker daemon and `docker compose` needs none of them.
set -eu
if command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1 && docker compose version >/dev/null 2>&1; then
  echo "setup-containers: Docker with compose is here; nothing to install"
  exit 0
fi
missing=""
for c in podman runc podman-compose debootstrap; do
  command -v "$c" >/dev/null 2>&1 || [ -x "/usr/sbin/$c" ] || missing="$missing $c"
done
if [ -z "$missing" ]; then
  echo "setup-containers: podman, runc, podman-compose and debootstrap present"
  exit 0
fi
# With podman's recommends: buildah, netavark and aardvark-dns (compose's bridge network and its DNS), slirp4netns.
. "$(dirname "$0")/apt-install.sh"
apt_install setup-containers "$missing" 'next: bash scripts/compose-check.sh' 'sh scripts/setup-containers.sh again'
echo "setup-containers: missing${missing}: install them with your package manager (or use Docker with compose), then run this again" >&2
exit 1
