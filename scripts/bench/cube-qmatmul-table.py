#!/usr/bin/env python3
"""Turns the output of `cargo bench -p kiln-benches --bench cube_qmatmul` into the Markdown table
of docs/bench/cube-kernels.md: median time of Kiln's fused kernels (the fast ones and the ones in
the CPU's arithmetic) and of Burn's path (dequantize, then matmul) per shape, and the ratios.

    cargo bench -p kiln-benches --bench cube_qmatmul 2>&1 | tee /tmp/cube.log
    python3 scripts/bench/cube-qmatmul-table.py /tmp/cube.log
"""
import re
import sys

UNITS = {"ns": 1e-6, "µs": 1e-3, "us": 1e-3, "ms": 1.0, "s": 1e3}


def main(path):
    text = open(path, encoding="utf-8").read()
    pat = re.compile(
        r"^(cube_qmatmul/\S+)\s*\n?\s*time:\s+\[\S+ \S+ (\S+) (\S+) \S+ \S+\]", re.M
    )
    med = {}
    for name, value, unit in pat.findall(text):
        med[name] = float(value) * UNITS[unit]
    rows = {}
    for name, ms in med.items():
        _, model, layer, ty, func, m = name.split("/")
        rows.setdefault((model, layer, ty, m), {})[func] = ms
    with_variants = any(k.startswith("kiln_fused_") for f in rows.values() for k in f)
    head = ("| model | layer (n × k) | type | m | Kiln fused, fast (ms) | Kiln fused, CPU arithmetic (ms) "
            "| Burn dequantize + matmul (ms) | fast speed-up | CPU-arithmetic speed-up |")
    print(head + (" best mat-vec variant |" if with_variants else ""))
    print("| --- " * (10 if with_variants else 9) + "|")
    shapes = {("smollm2-135m", "ffn_up"): "1536 × 576", ("smollm2-135m", "ffn_down"): "576 × 1536",
              ("llama-3.2-1b", "ffn_up"): "8192 × 2048", ("llama-3.2-1b", "ffn_down"): "2048 × 8192"}
    for (model, layer, ty, m), f in rows.items():
        if "kiln_fused" not in f or "burn_dequant_matmul" not in f:
            continue
        variants = {k[len("kiln_fused_"):]: v for k, v in f.items() if k.startswith("kiln_fused_")}
        best = min(variants.items(), key=lambda kv: kv[1]) if variants else None
        best_s = f"{best[0]} {best[1]:.3f} ms" if best else ""
        burn = f["burn_dequant_matmul"]
        exact = f.get("kiln_exact")
        exact_ms = f"{exact:.3f}" if exact else "—"
        exact_ratio = f"{burn / exact:.2f}×" if exact else "—"
        line = (f"| {model} | {layer} ({shapes.get((model, layer), '')}) | {ty} | {m} | {f['kiln_fused']:.3f} | "
                f"{exact_ms} | {burn:.3f} | {burn / f['kiln_fused']:.2f}× | {exact_ratio} |")
        print(line + (f" {best_s} |" if with_variants else ""))


if __name__ == "__main__":
    main(sys.argv[1])
