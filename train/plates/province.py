"""Trains the province classifier and exports it to ONNX: a small CNN that reads the first
character of a Chinese plate from the left quarter of the recogniser's crop, or says that there
is no province there.

The recogniser (`train.py`) reads the whole plate in one pass, and it generalises worst on the
province character: one glyph out of 31, drawn in typefaces it never saw. This classifier looks
only at that glyph, trained on more CJK faces (`fonts.CJK_PROVINCE_EXTRA` beside the recogniser's),
and the gateway reads the province with both (`gateway/src/reader/learned.rs`).

    python3 province.py OUT.onnx [--samples N] [--minutes M] [--seed S]

The samples are the training renderer's crops of Chinese plates (`render.sample`), cut to the
same left quarter the gateway cuts, and one in five a region with no province in it; they are
rendered once, by two processes, then trained on for the time given.
"""

import argparse
import math
import multiprocessing
import random
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

import render
from train import block, standardise

PROVINCES = render.PROVINCES[:-2]
# The class after the provinces: no province here. The recogniser may spell a province where
# there is none (a German plate's EU band read in a Chinese layout); the classifier must be able
# to say so rather than pick the likeliest of 31.
NONE = len(PROVINCES)
# The left quarter of the crop: the province of a blue, yellow or green plate and some margin
# for a locator's quadrilateral that is off by a few per cent.
REGION_W = 32
CN = ["cn-blue", "cn-yellow", "cn-green"]


class Province(nn.Module):
    """Grey H x REGION_W region in (0..1) -> probabilities over the provinces and `NONE`."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            *block(1, 32),
            *block(32, 32),
            nn.MaxPool2d(2),  # 16 x 16
            *block(32, 64),
            *block(64, 64),
            nn.MaxPool2d(2),  # 8 x 8
            *block(64, 128),
            nn.MaxPool2d(2),  # 4 x 4
        )
        self.head = nn.Sequential(nn.Flatten(), nn.Dropout(0.3), nn.Linear(128 * 16, 256), nn.ReLU(), nn.Linear(256, NONE + 1))

    def logits(self, x):
        return self.head(self.features(standardise(x)))

    def forward(self, x):
        return F.softmax(self.logits(x), dim=1)


def render_chunk(args):
    seed, n, heldout = args
    rng = random.Random(seed)
    latin, cjk = render.load_faces(heldout, extra=True)
    xs = np.zeros((n, render.H, REGION_W), np.uint8)
    ys = np.zeros(n, np.int64)
    for i in range(n):
        if rng.random() < 0.2:
            # No province: the left of a German or British plate, or of a Chinese one from its
            # second character on (a crop that starts too far right).
            if rng.random() < 0.7:
                img, _ = render.sample(rng, latin, cjk, ["de", "uk"])
                xs[i] = img[:, :REGION_W]
            else:
                img, _ = render.sample(rng, latin, cjk, CN)
                x0 = rng.randint(REGION_W - 6, render.W - REGION_W)
                xs[i] = img[:, x0 : x0 + REGION_W]
            ys[i] = NONE
            continue
        img, text = render.sample(rng, latin, cjk, CN)
        xs[i] = img[:, :REGION_W]
        ys[i] = PROVINCES.index(text[0])
    return xs, ys


def dataset(seed, n, heldout, procs):
    chunk = 2000
    jobs = [(seed * 100_000 + k, min(chunk, n - k * chunk), heldout) for k in range(math.ceil(n / chunk))]
    with multiprocessing.Pool(procs) as pool:
        parts = pool.map(render_chunk, jobs)
    x = np.concatenate([p[0] for p in parts])
    y = np.concatenate([p[1] for p in parts])
    return torch.from_numpy(x.astype(np.float32) / 255.0)[:, None], torch.from_numpy(y)


def accuracy(model, x, y):
    model.eval()
    with torch.no_grad():
        got = torch.cat([model.logits(x[i : i + 512]).argmax(dim=1) for i in range(0, len(x), 512)])
    model.train()
    return (got == y).float().mean().item()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--samples", type=int, default=80_000)
    ap.add_argument("--minutes", type=float, default=8.0)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--batch", type=int, default=128)
    args = ap.parse_args()

    start = time.time()
    x, y = dataset(args.seed, args.samples, False, 2)
    val_x, val_y = dataset(args.seed + 500, 2000, True, 2)
    print(f"rendered {len(x)} training and {len(val_x)} held-out-font samples in {time.time() - start:.0f} s", flush=True)

    torch.set_num_threads(2)
    torch.manual_seed(args.seed)
    model = Province()
    print(f"{sum(p.numel() for p in model.parameters())} parameters", flush=True)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-4)
    budget = args.minutes * 60
    start = time.time()
    gen = torch.Generator().manual_seed(args.seed)
    step = 0
    while time.time() - start < budget:
        for idx in torch.randperm(len(x), generator=gen).split(args.batch):
            elapsed = time.time() - start
            if elapsed > budget:
                break
            lr = 2e-3 * min(1.0, (step + 1) / 100) * 0.5 * (1 + math.cos(math.pi * elapsed / budget))
            for g in opt.param_groups:
                g["lr"] = lr
            xb = x[idx]
            # A locator's crop is never placed exactly: shift the region by a few columns.
            shift = int(torch.randint(-3, 4, (1,), generator=gen))
            xb = torch.roll(xb, shift, dims=3)
            loss = F.cross_entropy(model.logits(xb), y[idx], label_smoothing=0.05)
            opt.zero_grad()
            loss.backward()
            opt.step()
            step += 1
            if step % 200 == 0:
                print(
                    f"step {step} {elapsed / 60:.1f} min loss {loss.item():.3f} lr {lr:.5f} "
                    f"held-out-font accuracy {accuracy(model, val_x, val_y):.3f}",
                    flush=True,
                )
    print(f"done: {step} steps, held-out-font accuracy {accuracy(model, val_x, val_y):.3f}")
    model.eval()
    dummy = torch.zeros(1, 1, render.H, REGION_W)
    torch.onnx.export(
        model, dummy, args.out, input_names=["region"], output_names=["probs"], opset_version=13, dynamo=False
    )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
