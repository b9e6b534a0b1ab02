#!/usr/bin/env python3
"""Convert a COPE checkpoint (github adxcreative/COPE) into the model directory Kiln loads:
`config.json`, `model.safetensors`, `tokenizer.json`.

    python3 scripts/convert/cope.py CHECKPOINT BERT_DIR OUT_DIR [--dtype f32|f16|keep]

CHECKPOINT is what the repository's training saves and `infer.py` loads
(`torch.load(path)['state_dict']` of the DistributedDataParallel-wrapped `shark` model; the
`module.` prefix is stripped; a bare state dict works too). BERT_DIR is the pretrained text
encoder's directory the model was built from (hfl rbt6 or rbt3: `config.json`, `vocab.txt`):
the checkpoint holds the text encoder's weights but not its head count, activation or epsilon
(the layer count, 3 or 6, is counted from the checkpoint's `encoder.layer.N` keys),
and the tokenizer is that directory's vocabulary (COPE's collate functions tokenize with
`BertTokenizer.from_pretrained(<rbt3>)`; rbt3 and rbt6 share the vocabulary).

The vision tower's shape is read from the state dict the way `models/module_xclip.py`'s
`build_model` reads it (width from `conv1`, layers from the `attn.in_proj_weight` keys, patch
size, grid from the positional table; heads = width // 64), and the integration transformer's
from its own keys (layers, positions; heads = embed_dim // 64). Every tensor is kept under its
original name; Kiln reads `text_encoder.bert_model.*`, `visual_encoder.*`, and the fusion
heads' `fc0`/`fc1`/`attention_pooling.projection` (`fc2` is unused by `extract_features`).
Needs torch, safetensors and transformers (for `tokenizer.json`).
"""
import argparse
import json
import re
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

# The BERT config keys Kiln reads (bert.rs BertConfig).
TEXT_KEYS = [
    "model_type", "vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
    "intermediate_size", "hidden_act", "max_position_embeddings", "type_vocab_size",
    "layer_norm_eps", "position_embedding_type",
]
MAX_TITLE_TOKENS = 32  # shark_emb_infer.py: truncation=True, max_length=32


def vision_config(sd):
    width, _, patch, _ = sd["visual_encoder.visual.conv1.weight"].shape
    layers = len([k for k in sd if k.startswith("visual_encoder.visual.")
                  and k.endswith(".attn.in_proj_weight")])
    grid = round((sd["visual_encoder.visual.positional_embedding"].shape[0] - 1) ** 0.5)
    embed_dim = sd["visual_encoder.visual.proj"].shape[1]
    _, frames, mit_dim = sd["visual_encoder.mit.positional_embedding"].shape
    assert mit_dim == embed_dim, (mit_dim, embed_dim)
    mit_layers = len({int(m.group(1)) for k in sd
                      if (m := re.match(r"visual_encoder\.mit\.resblocks\.(\d+)\.", k))})
    return {
        "image_size": patch * grid,
        "patch_size": patch,
        "width": width,
        "layers": layers,
        "heads": width // 64,
        "embed_dim": embed_dim,
        "mit_layers": mit_layers,
        "mit_heads": embed_dim // 64,
        "frames": frames,
        "layer_norm_eps": 1e-5,
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("checkpoint")
    ap.add_argument("bert_dir")
    ap.add_argument("out_dir")
    ap.add_argument("--dtype", choices=["f32", "f16", "keep"], default="f32")
    args = ap.parse_args()

    ck = torch.load(args.checkpoint, map_location="cpu", weights_only=True)
    if isinstance(ck, dict) and "state_dict" in ck:
        ck = ck["state_dict"]
    sd = {(k[7:] if k.startswith("module.") else k): v for k, v in ck.items()}
    if "visual_encoder.visual.conv1.weight" not in sd or not any(
            k.startswith("text_encoder.bert_model.") for k in sd):
        sys.exit(f"{args.checkpoint}: not a COPE (shark) state dict")

    bert_dir = Path(args.bert_dir)
    text_cfg = json.loads((bert_dir / "config.json").read_text())
    text = {k: text_cfg[k] for k in TEXT_KEYS if k in text_cfg}
    text["model_type"] = "bert"  # hfl's RoBERTa-wwm checkpoints are BertModel
    # rbt3 or rbt6: the layers the checkpoint has, whatever the directory's config says.
    text["num_hidden_layers"] = len({
        int(m.group(1)) for k in sd
        if (m := re.match(r"text_encoder\.bert_model\.encoder\.layer\.(\d+)\.", k))})
    emb = sd["item_fusion_model.fc1.weight"].shape[0]
    config = {
        "model_type": "cope",
        "text": text,
        "vision": vision_config(sd),
        "embedding_size": emb,
        "max_title_tokens": MAX_TITLE_TOKENS,
    }

    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tensors = {}
    for k, v in sd.items():
        if not v.is_floating_point():
            continue  # position_ids buffers
        v = v.contiguous()
        if args.dtype == "f32":
            v = v.float()
        elif args.dtype == "f16":
            v = v.half()
        tensors[k] = v
    save_file(tensors, out / "model.safetensors")
    (out / "config.json").write_text(json.dumps(config, indent=1) + "\n")

    from transformers import BertTokenizerFast
    BertTokenizerFast.from_pretrained(str(bert_dir)).backend_tokenizer.save(
        str(out / "tokenizer.json"))
    print(f"wrote {out}: {len(tensors)} tensors, vision {config['vision']}")


if __name__ == "__main__":
    main()
