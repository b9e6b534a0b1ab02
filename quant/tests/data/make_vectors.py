#!/usr/bin/env python3
"""Make quant/tests/data/vectors.gguf: block-format test vectors from gguf-py (llama.cpp's own
Python GGUF library), the bit-exact oracle for ggml block formats.

    pip install gguf==0.19.0 numpy
    python3 quant/tests/data/make_vectors.py

For every type gguf-py can quantize, the file holds `<type>.x` (f32 input, 6 x 512),
`<type>.q` (gguf.quants.quantize(x), stored raw as that type) and `<type>.deq`
(gguf.quants.dequantize(q)). For the K-quants, which gguf-py only dequantizes, `<type>.q` is
random blocks with finite scales and `<type>.deq` is gguf-py's dequantization of them.
The file itself is written by gguf-py's GGUFWriter, so reading it also tests Kiln's reader on
a gguf-py file. Deterministic: re-running it reproduces the same bytes.
"""
import os

import numpy as np
import gguf
from gguf import quants
from gguf.constants import GGMLQuantizationType as T

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "vectors.gguf")
ROWS, COLS = 6, 512


def inputs(rng: np.random.Generator) -> np.ndarray:
    x = np.empty((ROWS, COLS), dtype=np.float32)
    x[0] = rng.standard_normal(COLS)
    x[1] = rng.standard_normal(COLS) * 1e-3
    x[1, ::37] = 7.0  # outliers
    x[2] = 0.0  # d == 0 in every block
    x[3] = 0.5  # max == min: d == 0 for the min/max formats
    x[4] = rng.uniform(-1000, 1000, COLS)
    x[5] = rng.integers(-2, 3, COLS)  # ties for argmax, exact halves when rounding
    return x


def random_k_blocks(rng: np.random.Generator, qtype: T) -> np.ndarray:
    block_size, type_size = gguf.GGML_QUANT_SIZES[qtype]
    n_blocks = ROWS * COLS // block_size
    b = rng.integers(0, 256, (n_blocks, type_size), dtype=np.uint8)
    # Offsets of the f16 scale fields (ggml-common.h), given finite values of either sign.
    f16_fields = {T.Q2_K: [80, 82], T.Q3_K: [108], T.Q4_K: [0, 2], T.Q5_K: [0, 2], T.Q6_K: [208]}
    for off in f16_fields[qtype]:
        scale = (rng.standard_normal(n_blocks) * 0.01).astype(np.float16)
        b[:, off:off + 2] = scale.view(np.uint8).reshape(n_blocks, 2)
    return b.reshape(ROWS, -1)


def main() -> None:
    rng = np.random.default_rng(20261124)
    w = gguf.GGUFWriter(OUT, arch="kiln-test-vectors")
    w.add_string("kiln.generator", "quant/tests/data/make_vectors.py")
    w.add_string("kiln.gguf_py_version", "0.19.0")
    for qtype in [T.F16, T.BF16, T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1, T.Q8_0]:
        x = inputs(rng)
        q = quants.quantize(x, qtype)
        deq = quants.dequantize(q, qtype).astype(np.float32)
        w.add_tensor(f"{qtype.name}.x", x)
        w.add_tensor(f"{qtype.name}.q", q, raw_dtype=qtype)
        w.add_tensor(f"{qtype.name}.deq", deq)
    for qtype in [T.Q2_K, T.Q3_K, T.Q4_K, T.Q5_K, T.Q6_K]:
        q = random_k_blocks(rng, qtype)
        deq = quants.dequantize(q, qtype).astype(np.float32)
        w.add_tensor(f"{qtype.name}.q", q, raw_dtype=qtype)
        w.add_tensor(f"{qtype.name}.deq", deq)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    print(f"wrote {OUT} ({os.path.getsize(OUT)} bytes)")


if __name__ == "__main__":
    main()
