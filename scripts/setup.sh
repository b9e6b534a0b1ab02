#!/usr/bin/env bash
# Prepare a fresh Debian/Ubuntu machine for Kiln: the Vulkan loader and Mesa's drivers (software
# "llvmpipe" where there is no GPU, so wgpu runs everywhere), unzip, and the fixture models.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
if command -v dpkg >/dev/null; then
  dpkg -s mesa-vulkan-drivers >/dev/null 2>&1 || need+=(mesa-vulkan-drivers)
  dpkg -s libvulkan1 >/dev/null 2>&1 || need+=(libvulkan1)
fi
command -v unzip >/dev/null || need+=(unzip)
if [ ${#need[@]} -gt 0 ]; then
  if ! command -v apt-get >/dev/null; then
    echo "setup: please install: ${need[*]}" >&2; exit 1
  fi
  sudo=""; [ "$(id -u)" = 0 ] || sudo="sudo"
  echo "setup: installing ${need[*]}"
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}"
fi

scripts/fetch-models.sh
