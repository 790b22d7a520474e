"""Classification metrics on hand-computed cases, FU-LoRA's legacy triple included."""

from __future__ import annotations

import numpy as np
import pytest

from fusynth.classify.metrics import (
    bootstrap_intervals,
    confusion_matrix,
    fulora_acc,
    fulora_auc,
    fulora_f1,
    fulora_legacy_metrics,
    metrics_with_intervals,
    per_center,
    running_accuracies,
    standard_metrics,
)

# Six images, four classes (class 3 never occurs): predictions 0,0,0,0,1,2.
Y_TRUE = np.array([0, 0, 0, 1, 1, 2])
Y_PRED = np.array([0, 0, 0, 0, 1, 2])


def _probs(pred: np.ndarray, c: int = 4) -> np.ndarray:
    """Probabilities whose argmax is ``pred``."""
    p = np.full((len(pred), c), 0.1)
    p[np.arange(len(pred)), pred] = 0.7
    return p / p.sum(axis=1, keepdims=True)


def test_standard_metrics_by_hand():
    m = standard_metrics(Y_TRUE, _probs(Y_PRED))
    assert m["accuracy"] == pytest.approx(5 / 6)
    # recall 1, 1/2, 1 over the classes present in the truth (class 3 is not)
    assert m["balanced_accuracy"] == pytest.approx((1 + 0.5 + 1) / 3)
    f1 = [2 * 0.75 / 1.75, 2 * 0.5 / 1.5, 1.0]
    assert m["f1"][:3] == pytest.approx(f1)
    assert m["macro_f1"] == pytest.approx(np.mean(f1))  # class 3: neither true nor predicted
    assert m["precision"][:3] == pytest.approx([0.75, 1.0, 1.0])
    assert m["recall"][:3] == pytest.approx([1.0, 0.5, 1.0])
    assert m["precision"][3] is None and m["recall"][3] is None and m["f1"][3] is None
    assert m["auroc"][3] is None
    assert m["support"] == [3, 2, 1, 0] and m["predicted"] == [4, 1, 1, 0]


def test_auroc_uses_probabilities_one_vs_rest():
    p1 = np.array([0.1, 0.4, 0.35, 0.8])
    probs = np.stack([1 - p1, p1], axis=1)
    m = standard_metrics([0, 0, 1, 1], probs)
    # positives 0.35 and 0.8 against negatives 0.1 and 0.4: 3 of 4 pairs ranked right
    assert m["auroc"] == pytest.approx([0.75, 0.75])
    assert m["macro_auroc"] == pytest.approx(0.75)


def test_a_predicted_class_absent_from_the_truth_counts_against_macro_f1_only():
    y_true, y_pred = np.array([0, 0, 1, 1]), np.array([0, 2, 1, 1])
    m = standard_metrics(y_true, _probs(y_pred, 3))
    assert m["precision"][2] == 0.0 and m["recall"][2] is None
    assert m["balanced_accuracy"] == pytest.approx((0.5 + 1) / 2)
    assert m["macro_f1"] == pytest.approx((2 / 3 + 1 + 0) / 3)


def test_confusion_matrix_rows_are_true_classes():
    cm = confusion_matrix(Y_TRUE, Y_PRED, 4)
    assert cm.tolist() == [[3, 0, 0, 0], [1, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 0]]


# ----------------------------------------------------------------------------- FU-LoRA legacy


def test_running_accuracy_by_hand():
    # correct, wrong, correct, correct, wrong in loader order, batches of 2
    y_true = [0, 0, 0, 0, 0]
    y_pred = [0, 1, 0, 0, 1]
    assert running_accuracies(y_true, y_pred, 2) == pytest.approx([1 / 2, 3 / 4, 3 / 5])


