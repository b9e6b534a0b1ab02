#!/usr/bin/env python3
"""The PyTorch side of the COPE speed comparison: the repository's own code
(github adxcreative/COPE, `shark.extract_features`, built as scripts/fixtures/cope.py builds it)
on the weights of a Kiln model directory, embedding the same product pages as
`kiln bench cope`: page i has title TITLES[i mod 6] (the fixture's titles; tokenized by
BertTokenizer with max_length 32, padded per batch, inside the timing as the reference's
collate function does it) and a 224×224 image whose normalized value at (c, y, x) is
((i + 3c + 5y + 7x) mod 256) / 255 · 4 − 2 (preprocessing is not timed on either side). Eval
mode, torch.inference_mode(), mixed precision off (CPU).

    /tmp/stenv/bin/python scripts/bench/cope_torch.py /tmp/cope MODEL_DIR \
        [--pages 32] [--batch 16] [--reps 3] [--threads 2]

Prints one JSON line: product pages per second per repetition and the median.
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
spec = importlib.util.spec_from_file_location("cope_fixture", root / "scripts" / "fixtures" / "cope.py")
fixture = importlib.util.module_from_spec(spec)
spec.loader.exec_module(fixture)


def image(i, size):
    c = torch.arange(3).view(3, 1, 1)
    y = torch.arange(size).view(1, size, 1)
    x = torch.arange(size).view(1, 1, size)
    return (((i + 3 * c + 5 * y + 7 * x) % 256).float() / 255.0) * 4.0 - 2.0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("repo")
    ap.add_argument("model_dir")
    ap.add_argument("--pages", type=int, default=32)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)

    d = Path(a.model_dir)
    cfg = json.loads((d / "config.json").read_text())
    text = {k: v for k, v in cfg["text"].items() if k != "model_type"}
    text["pooler_fc_size"] = text["hidden_size"]
    v = cfg["vision"]
    vis = dict(width=v["width"], layers=v["layers"], patch=v["patch_size"],
               grid=v["image_size"] // v["patch_size"], embed_dim=v["embed_dim"])
    model, _ = fixture.build(a.repo, text, vis)
    missing, unexpected = model.load_state_dict(load_file(str(d / "model.safetensors")), strict=False)
    assert all(m.endswith("position_ids") for m in missing), missing
    assert not unexpected, unexpected

    from transformers import PreTrainedTokenizerFast
    tok = PreTrainedTokenizerFast(tokenizer_file=str(d / "tokenizer.json"), cls_token="[CLS]",
                                  sep_token="[SEP]", pad_token="[PAD]", unk_token="[UNK]")
    size = v["image_size"]
    titles = [fixture.TITLES[i % len(fixture.TITLES)] for i in range(a.pages)]
    images = [image(i, size) for i in range(a.pages)]

    def embed(s):
        t = tok(titles[s:s + a.batch], return_tensors="pt", padding=True, truncation=True,
                max_length=cfg["max_title_tokens"], return_token_type_ids=True)
        t = {k: t[k] for k in ("input_ids", "token_type_ids", "attention_mask")}
        imgs = torch.stack(images[s:s + a.batch]).unsqueeze(1)  # [B, 1, 3, H, W]
        item, _, _ = model.extract_features({"item": t, "photo": None, "live": None},
                                            {"item": imgs, "photo": None, "live": None})
        return item

    with torch.inference_mode():
        embed(0)
        rates = []
        for _ in range(a.reps):
            t0 = time.perf_counter()
            for s in range(0, a.pages, a.batch):
                embed(s)
            rates.append(a.pages / (time.perf_counter() - t0))
    print(json.dumps({"impl": "pytorch " + torch.__version__, "threads": a.threads,
                      "pages": a.pages, "batch": a.batch, "pages_per_second": rates,
                      "median_pages_per_second": statistics.median(rates)}))


if __name__ == "__main__":
    main()
