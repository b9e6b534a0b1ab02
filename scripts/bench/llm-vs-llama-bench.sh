#!/usr/bin/env bash
# Kiln's `kiln bench llm` beside llama.cpp's `llama-bench`, same model files, same machine, one
# run, alternating: pp512 and tg128, 2 threads, 3 repetitions after a warm-up.
#
#   LLAMA_CPP_BIN=/path/to/llama.cpp/build/bin scripts/bench/llm-vs-llama-bench.sh MODEL.gguf...
#
# Model variants: scripts/fixtures/make-llama-1b-random.py for Llama-3.2-1B shapes, then
# llama-quantize (Q4_0, Q4_K_M, Q8_0; for SmolLM2 from the Q4_1 fixture with
# --allow-requantize). Prints a markdown table of both tools' tokens/s and Kiln/llama.cpp.
# llama.cpp: build with GGML_NATIVE=ON, except where a VM reports AMX but forbids it (llama-bench
# dies of SIGILL in ggml_backend_amx_mul_mat): there GGML_NATIVE=OFF and the CPU's other
# extensions named one by one (docs/bench/llm-cpu.md has the flags used).
set -euo pipefail
cd "$(dirname "$0")/../.."
: "${LLAMA_CPP_BIN:?set LLAMA_CPP_BIN to the folder holding llama-bench}"
threads="${THREADS:-2}"
reps="${REPS:-3}"
cargo build --release -p kiln-runtime --bin kiln >&2
echo "| model | test | llama.cpp t/s | Kiln t/s | Kiln / llama.cpp |"
echo "| --- | --- | ---: | ---: | ---: |"
for model in "$@"; do
    name=$(basename "$model" .gguf)
    lc=$(LD_LIBRARY_PATH="$LLAMA_CPP_BIN" "$LLAMA_CPP_BIN/llama-bench" -m "$model" -p 512 -n 128 \
        -t "$threads" -r "$reps" -o json 2>/dev/null)
    kl=$(target/release/kiln bench llm -m "$model" -p 512 -n 128 -t "$threads" -r "$reps" --json 2>/dev/null)
    python3 - "$name" "$lc" "$kl" <<'PY'
import json, sys
name, lc, kl = sys.argv[1], json.loads(sys.argv[2]), json.loads(sys.argv[3])
def lc_rate(test):
    for r in lc:
        if (test == "pp512" and r["n_prompt"] == 512 and r["n_gen"] == 0) or \
           (test == "tg128" and r["n_gen"] == 128 and r["n_prompt"] == 0):
            return r["avg_ts"], r["stddev_ts"]
for r in kl:
    a, sa = lc_rate(r["test"])
    print(f"| {name} | {r['test']} | {a:.1f} ± {sa:.1f} | {r['tokens_per_second']:.1f} ± {r['stddev']:.1f} | "
          f"{r['tokens_per_second'] / a:.2f} |")
PY
done
