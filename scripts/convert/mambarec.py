#!/usr/bin/env python3
"""Convert a MambaRec checkpoint (github rkl71/MambaRec) and its dataset into the model directory
Kiln loads: `config.json` + `model.safetensors` + `interactions.tsv`.

    python3 scripts/convert/mambarec.py CHECKPOINT DATASET_DIR OUT_DIR \
        [--inter NAME.inter] [--n-ui-layers 4] [--n-layers 1] [--knn-k 10]

CHECKPOINT is `torch.save(model.state_dict())` of a trained `MambaRec` (the repository's trainer
keeps the model in memory only; save it after `trainer.fit`). A dict holding `state_dict` or
`model` is unwrapped, a DataParallel `module.` prefix stripped. DATASET_DIR is the dataset folder
the model was trained on (MMRec layout): the interaction file (`userID`, `itemID`, `x_label`;
0 = train) and the ORIGINAL feature tables `image_feat.npy` / `text_feat.npy`. The reference
builds its item–item kNN graphs from those original tables when the model is created, before any
training, while the model's `image_embedding` / `text_embedding` are the fine-tuned copies; Kiln
needs both, so both are written (`original.image_feat`, `original.text_feat`).

The sizes come from the checkpoint (users, items, embedding size, feature widths); the three
graph settings are not in a state dict and default to configs/model/MambaRec.yaml's values.
BatchNorm's `num_batches_tracked` counters are dropped (eval mode does not read them). Needs
torch, numpy, safetensors.
"""
import argparse
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file


def load_state(path):
    sd = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("state_dict", "model"):
        if isinstance(sd, dict) and key in sd and isinstance(sd[key], dict):
            sd = sd[key]
    return {k.removeprefix("module."): v for k, v in sd.items()}


def convert(state, dataset_dir, out_dir, inter=None, n_ui_layers=4, n_layers=1, knn_k=10):
    dataset_dir, out_dir = Path(dataset_dir), Path(out_dir)
    if inter is None:
        found = sorted(dataset_dir.glob("*.inter"))
        if len(found) != 1:
            sys.exit(f"{dataset_dir}: expected one *.inter file, found {len(found)} (use --inter)")
        inter = found[0].name
    tensors = {}
    for k, v in state.items():
        if k.endswith("num_batches_tracked"):
            continue
        if not v.is_floating_point():
            sys.exit(f"{k}: {v.dtype} tensor, expected floating point")
        tensors[k] = v.detach().to(torch.float32).contiguous()
    for name in ("user_embedding.weight", "item_id_embedding.weight"):
        if name not in tensors:
            sys.exit(f"checkpoint lacks {name}: not a MambaRec state dict")
    n_users, dim = tensors["user_embedding.weight"].shape
    n_items = tensors["item_id_embedding.weight"].shape[0]
    cfg = {
        "model_type": "mambarec",
        "n_users": int(n_users),
        "n_items": int(n_items),
        "embedding_size": int(dim),
        "n_ui_layers": n_ui_layers,
        "n_layers": n_layers,
        "knn_k": knn_k,
        "image_feat_dim": 0,
        "text_feat_dim": 0,
        "interactions": "interactions.tsv",
    }
    for modality, key in (("image", "image_embedding.weight"), ("text", "text_embedding.weight")):
        if key not in tensors:
            continue
        feat = np.load(dataset_dir / f"{modality}_feat.npy", allow_pickle=False)
        if feat.shape != tuple(tensors[key].shape):
            sys.exit(f"{modality}_feat.npy is {feat.shape}, the checkpoint's {key} {tuple(tensors[key].shape)}")
        tensors[f"original.{modality}_feat"] = torch.from_numpy(np.ascontiguousarray(feat, dtype=np.float32))
        cfg[f"{modality}_feat_dim"] = int(feat.shape[1])
    if cfg["image_feat_dim"] == 0 and cfg["text_feat_dim"] == 0:
        sys.exit("checkpoint has neither image_embedding nor text_embedding")
    out_dir.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(out_dir / "model.safetensors"))
    shutil.copyfile(dataset_dir / inter, out_dir / "interactions.tsv")
    (out_dir / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    return cfg


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("checkpoint")
    ap.add_argument("dataset_dir")
    ap.add_argument("out_dir")
    ap.add_argument("--inter", help="interaction file name in DATASET_DIR (default: the one *.inter)")
    ap.add_argument("--n-ui-layers", type=int, default=4)
    ap.add_argument("--n-layers", type=int, default=1)
    ap.add_argument("--knn-k", type=int, default=10)
    a = ap.parse_args()
    cfg = convert(load_state(a.checkpoint), a.dataset_dir, a.out_dir, a.inter,
                  a.n_ui_layers, a.n_layers, a.knn_k)
    print(json.dumps(cfg))


if __name__ == "__main__":
    main()