def test_legacy_acc_is_the_mean_running_accuracy_of_the_loader_order():
    order = [3, 0, 1, 2, 4, 5]  # the one wrong image (index 3) comes first
    assert fulora_acc(Y_TRUE, Y_PRED, 2, order) == pytest.approx((1 / 2 + 3 / 4 + 5 / 6) / 3)
    # one batch: the running accuracy is the accuracy
    assert fulora_acc(Y_TRUE, Y_PRED, 24, order) == pytest.approx(5 / 6)


def test_legacy_auc_is_from_hard_labels():
    # per class (TPR + TNR) / 2: class 0 (1 + 2/3) / 2, class 1 (1/2 + 1) / 2, class 2 1;
    # class 3 is absent from the truth and left out
    assert fulora_auc(Y_TRUE, Y_PRED, 4) == pytest.approx(((1 + 2 / 3) / 2 + 0.75 + 1) / 3)
    # probabilities would rank differently; the legacy AUC never sees them
    assert fulora_auc([0, 0], [0, 0], 2) is None


def test_legacy_f1_is_weighted_by_predicted_labels():
    f1 = np.array([2 * 0.75 / 1.75, 2 * 0.5 / 1.5, 1.0])
    by_predictions = (f1 * [4, 1, 1]).sum() / 6
    by_truth = (f1 * [3, 2, 1]).sum() / 6
    got = fulora_f1(Y_TRUE, Y_PRED, 4)
    assert got == pytest.approx(by_predictions)
    assert got != pytest.approx(by_truth) and got != pytest.approx(f1.mean())


def test_legacy_triple_uses_a_seeded_shuffle():
    out = fulora_legacy_metrics(Y_TRUE, Y_PRED, 4, batch_size=2, seed=5)
    order = np.random.default_rng(5).permutation(6)
    assert out["ACC"] == pytest.approx(fulora_acc(Y_TRUE, Y_PRED, 2, order))
    assert out["AUC"] == pytest.approx(fulora_auc(Y_TRUE, Y_PRED, 4))
    assert out["F1"] == pytest.approx(fulora_f1(Y_TRUE, Y_PRED, 4))
    assert out["batch_size"] == 2 and out["shuffle_seed"] == 5 and "ACC" in out["definitions"]


# ----------------------------------------------------------------------------- intervals


def test_bootstrap_is_seeded_and_resamples_subjects():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 60)
    probs = rng.random((60, 3))
    subjects = [f"s{i // 3}" for i in range(60)]
    a = bootstrap_intervals(y, probs, subjects, n_boot=50, seed=1)
    b = bootstrap_intervals(y, probs, subjects, n_boot=50, seed=1)
    assert a == b
    value = standard_metrics(y, probs)["accuracy"]
    low, high = a["accuracy"]
    assert low <= value <= high and low < high
    # one subject: every resample is the whole set
    one = bootstrap_intervals(y, probs, ["p"] * 60, n_boot=20, seed=1)
    assert one["accuracy"] == (pytest.approx(value), pytest.approx(value))


def test_report_and_per_center_breakdown():
    classes = ["abdomen", "brain", "femur", "thorax"]
    subjects = ["a", "a", "b", "c", "c", "d"]
    report = metrics_with_intervals(Y_TRUE, _probs(Y_PRED), subjects, classes, n_boot=30)
    assert report["n_images"] == 6 and report["n_subjects"] == 4
    assert report["overall"]["accuracy"]["value"] == pytest.approx(5 / 6)
    assert report["per_view"]["brain"]["recall"]["value"] == pytest.approx(0.5)
    assert report["per_view"]["thorax"]["support"] == 0
    centers = ["Ghana", "Ghana", "Malawi", "Malawi", "", ""]
    pc = per_center(Y_TRUE, _probs(Y_PRED), subjects, centers, n_boot=0)
    assert list(pc) == ["Ghana", "Malawi", "unknown"]
    assert pc["Malawi"]["accuracy"]["value"] == pytest.approx(0.5)
    assert pc["Ghana"]["n_images"] == 2 and pc["Ghana"]["accuracy"]["ci_low"] is None
