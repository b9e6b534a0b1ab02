#!/usr/bin/env python3
"""Read quant/tests/data/kiln_written.gguf (written by Kiln's GGUF writer) with gguf-py's
GGUFReader and record what gguf-py sees in kiln_written.gguf-py.json, which the test
`gguf_py_interop` compares with Kiln's own reading of the same file.

    pip install gguf==0.19.0
    KILN_BLESS=1 cargo test -p kiln-quant --test gguf_py_interop   # rewrite the .gguf
    python3 quant/tests/data/read_with_gguf_py.py                    # rewrite the .json
"""
import json
import os

import gguf

HERE = os.path.dirname(os.path.abspath(__file__))
SRC = os.path.join(HERE, "kiln_written.gguf")
OUT = os.path.join(HERE, "kiln_written.gguf-py.json")


def plain(v):
    if isinstance(v, list):
        return [plain(x) for x in v]
    if isinstance(v, (bool, str)):
        return v
    if isinstance(v, float):
        return v
    if hasattr(v, "item"):
        return v.item()
    return v


def main() -> None:
    r = gguf.GGUFReader(SRC)
    fields = []
    for key, f in r.fields.items():
        if key.startswith("GGUF."):
            continue
        fields.append({"key": key, "types": [int(t) for t in f.types], "value": plain(f.contents())})
    tensors = [
        {
            "name": t.name,
            "type": int(t.tensor_type),
            "dims": [int(d) for d in t.shape],
            "n_bytes": int(t.n_bytes),
            "data_hex": t.data.tobytes().hex(),
        }
        for t in r.tensors
    ]
    doc = {"gguf_py": "0.19.0", "alignment": int(r.alignment), "fields": fields, "tensors": tensors}
    with open(OUT, "w") as fh:
        json.dump(doc, fh, indent=1)
        fh.write("\n")
    print(f"wrote {OUT}: {len(fields)} fields, {len(tensors)} tensors")


if __name__ == "__main__":
    main()
