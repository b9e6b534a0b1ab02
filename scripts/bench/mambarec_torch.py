#!/usr/bin/env python3
"""MambaRec speed, side by side: the repository's own model (github rkl71/MambaRec) and Kiln on
the same weights and graph. Builds the synthetic dataset of scripts/fixtures/mambarec.py at the
size asked (same generator, seed 0), creates the model through the repository's pipeline
(random init: speed does not depend on training), converts it with scripts/convert/mambarec.py,
then times the full eval-mode forward — `forward(norm_adj)` under torch.no_grad(), every user's
and item's final embedding — and, with --kiln, `kiln bench mambarec` on the converted model.

    /tmp/stenv/bin/python scripts/bench/mambarec_torch.py /tmp/mambarec OUT_DIR \
        [--users 20000 --items 20000 --img-dim 4096] [--reps 3] [--threads 2] \
        [--kiln target/release/kiln]

Prints one JSON line per side (and the ratio). The model's construction time (which builds the
kNN graphs, as Kiln's load does) is reported beside the forward time.
"""
import argparse
import importlib.util
import json
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import torch

root = Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location("mambarec_fixture", root / "scripts" / "fixtures" / "mambarec.py")
fixture = importlib.util.module_from_spec(spec)
spec.loader.exec_module(fixture)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("repo")
    ap.add_argument("out_dir", help="where the converted model goes")
    ap.add_argument("--users", type=int, default=fixture.N_USERS)
    ap.add_argument("--items", type=int, default=fixture.N_ITEMS)
    ap.add_argument("--img-dim", type=int, default=fixture.IMG_DIM)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--kiln", help="a kiln binary: also run `kiln bench mambarec` on the model")
    a = ap.parse_args()
    out = Path(a.out_dir).resolve()
    torch.set_num_threads(a.threads)
    tmp = Path(tempfile.mkdtemp(prefix="mambarec-bench-"))
    fixture.make_dataset(tmp / "synth", a.users, a.items, a.img_dim)
    t = time.perf_counter()
    model, _, _, _ = fixture.build(a.repo, tmp, 1)
    init_s = time.perf_counter() - t
    model.eval()
    times = []
    with torch.no_grad():
        model.forward(model.norm_adj)
        for _ in range(a.reps):
            t = time.perf_counter()
            model.forward(model.norm_adj)
            times.append(time.perf_counter() - t)
    state = tmp / "mambarec.pt"
    torch.save(model.state_dict(), state)
    conv = fixture.converter()
    conv.convert(conv.load_state(state), tmp / "synth", out)
    torch_row = {
        "side": "pytorch", "torch": torch.__version__, "threads": a.threads,
        "users": a.users, "items": a.items, "img_dim": a.img_dim,
        "init_s": init_s, "forward_s": times, "median_forward_s": statistics.median(times),
    }
    print(json.dumps(torch_row), flush=True)
    if a.kiln:
        r = subprocess.run([a.kiln, "bench", "mambarec", "-m", str(out), "-t", str(a.threads),
                            "-r", str(a.reps), "--json"], check=True, capture_output=True, text=True)
        kiln_row = json.loads(r.stdout)
        kiln_row["side"] = "kiln"
        print(json.dumps(kiln_row))
        print(json.dumps({"kiln_speedup_forward": torch_row["median_forward_s"] / kiln_row["median_forward_s"]}))


if __name__ == "__main__":
    main()
