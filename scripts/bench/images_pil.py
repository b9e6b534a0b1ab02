#!/usr/bin/env python3
"""The PIL side of `kiln bench images`: the same files through the reference preprocessing
(scripts/fixtures/images.py's COPE and CLIP pipelines: ImageOps.exif_transpose, convert("RGB"),
resize, centre crop, then /255 and mean/std into a float32 [3, H, W] array with numpy), on a
thread pool of each size asked (Pillow releases the GIL while decoding and resampling). Bad
files are caught per item, as Kiln does. Same warm-up pass, passes and --repeat as Kiln.

    /tmp/stenv/bin/python scripts/bench/images_pil.py tests/data/images/inputs \
        [--spec cope|clip:SIZE] [--threads 1,2] [--reps 3] [--repeat 1]

Needs pillow and numpy. Prints one JSON line per thread count.
"""
import argparse
import io
import json
import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

IMAGENET = ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
CLIP = ([0.48145466, 0.4578275, 0.40821073], [0.26862954, 0.26130258, 0.27577711])


def pipeline(spec):
    if spec == "cope":
        def resize(img):
            return img.resize((224, 224), Image.BILINEAR)
        mean, std = IMAGENET
        crop = 224
    else:
        size = int(spec.split(":", 1)[1])
        crop = size

        def resize(img):
            w, h = img.size
            if w <= h:
                return img.resize((size, int(size * h / w)), Image.BICUBIC)
            return img.resize((int(size * w / h), size), Image.BICUBIC)
        mean, std = CLIP
    mean = np.array(mean, np.float32).reshape(3, 1, 1)
    std = np.array(std, np.float32).reshape(3, 1, 1)

    def run(data):
        try:
            img = ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("RGB")
            img = resize(img)
            w, h = img.size
            left, top = int(round((w - crop) / 2)), int(round((h - crop) / 2))
            img = img.crop((left, top, left + crop, top + crop))
            x = np.asarray(img, np.float32).transpose(2, 0, 1) / 255.0
            return (x - mean) / std
        except Exception as e:  # a bad file fails alone
            return e
    return run


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("inputs", nargs="+")
    ap.add_argument("--spec", default="cope")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--repeat", type=int, default=1)
    a = ap.parse_args()
    files = []
    for p in map(Path, a.inputs):
        if p.is_dir():
            files += sorted(f for f in p.iterdir()
                            if f.suffix.lower() in (".jpg", ".jpeg", ".png", ".webp"))
        else:
            files.append(p)
    items = [f.read_bytes() for f in files] * a.repeat
    run = pipeline(a.spec)
    for t in map(int, a.threads.split(",")):
        with ThreadPoolExecutor(t) as pool:
            out = list(pool.map(run, items))
            failed = sum(isinstance(o, Exception) for o in out)
            rates = []
            for _ in range(a.reps):
                start = time.perf_counter()
                list(pool.map(run, items))
                rates.append(len(items) / (time.perf_counter() - start))
        print(json.dumps({"impl": f"pillow {Image.__version__}", "spec": a.spec, "threads": t,
                          "images": len(items), "failed": failed,
                          "images_per_second": rates,
                          "median_images_per_second": statistics.median(rates)}))


if __name__ == "__main__":
    main()
