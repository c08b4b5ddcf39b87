"""The protocol: writer-disjoint splits and the pairs that training and evaluation see.

A pair is (reference, questioned): the reference is always a genuine signature of the claimed
writer; the questioned one is another genuine of that writer (label 1, kind 'genuine'), a skilled
forgery of that writer (label 0, 'skilled') or a genuine signature of another writer of the same
split (label 0, 'random'). Splits never share a writer or an image (checked by content hash), so
no reported number can leak. Training pairs are drawn anew each epoch from (seed, epoch); evaluation
pairs are fixed by the seed and written out so that every number can be recomputed.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Sequence

import ml_collections
import numpy as np

from siamjax.errors import UserError

KIND_NAMES = ("genuine", "skilled", "random")
GENUINE, SKILLED, RANDOM = 0, 1, 2
SPLITS = ("train", "validation", "test")


@dataclasses.dataclass(frozen=True)
class Pairs:
    """Pairs as indices into one catalog of images. All arrays [n]."""

    a: np.ndarray  # int32 reference index (always a genuine signature)
    b: np.ndarray  # int32 questioned index
    label: np.ndarray  # int32, 1 = questioned is genuine
    kind: np.ndarray  # int32, GENUINE / SKILLED / RANDOM

    def __len__(self) -> int:
        return int(self.a.shape[0])

    def counts(self) -> dict[str, int]:
        return {name: int(np.sum(self.kind == k)) for k, name in enumerate(KIND_NAMES)}

    def take(self, idx: np.ndarray) -> Pairs:
        return Pairs(self.a[idx], self.b[idx], self.label[idx], self.kind[idx])


def concatenate(parts: list[Pairs]) -> Pairs:
    """One list of pairs of several (indices into the same catalog), in order."""
    if len(parts) == 1:
        return parts[0]
    return Pairs(
        *(np.concatenate([getattr(p, f) for p in parts]) for f in ("a", "b", "label", "kind"))
    )


def make_pairs(a, b, kind) -> Pairs:
    """Pairs from index lists and kind codes; the label follows from the kind (1 for GENUINE), so
    that a fixed list of pairs (e.g. SigComp2011's Kaggle lists) cannot disagree with itself."""
    a = np.asarray(a, np.int32)
    kind = np.asarray(kind, np.int32)
    return Pairs(a, np.asarray(b, np.int32), (kind == GENUINE).astype(np.int32), kind)


def _csv_list(text: str) -> list[str]:
    return [t.strip() for t in str(text).split(",") if t.strip()]


def split_writers(
    writers: Sequence[str], cfg: ml_collections.ConfigDict, seed: int
) -> dict[str, list[str]]:
    """Writer ids -> {'train', 'validation', 'test'} lists of writer ids, disjoint.

    `cfg` is `config.split`: method 'fractions' (shuffled by `seed`), 'writers' (explicit val/test
    lists, the rest trains) or 'kfold' (fold `fold` tests, the next fold validates).
    """
    unique = sorted(set(writers))
    order = [unique[i] for i in np.random.default_rng(seed).permutation(len(unique))]
    if cfg.method == "fractions":
        n = len(order)
        n_test = int(round(cfg.test_fraction * n))
        n_val = int(round(cfg.val_fraction * n))
        if n - n_test - n_val < 2 or (cfg.val_fraction > 0 and n_val < 2):
            raise UserError(
                f"{n} writers cannot be split by val_fraction={cfg.val_fraction}, "
                f"test_fraction={cfg.test_fraction}: too few writers per split."
            )
        out = {
            "test": order[:n_test],
            "validation": order[n_test : n_test + n_val],
            "train": order[n_test + n_val :],
        }
    elif cfg.method == "writers":
        val, test = _csv_list(cfg.val_writers), _csv_list(cfg.test_writers)
        unknown = sorted(set(val + test) - set(unique))
        if unknown:
            raise UserError(f"config.split names writers not in the dataset: {unknown[:10]}")
        out = {
            "validation": val,
            "test": test,
            "train": [w for w in unique if w not in set(val) | set(test)],
        }
    elif cfg.method == "kfold":
        k = cfg.num_folds
        if not 0 <= cfg.fold < k or k < 3:
            raise UserError(
                f"config.split.fold={cfg.fold} with num_folds={k}: need "
                "num_folds >= 3 and 0 <= fold < num_folds."
            )
        folds = [order[i::k] for i in range(k)]
        out = {
            "test": folds[cfg.fold],
            "validation": folds[(cfg.fold + 1) % k],
            "train": [
                w for i, f in enumerate(folds) if i not in (cfg.fold, (cfg.fold + 1) % k) for w in f
            ],
        }
    else:
        raise UserError(
            f"config.split.method={cfg.method!r}; use 'fractions', 'writers', "
            "'kfold' or (SigComp2011's leaking pair lists) 'kaggle_csv'."
        )
    return {k: sorted(v) for k, v in out.items()}


def split_indices(writer: np.ndarray, splits: dict[str, list[str]]) -> dict[str, np.ndarray]:
    """Image indices of each split's writers."""
    return {
        name: np.flatnonzero(np.isin(writer, list(ws))).astype(np.int32)
        for name, ws in splits.items()
    }


def check_disjoint(writer: np.ndarray, sha256: np.ndarray, indices: dict[str, np.ndarray]) -> None:
    """Raises if two splits share a writer or an image (by content hash)."""
    names = sorted(indices)
    for i, s in enumerate(names):
        for t in names[i + 1 :]:
            for what, values in (("writer", writer), ("image (sha256)", sha256)):
                shared = set(values[indices[s]]) & set(values[indices[t]])
                if shared:
                    raise UserError(
                        f"splits {s!r} and {t!r} share {len(shared)} {what}(s), e.g. "
                        f"{sorted(shared)[0]!r}: the protocol would leak."
                    )


class _Groups:
    """Per-writer genuine and forged image indices within one split."""

    def __init__(self, writer: np.ndarray, is_genuine: np.ndarray, indices: np.ndarray):
        indices = np.asarray(indices)
        self.writers = sorted(set(writer[indices]))
        self.genuine = {w: [] for w in self.writers}
        self.forged = {w: [] for w in self.writers}
        for i in indices:
            (self.genuine if is_genuine[i] else self.forged)[writer[i]].append(int(i))
        self.all_genuine = np.array([i for w in self.writers for i in self.genuine[w]], np.int64)
        self.owner = np.array([w for w in self.writers for _ in self.genuine[w]])
        if len(self.all_genuine) == 0:
            raise UserError("a split has no genuine signatures: cannot make pairs.")

    def anchors_with(self, what: str) -> np.ndarray:
        """Genuine images whose writer has a partner of `what` ('genuine' or 'forged')."""
        if what == "genuine":
            ok = {w for w in self.writers if len(self.genuine[w]) >= 2}
        else:
            ok = {w for w in self.writers if self.forged[w]}
        return self.all_genuine[np.isin(self.owner, list(ok))]


def sample_train_pairs(
    writer: np.ndarray,
    is_genuine: np.ndarray,
    indices: np.ndarray,
    cfg: ml_collections.ConfigDict,
    seed: int,
    epoch: int,
) -> Pairs:
    """Training pairs for one epoch, drawn from (seed, epoch) so that a resumed run sees the same.

    pairs_per_genuine x (genuine images) pairs, split by `cfg.positive/skilled/random` proportions.
    """
    rng = np.random.default_rng([seed, epoch, 7])
    g = _Groups(writer, is_genuine, indices)
    n = cfg.pairs_per_genuine * len(g.all_genuine)
    total = cfg.positive + cfg.skilled + cfg.random
    if total <= 0:
        raise UserError("config.pairs: positive + skilled + random must be > 0.")
    n_pos = int(round(n * cfg.positive / total))
    n_sk = int(round(n * cfg.skilled / total))
    n_rnd = n - n_pos - n_sk
    a, b, kind = [], [], []
    for k, count in ((GENUINE, n_pos), (SKILLED, n_sk), (RANDOM, n_rnd)):
        anchors = g.anchors_with("forged" if k == SKILLED else "genuine")
        if k == RANDOM:
            anchors = g.all_genuine if len(g.writers) > 1 else anchors[:0]
        if count == 0 or len(anchors) == 0:
            continue
        for ref in rng.choice(anchors, size=count):
            w = writer[ref]
            a.append(ref)
            kind.append(k)
            b.append(_partner(rng, g, w, int(ref), k))
    order = rng.permutation(len(a))
    return make_pairs(np.asarray(a)[order], np.asarray(b)[order], np.asarray(kind)[order])


def _partner(rng: np.random.Generator, g: _Groups, w: str, ref: int, kind: int) -> int:
    """A questioned image of `kind` for reference `ref` of writer `w`."""
    if kind == GENUINE:
        others = [i for i in g.genuine[w] if i != ref]
        return int(others[rng.integers(len(others))])
    if kind == SKILLED:
        return int(g.forged[w][rng.integers(len(g.forged[w]))])
    others = g.all_genuine[g.owner != w]
    return int(others[rng.integers(len(others))])


@dataclasses.dataclass(frozen=True)
class Triplets:
    """Training triplets as indices into one catalog of images. All arrays [n] int32.

    anchor and positive are two different genuine signatures of one writer; negative is a skilled
    forgery of that writer (negative_kind SKILLED) or a genuine signature of another writer of the
    split (RANDOM). Each triplet holds two labelled pairs: (anchor, positive) genuine and
    (anchor, negative) forged.
    """

    anchor: np.ndarray
    positive: np.ndarray
    negative: np.ndarray
    negative_kind: np.ndarray

    def __len__(self) -> int:
        return int(self.anchor.shape[0])

    def counts(self) -> dict[str, int]:
        return {KIND_NAMES[k]: int(np.sum(self.negative_kind == k)) for k in (SKILLED, RANDOM)}


def sample_train_triplets(
    writer: np.ndarray,
    is_genuine: np.ndarray,
    indices: np.ndarray,
    cfg: ml_collections.ConfigDict,
    seed: int,
    epoch: int,
) -> Triplets:
    """Training triplets for one epoch, drawn from (seed, epoch) like `sample_train_pairs`.

    pairs_per_genuine x (genuine images) / 2 triplets: each compares two pairs, so an epoch
    compares as many pairs as the pair sampler draws. Negatives are skilled forgeries in the
    proportion skilled / (skilled + random) of `cfg`, other writers' genuine signatures otherwise;
    a kind the split cannot supply (no forgeries, one writer) gives its share to the other.
    Anchors are genuine images of writers with at least two of them.
    """
    rng = np.random.default_rng([seed, epoch, 11])
    g = _Groups(writer, is_genuine, indices)
    if cfg.skilled + cfg.random <= 0:
        raise UserError("config.pairs: skilled + random must be > 0 to draw triplets' negatives.")
    n = cfg.pairs_per_genuine * len(g.all_genuine) // 2
    with_two = g.anchors_with("genuine")
    anchors = {
        SKILLED: with_two[np.isin(with_two, g.anchors_with("forged"))],
        RANDOM: with_two if len(g.writers) > 1 else with_two[:0],
    }
    if len(anchors[SKILLED]) + len(anchors[RANDOM]) == 0 or n == 0:
        raise UserError(
            "the training split has no writer with two genuine signatures and a "
            "forgery or another writer: cannot draw triplets."
        )
    n_sk = int(round(n * cfg.skilled / (cfg.skilled + cfg.random)))
    if len(anchors[SKILLED]) == 0:
        n_sk = 0
    elif len(anchors[RANDOM]) == 0:
        n_sk = n
    a, p, neg, kind = [], [], [], []
    for k, count in ((SKILLED, n_sk), (RANDOM, n - n_sk)):
        for ref in rng.choice(anchors[k], size=count) if count else ():
            w = writer[ref]
            a.append(int(ref))
            p.append(_partner(rng, g, w, int(ref), GENUINE))
            neg.append(_partner(rng, g, w, int(ref), k) if k == SKILLED else _other(rng, g, w))
            kind.append(k)
    order = rng.permutation(len(a))
    return Triplets(*(np.asarray(x, np.int32)[order] for x in (a, p, neg, kind)))


def _other(rng: np.random.Generator, g: _Groups, w: str) -> int:
    """A genuine image of another writer than `w`, uniformly: by rejection, which costs a draw or
    two instead of a pass over every genuine image of the split (`_partner`)."""
    while True:
        i = rng.integers(len(g.all_genuine))
        if g.owner[i] != w:
            return int(g.all_genuine[i])


def eval_pairs(
    writer: np.ndarray,
    is_genuine: np.ndarray,
    indices: np.ndarray,
    cfg: ml_collections.ConfigDict,
    seed: int,
) -> Pairs:
    """Fixed evaluation pairs: for every genuine reference, up to `eval_per_genuine` distinct
    questioned images of each kind (other genuine of the writer, its forgeries, other writers)."""
    rng = np.random.default_rng([seed, 99])
    g = _Groups(writer, is_genuine, indices)
    k = cfg.eval_per_genuine
    a, b, kind = [], [], []
    for ref in g.all_genuine:
        w = writer[ref]
        candidates = {
            GENUINE: [i for i in g.genuine[w] if i != ref],
            SKILLED: g.forged[w],
            RANDOM: g.all_genuine[g.owner != w],
        }
        for kd, pool in candidates.items():
            pool = np.asarray(pool)
            if len(pool) == 0:
                continue
            for q in rng.choice(pool, size=min(k, len(pool)), replace=False):
                a.append(int(ref))
                b.append(int(q))
                kind.append(kd)
    return make_pairs(a, b, kind)


def save_pairs(path: str, pairs: Pairs, paths: np.ndarray, writer: np.ndarray) -> None:
    """Writes pairs as JSON rows {reference, questioned, writer, kind, label} with source paths."""
    rows = [
        {
            "reference": str(paths[i]),
            "questioned": str(paths[j]),
            "writer": str(writer[i]),
            "kind": KIND_NAMES[k],
            "label": int(lbl),
        }
        for i, j, k, lbl in zip(pairs.a, pairs.b, pairs.kind, pairs.label, strict=True)
    ]
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        json.dump({"counts": pairs.counts(), "pairs": rows}, f, indent=0)


@dataclasses.dataclass(frozen=True)
class Trials:
    """Questioned signatures, each scored against K genuine references of its claimed writer
    (SigComp2011 used K = 1, 5 and 12). All arrays have n rows."""

    questioned: np.ndarray  # int32 [n]
    references: np.ndarray  # int32 [n, K], genuine images of the claimed writer
    kind: np.ndarray  # int32 [n], GENUINE / SKILLED / RANDOM
    label: np.ndarray  # int32 [n], 1 = questioned is genuine
    # Writers of the split that could not take part (fewer than K + 1 genuine signatures).
    left_out: tuple[str, ...] = ()

    def __len__(self) -> int:
        return int(self.questioned.shape[0])

    def counts(self) -> dict[str, int]:
        return {name: int(np.sum(self.kind == k)) for k, name in enumerate(KIND_NAMES)}

    def as_pairs(self) -> Pairs:
        """Every (reference, questioned) pair, row-major: trial i's pairs are rows i*K..i*K+K-1."""
        k = self.references.shape[1]
        return make_pairs(
            self.references.reshape(-1), np.repeat(self.questioned, k), np.repeat(self.kind, k)
        )


def reference_trials(
    writer: np.ndarray,
    is_genuine: np.ndarray,
    indices: np.ndarray,
    k: int,
    seed: int,
    allow_fewer_writers: bool = False,
) -> Trials:
    """Per writer: K genuine references fixed by `seed`; questioned are the writer's other genuine
    signatures, all its forgeries, and as many genuine signatures of other writers of the split.

    Writers with fewer than K + 1 genuine signatures cannot take part: a UserError names them,
    unless `allow_fewer_writers`, where they are left out (and listed in `Trials.left_out`). A
    figure over the few writers that remain would otherwise pass for one over the whole split.
    """
    if k < 1:
        raise UserError(f"config.eval.references={k}: must be >= 1.")
    rng = np.random.default_rng([seed, 55, k])
    g = _Groups(writer, is_genuine, indices)
    q, refs, kind, left_out = [], [], [], []
    for w in g.writers:
        gen = np.asarray(g.genuine[w])
        if len(gen) < k + 1:
            left_out.append(str(w))
            continue
        chosen = rng.permutation(gen)
        r, rest = chosen[:k], chosen[k:]
        others = g.all_genuine[g.owner != w]
        rand = rng.choice(others, size=min(len(rest), len(others)), replace=False)
        for kd, pool in ((GENUINE, rest), (SKILLED, g.forged[w]), (RANDOM, rand)):
            for i in pool:
                q.append(int(i))
                refs.append(r)
                kind.append(kd)
    if left_out and not allow_fewer_writers:
        shown = ", ".join(left_out[:8]) + (", ..." if len(left_out) > 8 else "")
        raise UserError(
            f"config.eval.references={k}: {len(left_out)} of {len(g.writers)} writers of the split "
            f"have fewer than {k + 1} genuine signatures ({shown}); use a smaller K, or "
            "--config.eval.allow_fewer_writers=True to evaluate the others only."
        )
    if not q:
        raise UserError(
            f"no writer of the split has {k + 1} genuine signatures for config.eval.references={k}."
        )
    kind = np.asarray(kind, np.int32)
    return Trials(
        np.asarray(q, np.int32),
        np.asarray(refs, np.int32).reshape(len(q), k),
        kind,
        (kind == GENUINE).astype(np.int32),
        tuple(left_out),
    )


def pairs_as_trials(pairs: Pairs) -> Trials:
    """Fixed pairs seen as trials with one reference each."""
    return Trials(pairs.b, pairs.a[:, None], pairs.kind, pairs.label)
