"""A baseline without the LM: bag of words or character n-grams, the same L1 classifier.

Run on the same splits by the transfer tool, so that a reader sees what the LM's features
add (SST binary: bag-of-words logistic regression reaches about 78-80 %).
"""

from __future__ import annotations

from typing import Any, Sequence

from sklearn.feature_extraction.text import CountVectorizer

from lmscale.data.errors import DataError

BASELINES = ("words", "chars", "none")


def ngram_features(kind: str, train: Sequence[str], *others: Sequence[str]) -> tuple[Any, ...]:
    """Binary n-gram indicators fitted on ``train``: words 1-2 grams, or chars 1-4 (in words).

    Returns sparse matrices (train, *others) and the vocabulary size as the last element.
    """
    if kind == "words":
        vec = CountVectorizer(analyzer="word", ngram_range=(1, 2), binary=True, lowercase=True)
    elif kind == "chars":
        vec = CountVectorizer(analyzer="char_wb", ngram_range=(1, 4), binary=True, lowercase=True)
    else:
        raise DataError(f"baseline must be one of {list(BASELINES)}, got {kind!r}")
    x_train = vec.fit_transform(train)
    return (x_train, *(vec.transform(t) for t in others), len(vec.vocabulary_))
