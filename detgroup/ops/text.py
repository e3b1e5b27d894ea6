"""Text of a box → hashed character n-grams and word-shape bits (fastText style), stable.

A box's text (an OCR word, a label, a short phrase) is case-folded and split on white space.
Each token ``t`` gives the character n-grams of ``<t>`` (``<`` and ``>`` mark its ends) of the
lengths :data:`NGRAM_LENGTHS` plus the whole token ``<t>``; each n-gram is hashed with
``zlib.crc32`` of its UTF-8 bytes, prefixed by its kind (``"3:abc"``, ``"w:<abc>"``), so the
hash is the same in every process, on every machine and in every Python version (Python's
``hash()`` of a string is salted per process and is never used). The model maps a hash ``h`` to
embedding row ``h % buckets + 1``; row 0 is the learned embedding of an empty or missing text,
whose hash list is the single value :data:`EMPTY_HASH`.

:func:`encode_texts` is the documented helper that turns the texts of N boxes into what the
model (and an exported graph) takes: ``text_hashes`` int64 [T], ``text_offsets`` int64 [N]
(where each box's hashes start; every box has at least one) and ``text_shape`` float32
[N, :data:`SHAPE_FEATURES`].
"""

from __future__ import annotations

import math
import string
import zlib
from collections.abc import Sequence

import numpy as np

NGRAM_LENGTHS = (2, 3, 4)
EMPTY_HASH = -1  # the hash list of an empty or missing text; the model maps it to row 0
# word-shape bits: empty, any capital, all letters capitals, first letter a capital, any
# digit, all characters digits, any punctuation, ends with a colon, log length, several tokens
SHAPE_FEATURES = 10
_PUNCTUATION = frozenset(string.punctuation)


def _crc(key: str) -> int:
    return zlib.crc32(key.encode("utf-8"))


def text_hashes(text: str | None) -> list[int]:
    """Hashes (uint32 values) of the n-grams and whole tokens of ``text``; [EMPTY_HASH] if none."""
    tokens = (text or "").casefold().split()
    if not tokens:
        return [EMPTY_HASH]
    hashes: list[int] = []
    for token in tokens:
        marked = f"<{token}>"
        hashes.append(_crc(f"w:{marked}"))
        for n in NGRAM_LENGTHS:
            hashes.extend(_crc(f"{n}:{marked[i:i + n]}") for i in range(len(marked) - n + 1))
    return hashes


def word_shape(text: str | None) -> list[float]:
    """The :data:`SHAPE_FEATURES` word-shape values of ``text`` (see the module docstring)."""
    stripped = (text or "").strip()
    if not stripped:
        return [1.0] + [0.0] * (SHAPE_FEATURES - 1)
    letters = [c for c in stripped if c.isalpha()]
    chars = [c for c in stripped if not c.isspace()]
    return [
        0.0,
        float(any(c.isupper() for c in letters)),
        float(bool(letters) and all(c.isupper() for c in letters)),
        float(bool(letters) and letters[0].isupper()),
        float(any(c.isdigit() for c in chars)),
        float(all(c.isdigit() for c in chars)),
        float(any(c in _PUNCTUATION for c in chars)),
        float(stripped.endswith(":")),
        math.log1p(len(chars)) / 4.0,
        float(len(stripped.split()) > 1),
    ]


def encode_texts(texts: Sequence[str | None]) -> dict[str, np.ndarray]:
    """The model's text inputs for N boxes (``None`` or ``""``: no text).

    Returns ``text_hashes`` int64 [T] (T >= N; box k's hashes are
    ``text_hashes[text_offsets[k]:text_offsets[k + 1]]``), ``text_offsets`` int64 [N] and
    ``text_shape`` float32 [N, SHAPE_FEATURES].
    """
    per_box = [text_hashes(t) for t in texts]
    lengths = np.array([len(h) for h in per_box], dtype=np.int64)
    offsets = np.zeros(len(per_box), dtype=np.int64)
    if len(per_box):
        offsets[1:] = np.cumsum(lengths)[:-1]
    flat = [h for hashes in per_box for h in hashes]
    shape = np.array([word_shape(t) for t in texts], dtype=np.float32).reshape(-1, SHAPE_FEATURES)
    return {"text_hashes": np.array(flat, dtype=np.int64), "text_offsets": offsets,
            "text_shape": shape}
