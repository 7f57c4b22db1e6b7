"""mIoU, per-class IoU and pixel accuracy against a confusion matrix built another way."""
import numpy as np
import pytest
import torch

from probe.heads.dense.metrics import bootstrap_miou, image_stats, segmentation_metrics

IGNORE = 255


def reference(pred, true, k, ignore):
    """A K x K confusion matrix by np.add.at over the labelled pixels of the whole split,
    then mmseg's arithmetic: IoU = diag / (row + column - diag), mean over the classes
    with a non-zero union, aAcc = trace / labelled pixels."""
    valid = true != ignore
    cm = np.zeros((k, k), np.int64)
    np.add.at(cm, (true[valid].astype(int), pred[valid].astype(int)), 1)
    diag = np.diag(cm).astype(float)
    union = cm.sum(0) + cm.sum(1) - diag
    iou = np.full(k, np.nan)
    iou[union > 0] = diag[union > 0] / union[union > 0]
    return np.nanmean(iou), iou, diag.sum() / valid.sum()


def _case(seed=0, n=7, k=6, size=9):
    rng = np.random.default_rng(seed)
    true = rng.integers(0, k - 2, (n, size, size))     # classes k-2, k-1 never labelled
    true[rng.random(true.shape) < 0.2] = IGNORE          # ignored pixels
    pred = np.where(rng.random(true.shape) < 0.6, true, rng.integers(0, k - 1, true.shape))
    pred[true == IGNORE] = rng.integers(0, k - 1, (true == IGNORE).sum())  # never counted
    pred = np.where(pred == IGNORE, 0, pred)
    return pred.astype(np.int64), true.astype(np.int64), k


def test_miou_matches_a_confusion_matrix_built_another_way():
    pred, true, k = _case()
    stats = image_stats(torch.from_numpy(pred), torch.from_numpy(true), k, IGNORE).numpy()
    m = segmentation_metrics(stats, [str(c) for c in range(k)], resamples=0)
    miou, iou, acc = reference(pred, true, k, IGNORE)
    assert m["miou"] == pytest.approx(miou, rel=1e-12)
    assert m["pixel_accuracy"] == pytest.approx(acc, rel=1e-12)
    for c in range(k):
        got = m["per_class_iou"][str(c)]
        assert (got is None) == np.isnan(iou[c])
        if got is not None:
            assert got == pytest.approx(iou[c], rel=1e-12)
    # class k-2 is predicted but never labelled: IoU 0, and it counts in the mean;
    # class k-1 is neither predicted nor labelled: left out of the mean
    assert m["per_class_iou"][str(k - 2)] == 0.0
    assert m["per_class_iou"][str(k - 1)] is None
    assert m["classes_in_mean"] == k - 1


def test_one_matrix_over_the_split_not_a_mean_over_images():
    # image 0: a large object predicted perfectly; image 1: a tiny one missed.  The
    # split's IoU weighs pixels, a per-image mean would weigh images equally.
    true = np.zeros((2, 10, 10), np.int64)
    true[0, :8] = 1
    true[1, 0, 0] = 1
    pred = true.copy()
    pred[1, 0, 0] = 0
    stats = image_stats(torch.from_numpy(pred), torch.from_numpy(true), 2, IGNORE).numpy()
    m = segmentation_metrics(stats, ["bg", "obj"], resamples=0)
    assert m["per_class_iou"]["obj"] == pytest.approx(80 / 81)
    assert m["miou"] == pytest.approx(reference(pred, true, 2, IGNORE)[0])


def test_sklearn_jaccard_agrees_on_the_classes_present():
    from sklearn.metrics import jaccard_score

    pred, true, k = _case(seed=3)
    stats = image_stats(torch.from_numpy(pred), torch.from_numpy(true), k, IGNORE).numpy()
    m = segmentation_metrics(stats, [str(c) for c in range(k)], resamples=0)
    valid = true != IGNORE
    present = [c for c in range(k) if m["per_class_iou"][str(c)] is not None]
    sk = jaccard_score(true[valid], pred[valid], labels=present, average=None)
    np.testing.assert_allclose([m["per_class_iou"][str(c)] for c in present], sk, rtol=1e-12)


def test_bootstrap_resamples_images():
    pred, true, k = _case(seed=1, n=12)
    stats = image_stats(torch.from_numpy(pred), torch.from_numpy(true), k, IGNORE).numpy()
    b = bootstrap_miou(stats, resamples=200, seed=5)
    # the same draws by hand: resample the images, recount the whole confusion matrix
    rng = np.random.default_rng(5)
    values = []
    for _ in range(200):
        idx = rng.integers(0, len(stats), len(stats))
        values.append(reference(pred[idx], true[idx], k, IGNORE)[0])
    assert b["miou_ci"] == pytest.approx(list(np.percentile(values, [2.5, 97.5])), rel=1e-9)
    point = segmentation_metrics(stats, [str(c) for c in range(k)], resamples=0)["miou"]
    assert b["miou_ci"][0] <= point <= b["miou_ci"][1]
