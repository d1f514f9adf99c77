#!/bin/sh
# npm run setup — the system packages meshtrain needs, before `npm ci` (the README's commands and .ci/run both run it).
#   python3, make, g++   better-sqlite3 compiles from source when its prebuilt binary cannot be downloaded
#   libnss3, libexpat1   the headless Chromium the dashboard tests drive (npm package @sparticuz/chromium) links them
#   libegl1, libegl-mesa0, libgles2, libgl1-mesa-dri   Mesa's software GPU (llvmpipe) under Dawn's OpenGL ES backend:
#                        the WebGPU backend's tests run on it where there is no GPU (model/compute/webgpu.ts)
#   golang-go, golang-github-masterminds-sprig-dev, golang-gopkg-yaml.v2-dev, golang-github-xeipuuv-gojsonschema-dev
#                        the Helm chart's test builds deploy/helm/render (Helm's template engine: Go's text/template,
#                        sprig, YAML, the values schema check) from these, offline in GOPATH mode: there is no Helm here
#   iproute2, nftables   the NAT-relay test and `npm run bench -- wan` put agents in network namespaces (ip netns, veth,
#                        tc for bandwidth) and drop their inbound connections with nft
# As root on Debian or Ubuntu it installs what is missing with apt-get; otherwise it stops with one line naming
# exactly what to install. It changes nothing when everything is there.
set -eu

missing_cmds=""
for c in python3 make g++; do
  command -v "$c" >/dev/null 2>&1 || missing_cmds="$missing_cmds $c"
done
command -v go >/dev/null 2>&1 || missing_cmds="$missing_cmds golang-go"
command -v ip >/dev/null 2>&1 || missing_cmds="$missing_cmds iproute2"
command -v tc >/dev/null 2>&1 || missing_cmds="$missing_cmds iproute2"
command -v nft >/dev/null 2>&1 || missing_cmds="$missing_cmds nftables"

has_lib() {
  for ldconfig in ldconfig /sbin/ldconfig /usr/sbin/ldconfig; do
    if command -v "$ldconfig" >/dev/null 2>&1; then
      "$ldconfig" -p 2>/dev/null | grep -q "$1" && return 0
      return 1
    fi
  done
  return 1
}
missing_libs=""
has_lib 'libnss3\.so' || missing_libs="$missing_libs libnss3"
has_lib 'libexpat\.so\.1' || missing_libs="$missing_libs libexpat1"
has_lib 'libEGL\.so\.1' || missing_libs="$missing_libs libegl1"
has_lib 'libEGL_mesa\.so\.0' || missing_libs="$missing_libs libegl-mesa0"
has_lib 'libGLESv2\.so\.2' || missing_libs="$missing_libs libgles2"
has_swrast() {
  for f in /usr/lib/*/dri/swrast_dri.so /usr/lib/dri/swrast_dri.so; do
    [ -e "$f" ] && return 0
  done
  return 1
}
has_swrast || missing_libs="$missing_libs libgl1-mesa-dri"
# Debian's Go library packages put their sources under /usr/share/gocode/src (deploy/helm/render imports them).
gocode=/usr/share/gocode/src
[ -e "$gocode/github.com/Masterminds/sprig/functions.go" ] || missing_libs="$missing_libs golang-github-masterminds-sprig-dev"
[ -e "$gocode/gopkg.in/yaml.v2/yaml.go" ] || missing_libs="$missing_libs golang-gopkg-yaml.v2-dev"
[ -e "$gocode/github.com/xeipuuv/gojsonschema/validation.go" ] || missing_libs="$missing_libs golang-github-xeipuuv-gojsonschema-dev"

node_major=$(node -p 'process.versions.node.split(".")[0]' 2>/dev/null || echo 0)
if [ "$node_major" -lt 20 ]; then
  echo "setup: meshtrain needs Node.js 20 or later (found $(node --version 2>/dev/null || echo none)): install it, then run npm run setup again" >&2
  exit 1
fi

pkgs=$(echo "$missing_cmds$missing_libs" | tr ' ' '\n' | sort -u | tr '\n' ' ' | sed 's/^ *//; s/ *$//; s/^/ /')
[ "$pkgs" = " " ] && pkgs=""
if [ -z "$pkgs" ]; then
  echo "setup: system packages present (python3, make, g++, libnss3, libexpat1, Mesa EGL/GLES/llvmpipe, Go with sprig, yaml.v2 and gojsonschema, ip, tc, nft); next: npm ci"
  exit 0
fi
# Debian's package for the g++ command is g++, for go golang-go; python3, make, libnss3 and libexpat1 are named as the
# commands/libraries.
. "$(dirname "$0")/apt-install.sh"
apt_install setup "$pkgs" 'next: npm ci' 'npm run setup again' --no-install-recommends
echo "setup: missing${pkgs} (a C++ compiler and make build better-sqlite3; libnss3/libexpat are for the dashboard tests' Chromium, the Mesa EGL/GLES libraries for the WebGPU tests' software GPU, Go 1.19+ with Masterminds/sprig v3, gopkg.in/yaml.v2 and xeipuuv/gojsonschema in a GOPATH at /usr/share/gocode for the Helm chart's test, iproute2 and nftables for the network-namespace test and bench): install them with your package manager, then npm run setup again" >&2
exit 1
