#!/usr/bin/env python3
"""Runs RapidOCR over scenes dumped by `parkpay-sim bench-plates --dump DIR` and prints the
same figures as the benchmark, so the two readers are compared on identical pixels.

    pip install rapidocr-onnxruntime==1.4.4
    taskset -c 0 python3 bench/rapidocr_plates.py DIR [--json]

RapidOCR returns text lines with no notion of plates; a scene's read is all its lines joined left
to right, upper-cased, separators dropped. "Layout-corrected" then maps confusable characters by
the position classes of the true plate's format (letter or digit), which is generous to RapidOCR:
our reader has to find the layout itself. "Picked" is more generous still: told the plate, it
looks for a line, or two lines left to right, that spell it after that correction, so text
elsewhere in the frame (the held-out scenes have some) does not count against RapidOCR.
"""
import json
import os
import statistics
import sys
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")

from rapidocr_onnxruntime import RapidOCR  # noqa: E402

TO_LETTER = {"0": "O", "1": "I", "2": "Z", "4": "A", "5": "S", "6": "G", "8": "B"}
TO_DIGIT = {"O": "0", "D": "0", "Q": "0", "I": "1", "J": "1", "L": "1", "Z": "2", "A": "4",
            "S": "5", "G": "6", "B": "8"}


def clean(text):
    return "".join(c.upper() for c in text if c.isalnum())


def corrected(read, truth):
    """Maps each character to a letter or a digit as the true plate's position demands."""
    t = clean(truth)
    if len(read) != len(t):
        return read
    out = []
    for r, c in zip(read, t):
        if c.isdigit():
            out.append(TO_DIGIT.get(r, r))
        elif c.isascii() and c.isalpha():
            out.append("D" if r == "0" and not t[0].isascii() else TO_LETTER.get(r, r))
        else:
            out.append(r)
    return "".join(out)


def main():
    folder = sys.argv[1]
    as_json = "--json" in sys.argv
    engine = RapidOCR(intra_op_num_threads=1, inter_op_num_threads=1)
    rows = [line.rstrip("\n").split("\t") for line in open(os.path.join(folder, "truth.tsv"))][1:]
    cells = {}
    for name, plate, fmt, cond in rows:
        start = time.perf_counter()
        result, _ = engine(os.path.join(folder, name))
        ms = (time.perf_counter() - start) * 1000
        lines = sorted(result or [], key=lambda r: min(p[0] for p in r[0]))
        # Keep lines that look like plate text; drop stray single characters from the car.
        read = clean("".join(r[1] for r in lines if len(clean(r[1])) >= 2))
        truth = clean(plate)
        # Told the plate, pick the line, or two lines left to right, that spell it: an upper
        # bound for any rule that picks the plate among text elsewhere in the frame.
        texts = [clean(r[1]) for r in lines]
        runs = texts + [a + b for i, a in enumerate(texts) for b in texts[i + 1 :]]
        picked = any(corrected(t, plate) == truth for t in runs)
        c = cells.setdefault(cond, {"n": 0, "exact": 0, "corrected": 0, "picked": 0, "ms": []})
        c["n"] += 1
        c["exact"] += read == truth
        c["corrected"] += corrected(read, plate) == truth
        c["picked"] += picked
        c["ms"].append(ms)
    total = {"n": 0, "exact": 0, "corrected": 0, "picked": 0, "ms": []}
    for c in cells.values():
        for k in ("n", "exact", "corrected", "picked"):
            total[k] += c[k]
        total["ms"] += c["ms"]
    cells["overall"] = total

    def summary(c):
        ms = sorted(c["ms"])
        return {
            "n": c["n"],
            "exact": round(100 * c["exact"] / max(c["n"], 1), 1),
            "layout_corrected": round(100 * c["corrected"] / max(c["n"], 1), 1),
            "picked": round(100 * c["picked"] / max(c["n"], 1), 1),
            "p50_ms": round(statistics.median(ms), 1),
            "p95_ms": round(ms[int(0.95 * (len(ms) - 1))], 1),
        }

    if as_json:
        print(json.dumps({k: summary(v) for k, v in cells.items()}))
        return
    print(f"{'cell':<12} {'n':>5} {'exact%':>7} {'layout%':>8} {'picked%':>8} {'p50ms':>7} {'p95ms':>7}")
    for k, v in cells.items():
        s = summary(v)
        print(
            f"{k:<12} {s['n']:>5} {s['exact']:>7} {s['layout_corrected']:>8} {s['picked']:>8}"
            f" {s['p50_ms']:>7} {s['p95_ms']:>7}"
        )


if __name__ == "__main__":
    main()
