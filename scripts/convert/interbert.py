#!/usr/bin/env python3
"""Convert an InterBERT checkpoint (github black4321/InterBERT) into the model directory Kiln
loads: `model.safetensors` + `config.json`.

    python3 scripts/convert/interbert.py CHECKPOINT CONFIG_JSON OUT_DIR [--dtype f32|f16|keep]

CHECKPOINT is what the repository's training scripts save with `torch.save(model.state_dict())`
(`InterBertForMultiModalPreTraining` or `InterBertForVLTasks`; a `module.` prefix from
DataParallel is stripped; a dict holding `state_dict` or `model` is unwrapped). CONFIG_JSON is the
repository's config (e.g. `config/bert_base_6layer_interbert.json`). The repository's
`BertConfig` reads only the keys its JSON holds and the training scripts set a few more; this
script writes every key Kiln reads, filling the ones the JSON lacks with `BertConfig`'s
constructor defaults (listed below), so the model directory says exactly what Kiln will build.

Kiln reads `bert.*` (embeddings, image embeddings, the single-stream and text layers
`bert.encoder.layer.N`, the image layers `bert.encoder.v_layer.N`, both poolers) and
`cls.bi_seq_relationship.*` (the ITM head). The MLM and region-prediction heads and
InterBertForVLTasks' task heads are kept in the file but not used. Needs torch and safetensors.
"""
import argparse
import json
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

# BertConfig.__init__ defaults in bertmodel/modules.py, for keys a config JSON may lack.
DEFAULTS = {
    "hidden_act": "gelu",
    "v_hidden_act": "gelu",
    "max_position_embeddings": 512,
    "type_vocab_size": 2,
    "v_feature_size": 2048,
    "v_hidden_size": 768,
    "v_num_hidden_layers": 3,
    "v_num_attention_heads": 12,
    "v_intermediate_size": 3072,
    "bi_hidden_size": 1024,
    "fusion_method": "mul",
}
REQUIRED = [
    "vocab_size", "hidden_size", "num_hidden_layers", "t_num_hidden_layers",
    "num_attention_heads", "intermediate_size",
]
KEEP = REQUIRED + list(DEFAULTS)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("checkpoint")
    ap.add_argument("config")
    ap.add_argument("out_dir")
    ap.add_argument("--dtype", choices=["f32", "f16", "keep"], default="keep")
    a = ap.parse_args()

    cfg = json.loads(Path(a.config).read_text())
    missing = [k for k in REQUIRED if k not in cfg]
    if missing:
        sys.exit(f"{a.config}: missing {', '.join(missing)}")
    out_cfg = {"model_type": "interbert"}
    out_cfg.update({k: cfg.get(k, DEFAULTS.get(k)) for k in KEEP})
    if out_cfg["fusion_method"] not in ("mul", "sum"):
        sys.exit(f"fusion_method {out_cfg['fusion_method']!r}: the model has only 'mul' and 'sum'")

    sd = torch.load(a.checkpoint, map_location="cpu", weights_only=True)
    for key in ("state_dict", "model"):
        if isinstance(sd, dict) and key in sd and isinstance(sd[key], dict):
            sd = sd[key]
    tensors = {}
    for name, t in sd.items():
        if not torch.is_tensor(t):
            continue
        name = name[len("module."):] if name.startswith("module.") else name
        if a.dtype == "f32":
            t = t.float()
        elif a.dtype == "f16" and t.is_floating_point():
            t = t.half()
        tensors[name] = t.contiguous()
    # The MLM decoder shares the word-embedding table; safetensors stores no aliases.
    if "cls.predictions.decoder.weight" in tensors:
        del tensors["cls.predictions.decoder.weight"]
    if "bert.embeddings.word_embeddings.weight" not in tensors:
        sys.exit(f"{a.checkpoint}: no bert.embeddings.word_embeddings.weight: not an InterBERT state dict")

    out = Path(a.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    (out / "config.json").write_text(json.dumps(out_cfg, indent=2) + "\n")
    print(f"{out}: {len(tensors)} tensors, config {out_cfg}")


if __name__ == "__main__":
    main()
