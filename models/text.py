"""Title tokens as hashed buckets: the words of an item's title, a content feature for items nobody has rated.

A title such as "Star Wars (1977)" or "Godfather: Part II, The (1974)" loses its release year (a feature of
its own) and MovieLens' trailing article, is lower-cased and split into words; common English words carry no
taste and are dropped. Each word goes to one of ``BUCKETS`` buckets by CRC-32 (stable across processes and
Python versions, unlike ``hash``), so a model needs no vocabulary to serve a title it was not fitted on.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Sequence

import numpy as np
import scipy.sparse as sp

BUCKETS = 4096
MAX_TOKENS = 8  # per title, in title order (the bag a model reads)
STOPWORDS = frozenset("a an and the of in on at to for from with by is it its la le les el de des du der die das "
                      "vs ii iii part".split())
_YEAR = re.compile(r"\(\s*\d{4}\s*\)\s*$")
_ARTICLE = re.compile(r",\s*(the|a|an|la|le|les|il|el|der|die|das)\s*(\(|$)", re.IGNORECASE)
_WORD = re.compile(r"[^\W_]+")


def title_words(title: str | None) -> list[str]:
    """The words of a title that say something about it, in order, at most ``MAX_TOKENS``."""
    if not title:
        return []
    text = _ARTICLE.sub(r" \2", _YEAR.sub("", title)).lower()
    words = [w for w in _WORD.findall(text) if len(w) > 1 and w not in STOPWORDS and not w.isdigit()]
    return list(dict.fromkeys(words))[:MAX_TOKENS]


def bucket_of(word: str) -> int:
    return zlib.crc32(word.encode()) % BUCKETS


def title_token_matrix(titles: Sequence[str | None]) -> sp.csr_matrix:
    """(len(titles), BUCKETS) 0/1: which hashed words each title has."""
    rows, cols = [], []
    for row, title in enumerate(titles):
        buckets = sorted({bucket_of(w) for w in title_words(title)})
        rows += [row] * len(buckets)
        cols += buckets
    matrix = sp.csr_matrix((np.ones(len(rows), np.float32), (rows, cols)), shape=(len(titles), BUCKETS))
    matrix.sum_duplicates()
    return matrix
