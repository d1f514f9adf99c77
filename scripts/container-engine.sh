# Sourced by scripts/build-image.sh and scripts/compose-check.sh: picks the container engine and, on hosts where
# podman's defaults do not work (cgroup v1 or hybrid, low ulimits: our CI machine), points podman at
# deploy/podman/containers.conf (runc, cgroupfs, ulimits within the host's).
#   ENGINE          podman or docker ($MESHTRAIN_ENGINE overrides; podman first: it needs no daemon)
#   ENGINE_NETWORK  podman builds: --network=host (its build containers reach the registries through the host's
#                   network; $MESHTRAIN_BUILD_NETWORK overrides); empty for docker
here_engine=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
if [ -n "${MESHTRAIN_ENGINE:-}" ]; then
  ENGINE=$MESHTRAIN_ENGINE
elif command -v podman >/dev/null 2>&1; then
  ENGINE=podman
elif command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1; then
  ENGINE=docker
else
  echo "no container engine: install podman (apt-get install podman runc) or start a Docker daemon" >&2
  exit 1
fi
ENGINE_NETWORK=
if [ "$ENGINE" = podman ]; then
  if [ "$(stat -fc %T /sys/fs/cgroup)" != cgroup2fs ] || { [ "$(ulimit -Hn)" != unlimited ] && [ "$(ulimit -Hn)" -lt 1048576 ]; }; then
    export CONTAINERS_CONF="${CONTAINERS_CONF:-$here_engine/deploy/podman/containers.conf}"
  fi
  ENGINE_NETWORK=${MESHTRAIN_BUILD_NETWORK---network=host}
fi
