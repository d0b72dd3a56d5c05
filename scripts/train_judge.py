"""Train the offline judge's head: Schwartz higher-order dimensions from all-MiniLM-L6-v2 embeddings.

Data: Touché23-ValueEval (Kiesel et al. 2022/2023, CC BY-SA 4.0), its training, validation and test
splits as published (default: ../shared/data/touche23 beside this repository). Each argument's 20
value categories become the four higher-order dimensions through the dataset's own values.json
(level2 → level3; a boundary category counts for both of its dimensions). The text is chosen on the
validation split among the argument's premise alone and "conclusion (stance): premise".

Model: one logistic regression per dimension over the L2-normalised 384-d embedding (torch LBFGS,
the L2 penalty chosen on validation macro-F1 from a small grid), a decision threshold per
dimension chosen on validation; the test split is read once, at the end, for the F1 reported.
Writes vneuron/validate/judges/touche_head.safetensors (tensors weight [4, 384], bias [4], threshold [4];
metadata: dimensions, F1 per dimension on validation and test, the chosen text and penalty, the
encoder's SHA-256, the data's SHA-256s) and prints the table as Markdown.

    OMP_NUM_THREADS=1 nice -n 5 .venv/bin/python scripts/train_judge.py [--data DIR] [--out FILE]
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from vneuron.validate.judges.offline import DIMENSIONS, ENCODER_PACKAGE, ENCODER_VERSION, Encoder, encoder_dir, head_path, sha256  # noqa: E402

HIGHER = {"Openness to change": "openness_to_change", "Conservation": "conservation", "Self-enhancement": "self_enhancement",
          "Self-transcendence": "self_transcendence"}
SPLITS = {"train": "training", "validation": "validation", "test": "test"}
TEXTS = ("premise", "conclusion_premise")
PENALTIES = (1e-4, 1e-3, 1e-2, 3e-2, 1e-1)


def read_tsv(path: Path) -> list[dict[str, str]]:
    with open(path, encoding="utf-8", newline="") as fh:
        return list(csv.DictReader(fh, delimiter="\t"))


def category_map(data: Path) -> dict[str, set[str]]:
    """value category (level2) → its higher-order dimensions (level3), from the dataset's values.json."""
    out: dict[str, set[str]] = {}
    for value in json.loads((data / "values.json").read_text(encoding="utf-8"))["values"]:
        out.setdefault(value["level2"], set()).update(HIGHER[h] for h in value["level3"])
    return out


def load_split(data: Path, split: str, categories: dict[str, set[str]]):
    args = {r["Argument ID"]: r for r in read_tsv(data / f"arguments-{SPLITS[split]}.tsv")}
    labels = read_tsv(data / f"labels-{SPLITS[split]}.tsv")
    texts: dict[str, list[str]] = {t: [] for t in TEXTS}
    y = []
    for row in labels:
        a = args[row["Argument ID"]]
        texts["premise"].append(a["Premise"])
        texts["conclusion_premise"].append(f"{a['Conclusion']} ({a['Stance']}): {a['Premise']}")
        dims = set()
        for category, value in row.items():
            if category != "Argument ID" and value.strip() == "1":
                dims |= categories[category]
        y.append([1.0 if d in dims else 0.0 for d in DIMENSIONS])
    return texts, torch.tensor(y)


def fit(x: torch.Tensor, y: torch.Tensor, penalty: float) -> tuple[torch.Tensor, torch.Tensor]:
    w = torch.zeros(y.shape[1], x.shape[1], dtype=torch.float64, requires_grad=True)
    b = torch.zeros(y.shape[1], dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], lr=1, max_iter=500, tolerance_grad=1e-9, line_search_fn="strong_wolfe")
    x, y = x.double(), y.double()

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(x @ w.T + b, y) + penalty * (w ** 2).sum() / 2
        loss.backward()
        return loss

    opt.step(closure)
    return w.detach(), b.detach()


def f1(pred: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    tp = (pred * y).sum(0)
    return 2 * tp / (pred.sum(0) + y.sum(0)).clamp_min(1)


def thresholds(p: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    grid = torch.linspace(0.05, 0.95, 91, dtype=p.dtype)
    scores = torch.stack([f1((p >= t).double(), y) for t in grid])  # [grid, dims]
    return grid[scores.argmax(0)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "touche23")
    parser.add_argument("--out", type=Path, default=head_path())
    args = parser.parse_args()
    started = time.time()
    categories = category_map(args.data)
    encoder = Encoder()
    split_texts, ys, emb = {}, {}, {}
    for split in SPLITS:
        split_texts[split], ys[split] = load_split(args.data, split, categories)
    for text in TEXTS:
        for split in SPLITS:
            emb[text, split] = encoder(split_texts[split][text])
            print(f"embedded {split} ({text}): {len(emb[text, split])} arguments, {time.time() - started:.0f} s", file=sys.stderr)
    best = None
    for text in TEXTS:
        for penalty in PENALTIES:
            w, b = fit(emb[text, "train"], ys["train"], penalty)
            p = torch.sigmoid(emb[text, "validation"].double() @ w.T + b)
            t = thresholds(p, ys["validation"].double())
            val = f1((p >= t).double(), ys["validation"].double())
            print(f"{text:20} penalty {penalty:g}: validation macro-F1 {float(val.mean()):.4f}", file=sys.stderr)
            if best is None or float(val.mean()) > best[0]:
                best = (float(val.mean()), text, penalty, w, b, t, val)
    _, text, penalty, w, b, t, val = best
    p_test = torch.sigmoid(emb[text, "test"].double() @ w.T + b)
    test = f1((p_test >= t).double(), ys["test"].double())
    support = ys["test"].sum(0)
    data_hashes = {f.name: hashlib.sha256(f.read_bytes()).hexdigest() for f in sorted(args.data.glob("*-*.tsv"))}
    meta = {"version": "touche23-minilm-1", "dimensions": list(DIMENSIONS), "text": text, "penalty": penalty,
            "f1_validation": {d: round(float(v), 4) for d, v in zip(DIMENSIONS, val)},
            "f1_test": {d: round(float(v), 4) for d, v in zip(DIMENSIONS, test)},
            "f1_test_macro": round(float(test.mean()), 4), "test_support": {d: int(s) for d, s in zip(DIMENSIONS, support)},
            "thresholds": {d: round(float(v), 3) for d, v in zip(DIMENSIONS, t)},
            "data": {"name": "Touché23-ValueEval", "license": "CC BY-SA 4.0", "splits": {s: len(ys[s]) for s in SPLITS},
                     "sha256": data_hashes},
            "encoder_package": f"{ENCODER_PACKAGE}=={ENCODER_VERSION}", "encoder_sha256": sha256(encoder_dir() / "model.safetensors")}
    from safetensors.torch import save_file

    args.out.parent.mkdir(parents=True, exist_ok=True)
    save_file({"weight": w.float().contiguous(), "bias": b.float().contiguous(), "threshold": t.float().contiguous()}, str(args.out),
              metadata={"vneuron": json.dumps(meta)})
    print("| dimension | test F1 | validation F1 | test positives (of %d) | threshold |" % len(ys["test"]))
    print("|---|---|---|---|---|")
    for d in DIMENSIONS:
        m = meta
        print(f"| {d} | {m['f1_test'][d]:.3f} | {m['f1_validation'][d]:.3f} | {m['test_support'][d]} | {m['thresholds'][d]:.2f} |")
    print(f"| macro | {meta['f1_test_macro']:.3f} | {float(val.mean()):.3f} | | |")
    print(f"text: {text}; L2 penalty {penalty:g}; {time.time() - started:.0f} s; written {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
