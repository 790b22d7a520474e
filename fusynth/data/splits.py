"""Patient-level splits: no subject ever appears in two splits."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence

import numpy as np

from fusynth.core.errors import UserInputError


def check_fraction(value: float, flag: str) -> float:
    """Validate a split fraction flag (``0 <= value < 1``)."""
    if not 0.0 <= float(value) < 1.0:
        raise UserInputError(f"{flag}: must be in [0, 1), got {value}")
    return float(value)


def split_subjects(
    subjects: Iterable[str],
    seed: int,
    val_fraction: float,
    test_fraction: float = 0.0,
    strata: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """Assign each subject to train, validation or test, deterministically.

    Subjects are sorted, then shuffled with ``numpy.random.default_rng(seed)``, so the
    assignment depends only on the set of subjects and the seed (not on file order).
    With ``strata`` (e.g. each subject's main view) each split takes every stratum in
    proportion to its size, so a small validation split still sees the views. With at
    least three subjects a non-zero fraction gets at least one, and train always
    keeps at least one.

    Args:
        subjects: subject ids (duplicates are fine).
        seed: the shuffle seed.
        val_fraction: share of subjects for validation.
        test_fraction: share of subjects for test.
        strata: optional ``{subject_id: stratum}``.

    Returns:
        ``{subject_id: split}``.
    """
    val_fraction = check_fraction(val_fraction, "--val_fraction")
    test_fraction = check_fraction(test_fraction, "--test_fraction")
    if val_fraction + test_fraction >= 1.0:
        raise UserInputError(
            f"--val_fraction + --test_fraction must be below 1, got "
            f"{val_fraction} + {test_fraction}"
        )
    unique = sorted(set(subjects))
    rng = np.random.default_rng(seed)
    groups: dict[str, list[str]] = {}
    for i in rng.permutation(len(unique)):
        key = strata.get(unique[i], "") if strata else ""
        groups.setdefault(key, []).append(unique[i])
    keys = sorted(groups)
    tiebreak = dict(zip(keys, rng.random(len(keys)), strict=True))
    n = len(unique)
    n_test = _count(n, test_fraction)
    n_val = _count(n, val_fraction)
    while n_test + n_val >= n and (n_test or n_val):  # keep one subject for training
        if n_val >= n_test and n_val:
            n_val -= 1
        else:
            n_test -= 1
    left = {k: len(groups[k]) for k in keys}
    taken = {k: 0 for k in keys}
    out: dict[str, str] = {}
    for split, target in (("test", n_test), ("validation", n_val)):
        quota = _apportion(target, left, tiebreak)
        for k in keys:
            for subject in groups[k][taken[k] : taken[k] + quota[k]]:
                out[subject] = split
            taken[k] += quota[k]
            left[k] -= quota[k]
    for k in keys:
        for subject in groups[k][taken[k] :]:
            out[subject] = "train"
    return out


def _apportion(
    total: int, sizes: Mapping[str, int], tiebreak: Mapping[str, float]
) -> dict[str, int]:
    """Share ``total`` among strata in proportion to ``sizes`` (largest remainder),
    leaving every non-empty stratum at least one subject for training when possible."""
    n = sum(sizes.values())
    if total <= 0 or n == 0:
        return {k: 0 for k in sizes}
    ideal = {k: total * v / n for k, v in sizes.items()}
    caps = {k: max(v - 1, 0) for k, v in sizes.items()}
    alloc = {k: min(int(ideal[k]), caps[k]) for k in sizes}
    while sum(alloc.values()) < total:
        room = [k for k in sizes if alloc[k] < caps[k]]
        if not room:  # every stratum is down to its last subject
            room = [k for k in sizes if alloc[k] < sizes[k]]
            if not room:
                break
        best = max(room, key=lambda k: (ideal[k] - alloc[k], tiebreak[k]))
        alloc[best] += 1
    return alloc


def _count(n: int, fraction: float) -> int:
    if fraction <= 0:
        return 0
    k = int(round(fraction * n))
    return max(k, 1) if n >= 3 else k


def assign_splits(
    subjects: Sequence[str],
    publisher_splits: Sequence[str | None],
    seed: int,
    val_fraction: float,
    test_fraction: float,
    views: Sequence[str] | None = None,
) -> tuple[list[str], list[str]]:
    """Split samples by subject, keeping the publisher's split where there is one.

    Rules, in order:

    1. a sample whose publisher split is ``test`` or ``unlabeled`` keeps it;
    2. the remaining subjects are split by :func:`split_subjects`: into train and
       validation when the publisher gave a test split, and into train, validation and
       test (``test_fraction``) when it did not; stratified by each subject's most
       frequent view when ``views`` is given.

    Args:
        subjects: subject id of each sample.
        publisher_splits: the publisher's split of each sample (``train``, ``test``,
            ``unlabeled``) or None.
        seed: split seed.
        val_fraction: share of the remaining subjects for validation.
        test_fraction: share for test when the publisher has no test split.
        views: view of each sample, to stratify by.

    Returns:
        ``(splits, notes)``: the split of each sample, and human-readable notes on what
        was done (for the log).

    Raises:
        UserInputError: one subject is in two publisher splits.
    """
    fixed: dict[str, str] = {}
    for subject, pub in zip(subjects, publisher_splits, strict=True):
        if pub in ("test", "unlabeled"):
            prev = fixed.setdefault(subject, pub)
            if prev != pub:
                raise UserInputError(
                    f"subject {subject!r} is in the publisher's {prev!r} and {pub!r} splits"
                )
    for subject, pub in zip(subjects, publisher_splits, strict=True):
        if pub not in ("test", "unlabeled") and subject in fixed:
            raise UserInputError(
                f"subject {subject!r} is in the publisher's {fixed[subject]!r} split and "
                "also in its training data; a subject must stay in one split"
            )
    notes = []
    has_test = "test" in fixed.values()
    if has_test:
        notes.append("kept the publisher's test split; --test_fraction not used")
        test_fraction = 0.0
    free = [s for s in subjects if s not in fixed]
    strata = None
    if views is not None:
        per_subject: dict[str, Counter[str]] = {}
        for subject, view in zip(subjects, views, strict=True):
            per_subject.setdefault(subject, Counter())[view] += 1
        # Most frequent view, ties broken by name so the result is order-independent.
        strata = {
            s: min(c.items(), key=lambda kv: (-kv[1], kv[0]))[0] for s, c in per_subject.items()
        }
    assigned = split_subjects(free, seed, val_fraction, test_fraction, strata) if free else {}
    splits = [fixed.get(s) or assigned[s] for s in subjects]
    return splits, notes


def subjects_in_several_splits(
    subjects: Iterable[str], splits: Iterable[str]
) -> Mapping[str, list[str]]:
    """``{subject: sorted splits}`` for every subject found in more than one split."""
    seen: dict[str, set[str]] = {}
    for subject, split in zip(subjects, splits, strict=True):
        seen.setdefault(subject, set()).add(split)
    return {s: sorted(v) for s, v in seen.items() if len(v) > 1}


def pick_by_subject(subjects: Sequence[str], k: int, seed: int | Sequence[int]) -> list[int]:
    """Positions of ``k`` items taken subject by subject in a seeded order.

    The items are grouped by subject; the subjects, sorted by name, are shuffled with
    ``numpy.random.default_rng(seed)`` and taken whole (their items in input order) until
    ``k`` items are reached, the last subject possibly cut. For one seed a smaller ``k``
    gives a prefix of a larger one, so selections are nested. ``k`` above the number of
    items takes them all.

    Args:
        subjects: the subject id of each item.
        k: how many items to take.
        seed: the shuffle seed (an int or a list of ints, as numpy takes it).

    Returns:
        Positions into ``subjects``, in the order taken.
    """
    by_subject: dict[str, list[int]] = {}
    for i, subject in enumerate(subjects):
        by_subject.setdefault(subject, []).append(i)
    names = sorted(by_subject)
    picked: list[int] = []
    for j in np.random.default_rng(seed).permutation(len(names)):
        picked += by_subject[names[j]]
        if len(picked) >= k:
            break
    return picked[:k]


def check_disjoint_subjects(
    train: Iterable[str], other: Iterable[str], what: str, against: str, hint: str
) -> None:
    """Refuse a validation or test set that shares a subject with the training data.

    Args:
        train: the training subjects.
        other: the subjects of the set to check.
        what: how the error starts, e.g. ``--test DIR:``.
        against: what the set is checked against, e.g. ``the training images``.
        hint: what to do instead.

    Raises:
        UserInputError: ``{what} shares N subject(s) with {against} (e.g. ID); {hint}``.
    """
    shared = set(train) & set(other)
    if shared:
        raise UserInputError(
            f"{what} shares {len(shared)} subject(s) with {against} "
            f"(e.g. {sorted(shared)[0]}); {hint}"
        )
