#!/usr/bin/env python3
"""Kiln's embedding speed against ONNX Runtime and sentence-transformers, side by side in one run.

Each contender embeds the same catalog texts (scripts/bench/product_corpus.py, 3,200 rows by
default) in its own process, after one warm-up pass over the first 256 texts, with 2 threads;
reported: texts/s, tokens/s (real tokens, no padding) and the process's peak RSS.

  ONNX Runtime          the HF BertModel exported with torch.onnx (dynamic batch and sequence),
                        length-sorted batches of 32, mean pooling + L2 normalization in numpy
  sentence-transformers SentenceTransformer.encode(batch_size=32) (it sorts by length itself)
  Kiln                  target/release/kiln bench embed (token-budget batches over sorted texts)

    python3 -m venv /tmp/stenv && /tmp/stenv/bin/pip install sentence-transformers onnxruntime onnx
    cargo build --release -p kiln-runtime --bin kiln
    /tmp/stenv/bin/python scripts/bench/embed-vs-onnxruntime.py [--model DIR] [--n 3200] [--threads 2]
"""
import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

root = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(root / "scripts" / "bench"))
from product_corpus import make_corpus  # noqa: E402


def read_texts(path):
    with open(path, encoding="utf-8") as f:
        return [json.loads(line)["text"] for line in f if line.strip()]


def peak_rss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_ort(args, texts):
    import numpy as np
    import onnxruntime as ort
    from tokenizers import Tokenizer

    onnx_path = Path(args.workdir) / "minilm.onnx"
    if not onnx_path.exists():  # exported in a separate process: torch stays out of this one
        subprocess.run([sys.executable, __file__, "--peer", "export", "--model", args.model,
                        "--workdir", args.workdir, "--input", ""], check=True)
    tok = Tokenizer.from_file(str(Path(args.model) / "tokenizer.json"))
    tok.enable_truncation(256)
    tok.no_padding()
    so = ort.SessionOptions()
    so.intra_op_num_threads = args.threads
    so.inter_op_num_threads = 1
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    sess = ort.InferenceSession(str(onnx_path), so, providers=["CPUExecutionProvider"])

    def embed(batch_texts):
        encs = tok.encode_batch(batch_texts)
        width = max(len(e.ids) for e in encs)
        feeds = {k: np.zeros((len(encs), width), np.int64)
                 for k in ["input_ids", "attention_mask", "token_type_ids"]}
        for r, e in enumerate(encs):
            n = len(e.ids)
            feeds["input_ids"][r, :n] = e.ids
            feeds["attention_mask"][r, :n] = 1
            feeds["token_type_ids"][r, :n] = e.type_ids
        h = sess.run(None, feeds)[0]
        m = feeds["attention_mask"][..., None].astype(np.float32)
        v = (h * m).sum(1) / np.clip(m.sum(1), 1e-9, None)
        return v / np.clip(np.linalg.norm(v, axis=1, keepdims=True), 1e-12, None)

    lengths = [len(e.ids) for e in tok.encode_batch(texts)]
    order = sorted(range(len(texts)), key=lambda i: lengths[i])
    embed([texts[i] for i in order[:256]])  # warm-up
    t = time.perf_counter()
    for s in range(0, len(order), 32):
        embed([texts[i] for i in order[s:s + 32]])
    return time.perf_counter() - t, sum(lengths)


def export_onnx(args):
    import torch
    from transformers import AutoModel, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(args.model)
    bert = AutoModel.from_pretrained(args.model).eval()

    class Encoder(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.bert = bert

        def forward(self, input_ids, attention_mask, token_type_ids):
            return self.bert(input_ids=input_ids, attention_mask=attention_mask,
                             token_type_ids=token_type_ids).last_hidden_state

    dummy = tok(["hello world", "a b"], return_tensors="pt", padding=True)
    with torch.no_grad():
        torch.onnx.export(
            Encoder(), (dummy["input_ids"], dummy["attention_mask"], dummy["token_type_ids"]),
            str(Path(args.workdir) / "minilm.onnx"),
            input_names=["input_ids", "attention_mask", "token_type_ids"],
            output_names=["last_hidden_state"], opset_version=17, dynamo=False,
            dynamic_axes={n: {0: "batch", 1: "seq"} for n in
                          ["input_ids", "attention_mask", "token_type_ids", "last_hidden_state"]})


def run_st(args, texts):
    import torch
    from sentence_transformers import SentenceTransformer

    torch.set_num_threads(args.threads)
    model = SentenceTransformer(args.model, device="cpu")
    lengths = [int(m.sum()) for m in model.tokenize(texts)["attention_mask"]]
    model.encode(texts[:256], batch_size=32)  # warm-up
    t = time.perf_counter()
    model.encode(texts, batch_size=32)
    return time.perf_counter() - t, sum(lengths)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=os.path.expanduser(os.environ.get("KILN_MODELS", "~/.cache/kiln/models"))
                    + "/all-minilm-l6-v2")
    ap.add_argument("--n", type=int, default=3200)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--kiln", default=str(root / "target" / "release" / "kiln"))
    ap.add_argument("--only", choices=["ort", "st", "kiln"], action="append")
    ap.add_argument("--peer", choices=["ort", "st", "export"], help=argparse.SUPPRESS)
    ap.add_argument("--input", help=argparse.SUPPRESS)
    ap.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "kiln-embed-bench"))
    args = ap.parse_args()
    os.makedirs(args.workdir, exist_ok=True)

    if args.peer == "export":
        export_onnx(args)
        return
    if args.peer:  # child process: one contender
        texts = read_texts(args.input)
        secs, tokens = (run_ort if args.peer == "ort" else run_st)(args, texts)
        print(json.dumps({"texts": len(texts), "tokens": tokens, "seconds": secs, "peak_rss_mb": peak_rss_mb()}))
        return

    corpus = Path(args.workdir) / f"products-{args.n}-{args.seed}.jsonl"
    with open(corpus, "w", encoding="utf-8") as f:
        for row in make_corpus(args.n, args.seed):
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), KILN_THREADS=str(args.threads),
               RAYON_NUM_THREADS=str(args.threads))
    results = {}
    for name in args.only or ["st", "ort", "kiln"]:
        if name == "kiln":
            cmd = [args.kiln, "bench", "embed", "--model", args.model, "--input", str(corpus),
                   "--threads", str(args.threads), "--json"]
        else:
            cmd = [sys.executable, __file__, "--peer", name, "--input", str(corpus), "--model", args.model,
                   "--threads", str(args.threads), "--workdir", args.workdir]
        out = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True).stdout
        r = json.loads(out.strip().splitlines()[-1])
        results[name] = r
        print(f"{name}: {r['texts'] / r['seconds']:.1f} texts/s", file=sys.stderr)

    names = {"st": "sentence-transformers (PyTorch, batch 32)", "ort": "ONNX Runtime (sorted batches of 32)",
             "kiln": "Kiln (token-budget batches)"}
    ort_rate = results["ort"]["texts"] / results["ort"]["seconds"] if "ort" in results else None
    print(f"\n{args.n} texts ({corpus.name}), {args.threads} threads, all-MiniLM-L6-v2\n")
    print("| runtime | texts/s | tokens/s | peak RSS MiB | vs ONNX Runtime |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for name, r in results.items():
        rate = r["texts"] / r["seconds"]
        ratio = f"{rate / ort_rate:.2f}×" if ort_rate else "—"
        print(f"| {names[name]} | {rate:.1f} | {r['tokens'] / r['seconds']:.0f} | {r['peak_rss_mb']:.0f} | {ratio} |")


if __name__ == "__main__":
    main()
