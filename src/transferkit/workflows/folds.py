"""K-fold cross-validation for `compare --folds K`: on small data one held-out split of a few
dozen items cannot separate strategies (±10 points on 40 images), so every labelled item is
validated once, by the run that did not train on it, and the paired test uses all of them."""

from __future__ import annotations

import dataclasses
from collections import Counter

from transferkit.errors import ConfigError
from transferkit.modalities import DatasetSplits
from transferkit.modalities.common import first_label, stratified_folds

__all__ = ["fold_splits"]


def fold_splits(splits: DatasetSplits, folds: int, seed: int) -> list[DatasetSplits]:
    """Train and validation pooled, dealt into ``folds`` stratified folds; split ``k`` validates
    on fold ``k`` and trains on the others. A test split stays as it is, outside every fold."""
    pool = [*splits.train, *splits.val]
    counts = Counter(first_label(s) for s in pool)
    single = [splits.classes[c] for c, n in sorted(counts.items()) if n < 2]
    if single:
        raise ConfigError(
            "folds", folds, f"class(es) {', '.join(single)} have a single item: a fold validating it trains without it"
        )
    if folds > len(pool):
        raise ConfigError("folds", folds, f"must be at most the number of labelled items ({len(pool)})")
    dealt = stratified_folds(pool, folds, seed)
    out = []
    for k, val in enumerate(dealt):
        train = tuple(s for j, fold in enumerate(dealt) if j != k for s in fold)
        out.append(dataclasses.replace(splits, train=train, val=tuple(val), duplicates=()))
    return out
