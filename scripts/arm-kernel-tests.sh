#!/usr/bin/env bash
# The CPU kernels' tests on 64-bit ARM (NEON) from an x86-64 machine: cross-compiles kiln-kernels
# (CPU only) for aarch64-unknown-linux-gnu, lints it for that target, and runs its unit tests
# under QEMU's user-mode emulator (`-cpu max`, NEON dot products included; `.cargo/config.toml`
# names the linker and the runner). Installs what is missing: the Rust target, a cross linker and
# QEMU. Artifacts go to target/aarch64-unknown-linux-gnu.
set -euo pipefail
cd "$(dirname "$0")/.."

target=aarch64-unknown-linux-gnu
rustup target list --installed | grep -qx "$target" || rustup target add "$target"
need=()
command -v aarch64-linux-gnu-gcc >/dev/null || need+=(gcc-aarch64-linux-gnu libc6-dev-arm64-cross)
command -v qemu-aarch64 >/dev/null || need+=(qemu-user)
if [ ${#need[@]} -gt 0 ]; then
  sudo=""; [ "$(id -u)" = 0 ] || sudo="sudo"
  echo "arm-kernel-tests: installing ${need[*]}"
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}"
fi

args=(--target "$target" -p kiln-kernels --no-default-features --locked)
cargo clippy "${args[@]}" --lib --tests -- -D warnings
cargo test --release "${args[@]}" --lib
