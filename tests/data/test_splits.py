from __future__ import annotations

import pytest

from fusynth.core.errors import UserInputError
from fusynth.data.splits import (
    assign_splits,
    check_disjoint_subjects,
    pick_by_subject,
    split_subjects,
    subjects_in_several_splits,
)


def test_split_is_deterministic_and_order_independent():
    subjects = [f"s{i}" for i in range(50)]
    a = split_subjects(subjects, seed=3, val_fraction=0.1, test_fraction=0.2)
    b = split_subjects(list(reversed(subjects)) * 2, seed=3, val_fraction=0.1, test_fraction=0.2)
    c = split_subjects(subjects, seed=4, val_fraction=0.1, test_fraction=0.2)
    assert a == b
    assert a != c
    counts = {s: list(a.values()).count(s) for s in ("train", "validation", "test")}
    assert counts == {"train": 35, "validation": 5, "test": 10}


def test_small_sets_keep_one_training_subject():
    out = split_subjects(["a", "b", "c"], seed=0, val_fraction=0.4, test_fraction=0.4)
    assert sorted(out.values()) == ["test", "train", "validation"]
    assert split_subjects(["a"], seed=0, val_fraction=0.5, test_fraction=0.4) == {"a": "train"}


def test_fraction_errors_name_the_flag():
    with pytest.raises(UserInputError, match="--val_fraction"):
        split_subjects(["a"], seed=0, val_fraction=1.5)
    with pytest.raises(UserInputError, match="must be below 1"):
        split_subjects(["a"], seed=0, val_fraction=0.5, test_fraction=0.5)


def test_publisher_test_split_is_kept_and_subjects_never_leak():
    subjects = ["p1", "p1", "p2", "p3", "p4", "p5", "p6", "p7"]
    publisher = ["train", "train", "train", "train", "train", "train", "test", "test"]
    splits, notes = assign_splits(subjects, publisher, seed=0, val_fraction=0.2, test_fraction=0.3)
    assert splits[6:] == ["test", "test"]
    assert "test" not in splits[:6]  # --test_fraction not used when the publisher has a test split
    assert notes and "publisher" in notes[0]
    assert not subjects_in_several_splits(subjects, splits)


def test_subject_in_two_publisher_splits_is_an_error():
    with pytest.raises(UserInputError, match="subject 'p1'"):
        assign_splits(["p1", "p1"], ["train", "test"], seed=0, val_fraction=0.1, test_fraction=0.0)


def test_stratified_split_gives_every_view_a_validation_subject():
    subjects = [f"{v}{i}" for v in "abcd" for i in range(6)]
    views = [s[0] for s in subjects]
    splits, _ = assign_splits(subjects, [None] * len(subjects), 0, 0.2, 0.2, views=views)
    for v in "abcd":
        got = {sp for s, sp in zip(subjects, splits, strict=True) if s[0] == v}
        assert got == {"train", "validation", "test"}


def test_pick_by_subject_takes_whole_subjects_and_nests():
    subjects = [f"p{i % 5}" for i in range(15)]  # three items per subject, interleaved
    seven = pick_by_subject(subjects, 7, [0, 17])
    assert len(seven) == 7 and pick_by_subject(subjects, 3, [0, 17]) == seven[:3]
    taken = [subjects[i] for i in seven]
    assert len(set(taken[:6])) == 2 and taken[:3] == [taken[0]] * 3  # whole subjects first
    assert sorted(pick_by_subject(subjects, 99, 1)) == list(range(15))
    backwards = list(reversed(subjects))  # the subjects' names decide, not the item order
    assert {backwards[i] for i in pick_by_subject(backwards, 6, [0, 17])} == set(taken[:6])


def test_check_disjoint_subjects_names_one_shared_subject():
    check_disjoint_subjects(["a", "b"], ["c"], "--test X:", "the pool", "fix it")
    with pytest.raises(
        UserInputError, match=r"^--test X: shares 2 subject\(s\) with the pool \(e.g. a\); fix it$"
    ):
        check_disjoint_subjects(["a", "b", "c"], ["b", "a", "d"], "--test X:", "the pool", "fix it")
