"""Trains the plate recogniser (a small CRNN with CTC) on freshly rendered samples and exports it to
ONNX. Every batch is new: the renderer is the data set. See `train.sh` for the one command.

    python3 train.py OUT.onnx [--minutes M] [--seed S]
"""

import argparse
import math
import os
import random
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

import render


def block(i, o):
    """A 3x3 convolution with batch norm and ReLU, `i` channels in, `o` out."""
    return [nn.Conv2d(i, o, 3, padding=1, bias=False), nn.BatchNorm2d(o), nn.ReLU()]


def standardise(x):
    """Each crop standardised on its own, so exposure and contrast do not matter."""
    m = x.mean(dim=(2, 3), keepdim=True)
    s = (x - m).pow(2).mean(dim=(2, 3), keepdim=True).add(1e-4).sqrt()
    return (x - m) / s


class Crnn(nn.Module):
    """Grey H x W plate crop in (0..1), per-class probabilities over W/4 steps out."""

    def __init__(self, classes=render.CLASSES):
        super().__init__()

        self.features = nn.Sequential(
            *block(1, 32),
            nn.MaxPool2d(2),  # 16 x 64
            *block(32, 48),
            nn.MaxPool2d(2),  # 8 x 32
            *block(48, 96),
            *block(96, 96),
            nn.MaxPool2d((2, 1)),  # 4 x 32
            *block(96, 128),
            nn.MaxPool2d((2, 1)),  # 2 x 32
            nn.Conv2d(128, 128, (2, 1), bias=False),  # 1 x 32
            nn.BatchNorm2d(128),
            nn.ReLU(),
        )
        self.context = nn.Sequential(
            nn.Conv1d(128, 128, 3, padding=1),
            nn.ReLU(),
            nn.Conv1d(128, 128, 3, padding=1),
            nn.ReLU(),
        )
        self.head = nn.Conv1d(128, classes, 1)

    def logits(self, x):
        f = self.features(standardise(x)).squeeze(2)  # B x 128 x T
        f = f + self.context(f)
        return self.head(f)  # B x C x T

    def forward(self, x):
        # Exported form: B x T x C probabilities.
        return F.softmax(self.logits(x), dim=1).transpose(1, 2)


class Stream(torch.utils.data.IterableDataset):
    def __init__(self, seed, heldout=False):
        self.seed = seed
        self.heldout = heldout

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        wid = info.id if info else 0
        rng = random.Random(self.seed * 1000 + wid)
        latin, cjk = render.load_faces(self.heldout)
        while True:
            img, text = render.sample(rng, latin, cjk)
            yield torch.from_numpy(img.astype(np.float32) / 255.0)[None], text


def encode(texts):
    targets = [torch.tensor([render.ALPHABET.index(c) + 1 for c in t], dtype=torch.long) for t in texts]
    lengths = torch.tensor([len(t) for t in targets], dtype=torch.long)
    return torch.cat(targets), lengths


def decode(probs):
    """Greedy CTC decoding of B x T x C probabilities."""
    out = []
    for row in probs.argmax(dim=2).tolist():
        s, prev = [], 0
        for k in row:
            if k != prev and k != 0:
                s.append(render.ALPHABET[k - 1])
            prev = k
        out.append("".join(s))
    return out


def collate(batch):
    return torch.stack([b[0] for b in batch]), [b[1] for b in batch]


def fixed_set(n, seed, heldout):
    rng = random.Random(seed)
    latin, cjk = render.load_faces(heldout)
    pairs = [render.sample(rng, latin, cjk) for _ in range(n)]
    x = torch.from_numpy(np.stack([p[0] for p in pairs]).astype(np.float32) / 255.0)[:, None]
    return x, [p[1] for p in pairs]


def accuracy(model, x, texts):
    model.eval()
    with torch.no_grad():
        got = decode(model(x))
    model.train()
    return sum(a == b for a, b in zip(got, texts)) / len(texts)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--minutes", type=float, default=60.0)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()

    torch.set_num_threads(1)
    torch.manual_seed(args.seed)
    model = Crnn()
    print(f"{sum(p.numel() for p in model.parameters())} parameters", flush=True)
    val_x, val_t = fixed_set(400, 999, heldout=True)
    loader = torch.utils.data.DataLoader(
        Stream(args.seed), batch_size=args.batch, num_workers=args.workers, collate_fn=collate, prefetch_factor=4
    )
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-4)
    ctc = nn.CTCLoss(blank=0, zero_infinity=True)
    budget = args.minutes * 60
    start = time.time()
    step = 0
    smooth = None
    for x, texts in loader:
        elapsed = time.time() - start
        if elapsed > budget:
            break
        # Cosine decay over the time budget, after a short warm-up.
        frac = elapsed / budget
        lr = 2e-3 * min(1.0, (step + 1) / 200) * 0.5 * (1 + math.cos(math.pi * frac))
        for g in opt.param_groups:
            g["lr"] = lr
        logp = F.log_softmax(model.logits(x), dim=1).permute(2, 0, 1)  # T x B x C
        targets, lengths = encode(texts)
        inputs = torch.full((x.shape[0],), logp.shape[0], dtype=torch.long)
        loss = ctc(logp, targets, inputs, lengths)
        opt.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        opt.step()
        smooth = loss.item() if smooth is None else 0.98 * smooth + 0.02 * loss.item()
        step += 1
        if step % 200 == 0:
            acc = accuracy(model, val_x, val_t)
            print(
                f"step {step} {elapsed / 60:.1f} min loss {smooth:.3f} lr {lr:.5f} held-out-font exact {acc:.3f}",
                flush=True,
            )
    print(f"done: {step} steps, {step * args.batch} samples, held-out-font exact {accuracy(model, val_x, val_t):.3f}")
    model.eval()
    torch.save(model.state_dict(), os.path.splitext(args.out)[0] + ".pt")
    dummy = torch.zeros(1, 1, render.H, render.W)
    torch.onnx.export(
        model, dummy, args.out, input_names=["crop"], output_names=["probs"], opset_version=13, dynamo=False
    )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
