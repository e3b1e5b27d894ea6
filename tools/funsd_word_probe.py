"""How much a FUNSD word's own text and box say about its label: a linear probe.

Logistic regression (scikit-learn) on hashed character 2-4-grams of each word
(``HashingVectorizer(analyzer="char_wb")``) plus its box normalised by the page, trained on the
train split's words and scored on the val split's, one word at a time (no context, no grouping).
A reference for the text recipes: what the words carry before any set context.

    python tools/funsd_word_probe.py --data runs/funsd_data
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from scipy.sparse import csr_matrix, hstack
from sklearn.feature_extraction.text import HashingVectorizer
from sklearn.linear_model import LogisticRegression

from detgroup.data.coco_groups import load_coco_groups


def words(ann: Path) -> tuple[list[str], np.ndarray, np.ndarray]:
    """(texts, boxes [N, 6] normalised corners and size, category indices [N]) of every word."""
    coco = load_coco_groups(ann)
    texts, geometry, labels = [], [], []
    for info in coco.images:
        target = coco.targets(info["id"])
        w, h = info["width"], info["height"]
        for box, cat, text in zip(target["boxes"], target["categories"], target["texts"],
                                  strict=True):
            x1, y1, x2, y2 = box
            texts.append(text)
            geometry.append([x1 / w, y1 / h, x2 / w, y2 / h, (x2 - x1) / w, (y2 - y1) / h])
            labels.append(int(cat))
    return texts, np.asarray(geometry), np.asarray(labels)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True,
                        help="output folder of `detgroup data funsd` (train/ and val/)")
    args = parser.parse_args()
    hashing = HashingVectorizer(analyzer="char_wb", ngram_range=(2, 4), n_features=2**18)
    split = {s: words(args.data / s / "annotations.json") for s in ("train", "val")}

    def features(s: str) -> csr_matrix:
        texts, geometry, _ = split[s]
        return hstack([hashing.transform(texts), csr_matrix(geometry)]).tocsr()

    labels = {s: split[s][2] for s in split}
    probe = LogisticRegression(max_iter=2000, C=3.0).fit(features("train"), labels["train"])
    majority = np.bincount(labels["train"]).argmax()
    for s in ("train", "val"):
        acc = float((probe.predict(features(s)) == labels[s]).mean())
        base = float((labels[s] == majority).mean())
        print(f"{s}: word category accuracy {acc:.3f} (majority class {base:.3f}, "
              f"{len(labels[s])} words)")


if __name__ == "__main__":
    main()
