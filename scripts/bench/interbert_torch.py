#!/usr/bin/env python3
"""The PyTorch side of the InterBERT speed comparison: the model's own code
(github black4321/InterBERT, bertmodel/modules.py) on the weights of a Kiln model directory,
scoring the same synthetic pairs as `kiln bench interbert` (pair i: REGIONS regions + the global
one, a caption of 8 + (7·i mod 23) tokens), batched as its retrieval dataset batches them
(regions and captions padded, masked) after sorting by length like Kiln, in eval mode under
torch.inference_mode(), running only what the ITM score needs (InterBertModel, then the ITM
head on the fused pooled vectors; not the MLM and region-prediction heads).

    /tmp/stenv/bin/python scripts/bench/interbert_torch.py /tmp/interbert MODEL_DIR \
        [--pairs 64] [--batch 16] [--regions 36] [--reps 3] [--threads 2]

Prints one JSON line: pairs per second per repetition and the median.
"""
import argparse
import importlib.util
import json
import statistics
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

root = Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location("interbert_fixture", root / "scripts" / "fixtures" / "interbert.py")
fixture = importlib.util.module_from_spec(spec)
spec.loader.exec_module(fixture)


def caption_len(i):
    return 8 + (7 * i) % 23


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("repo")
    ap.add_argument("model_dir")
    ap.add_argument("--pairs", type=int, default=64)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--regions", type=int, default=36)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)

    mod = fixture.load_modules(a.repo)
    cfg = json.loads((Path(a.model_dir) / "config.json").read_text())
    model = fixture.build(mod, cfg)
    missing, unexpected = model.load_state_dict(load_file(str(Path(a.model_dir) / "model.safetensors")), strict=False)
    # The MLM decoder is tied to the word embeddings (not stored twice).
    assert set(missing) <= {"cls.predictions.decoder.weight"}, missing
    assert not unexpected, unexpected

    g = torch.Generator().manual_seed(0)
    vocab, d = cfg["vocab_size"], cfg["v_feature_size"]
    pairs = []
    for i in range(a.pairs):
        t = caption_len(i)
        ids = [101] + torch.randint(1, vocab, (t - 2,), generator=g).tolist() + [102]
        feats = torch.relu(torch.rand(a.regions + 1, d, generator=g) - 0.5) * 4.0
        loc = torch.rand(a.regions + 1, 5, generator=g)
        pairs.append((ids, feats, loc))
    order = sorted(range(len(pairs)), key=lambda i: len(pairs[i][0]) + pairs[i][1].shape[0])

    def score(idx):
        b = len(idx)
        n = max(pairs[i][1].shape[0] for i in idx)
        tmax = max(len(pairs[i][0]) for i in idx)
        feat, loc = torch.zeros(b, n, d), torch.zeros(b, n, 5)
        ids = torch.zeros(b, tmax, dtype=torch.long)
        imask = torch.zeros(b, n, dtype=torch.long)
        tmask = torch.zeros(b, tmax, dtype=torch.long)
        for r, i in enumerate(idx):
            t_ids, f, l = pairs[i]
            feat[r, : f.shape[0]], loc[r, : f.shape[0]] = f, l
            ids[r, : len(t_ids)] = torch.tensor(t_ids)
            imask[r, : f.shape[0]] = 1
            tmask[r, : len(t_ids)] = 1
        mm = torch.cat([imask, tmask], 1)
        # Only what the ITM score needs: eval_retrieval.py calls the whole pre-training model,
        # whose MLM and region heads would add ~10% of work for nothing.
        _, _, pt, pv, _ = model.bert(ids, feat, loc, torch.zeros_like(ids), tmask, imask, mm)
        itm = model.cls.bi_seq_relationship(pt * pv)
        return torch.softmax(itm, 1)[:, 0]

    with torch.inference_mode():
        score(order[: a.batch])
        rates = []
        for _ in range(a.reps):
            t0 = time.perf_counter()
            for s in range(0, len(order), a.batch):
                score(order[s : s + a.batch])
            rates.append(len(order) / (time.perf_counter() - t0))
    print(json.dumps({"impl": "pytorch " + torch.__version__, "threads": a.threads, "pairs": a.pairs,
                      "batch": a.batch, "regions": a.regions, "pairs_per_second": rates,
                      "median_pairs_per_second": statistics.median(rates)}))


if __name__ == "__main__":
    main()
