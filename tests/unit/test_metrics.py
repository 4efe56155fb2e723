"""Metrics against scikit-learn and hand-made masks."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import f1_score, jaccard_score, precision_score, recall_score

from app.ml.metrics import (
    ERROR_COLOURS,
    PixelHistogram,
    building_scores,
    count_buildings,
    error_overlay,
    pixel_confusion,
    pixel_scores,
    pr_curve,
)


@pytest.fixture
def arrays() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    truth = rng.random((3, 32, 32)) > 0.7
    # Probabilities correlated with the truth, float32 like the model's output.
    prob = np.clip(0.35 * truth + 0.65 * rng.random(truth.shape), 0, 1).astype(np.float32)
    return truth, prob


@pytest.mark.parametrize("threshold", [0.3, 0.5, 0.77])
def test_pixel_scores_match_sklearn(arrays, threshold):
    truth, prob = arrays
    pred = prob >= threshold
    scores = pixel_scores(**pixel_confusion(truth, prob, threshold))
    t, p = truth.ravel(), pred.ravel()
    assert scores["precision"] == pytest.approx(precision_score(t, p))
    assert scores["recall"] == pytest.approx(recall_score(t, p))
    assert scores["f1"] == pytest.approx(f1_score(t, p))
    assert scores["iou"] == pytest.approx(jaccard_score(t, p))
    assert scores["accuracy"] == pytest.approx(np.mean(t == p))
    assert scores["empty"] is False


def test_pixel_confusion_shapes_and_types(arrays):
    truth, prob = arrays
    c = pixel_confusion(truth, prob[..., None])  # (N, H, W) vs (N, H, W, 1)
    assert set(c) == {"tp", "fp", "fn", "tn"}
    assert all(type(v) is int for v in c.values())
    assert sum(c.values()) == truth.size
    # bool predictions, 0/255 truth and a single (H, W) tile give the same counts
    single = pixel_confusion(truth[0].astype(np.uint8) * 255, prob[0] >= 0.5)
    assert single == pixel_confusion(truth[0], prob[0])


def test_empty_tile_convention():
    s = pixel_scores(0, 0, 0, 100)
    assert s["empty"] is True
    assert [s[k] for k in ("precision", "recall", "f1", "iou", "accuracy")] == [1.0] * 5
    missed = pixel_scores(0, 0, 5, 95)  # buildings, no prediction: 0, not NaN
    assert missed["empty"] is False and missed["precision"] == 0.0 and missed["recall"] == 0.0
    false_alarm = pixel_scores(0, 5, 0, 95)
    assert false_alarm["precision"] == 0.0 and false_alarm["recall"] == 0.0
    assert all(np.isfinite(v) for v in (missed | false_alarm).values())


def test_validation_messages(arrays):
    truth, prob = arrays
    with pytest.raises(
        ValueError,
        match=r"^The 'threshold' parameter must be a float in \[0, 1\]\. Got 2 instead\.$",
    ):
        pixel_confusion(truth, prob, threshold=2)
    with pytest.raises(ValueError, match="same shape"):
        pixel_confusion(truth, prob[:, :16])
    with pytest.raises(ValueError, match="probabilities in"):
        pixel_confusion(truth, prob * 3)
    with pytest.raises(ValueError, match="'tp' parameter"):
        pixel_scores(-1, 0, 0, 0)


def test_histogram_matches_direct_computation(arrays):
    truth, prob = arrays
    hist = PixelHistogram()
    for t, p in zip(truth, prob, strict=True):  # streaming, one tile at a time
        hist.update(t, p)
    assert hist.n_pixels == truth.size and hist.n_positive == int(truth.sum())
    curve = hist.curve()
    assert len(curve["threshold"]) == 101
    # On the 1/1000 grid (0 and 1 included) the histogram is exact for float32 probabilities.
    for i in (0, 17, 50, 63, 100):
        t = float(curve["threshold"][i])
        direct = pixel_confusion(truth, prob, t)
        assert {k: int(curve[k][i]) for k in direct} == direct
        assert curve["f1"][i] == pytest.approx(pixel_scores(**direct)["f1"])
    assert hist.scores(0.42) == pixel_scores(**pixel_confusion(truth, prob, 0.42))
    # Off the grid: within one bin, i.e. between the counts at the two neighbouring edges.
    t = 0.4235
    tp_off = hist.confusion(t)["tp"]
    lo, hi = pixel_confusion(truth, prob, 0.424)["tp"], pixel_confusion(truth, prob, 0.423)["tp"]
    assert lo <= tp_off <= hi
    assert lo <= pixel_confusion(truth, prob, t)["tp"] <= hi
    # Recall never increases with the threshold; the one-shot helper agrees with streaming.
    assert np.all(np.diff(curve["recall"]) <= 0)
    one_shot = pr_curve(truth, prob)
    for k in ("precision", "recall", "f1", "iou"):
        np.testing.assert_allclose(one_shot[k], curve[k])


def test_histogram_merge_and_best_threshold(arrays):
    truth, prob = arrays
    a = PixelHistogram().update(truth[:2], prob[:2])
    b = PixelHistogram().update(truth[2:], prob[2:])
    whole = PixelHistogram().update(truth, prob)
    merged = a.merge(b)
    np.testing.assert_array_equal(merged.positive, whole.positive)
    np.testing.assert_array_equal(merged.negative, whole.negative)
    best = whole.best_threshold("f1")
    curve = whole.curve()
    assert whole.scores(best)["f1"] == pytest.approx(curve["f1"].max())
    with pytest.raises(ValueError, match="'other' parameter"):
        whole.merge(PixelHistogram(10))


def test_error_overlay_colours():
    image = np.full((8, 8, 3), 100, np.uint8)
    truth = np.zeros((8, 8), bool)
    pred = np.zeros((8, 8), bool)
    truth[0, 0] = pred[0, 0] = True  # TP
    pred[1, 1] = True  # FP
    truth[2, 2] = True  # FN
    out = error_overlay(image, truth, pred, alpha=1.0)
    assert out.dtype == np.uint8 and out.shape == (8, 8, 3)
    assert tuple(out[0, 0]) == ERROR_COLOURS["tp"]
    assert tuple(out[1, 1]) == ERROR_COLOURS["fp"]
    assert tuple(out[2, 2]) == ERROR_COLOURS["fn"]
    assert tuple(out[5, 5]) == (100, 100, 100)  # TN untouched
    half = error_overlay(image[..., 0].astype(float), truth, pred.astype(np.float32), alpha=0.5)
    expected = np.rint(0.5 * 100 + 0.5 * np.array(ERROR_COLOURS["fp"]))
    np.testing.assert_array_equal(half[1, 1], expected)
    with pytest.raises(ValueError, match="'alpha' parameter"):
        error_overlay(image, truth, pred, alpha=1.5)


def _square(mask: np.ndarray, row: int, col: int, side: int) -> None:
    mask[row : row + side, col : col + side] = True


def test_building_scores_hand_made():
    truth = np.zeros((48, 48), bool)
    pred = np.zeros((48, 48), bool)
    _square(truth, 2, 2, 10)  # matched: prediction shifted by one row (IoU 0.9)
    _square(pred, 3, 2, 10)
    _square(truth, 30, 30, 10)  # missed
    _square(pred, 2, 30, 10)  # false positive
    r = building_scores(truth, pred)
    assert (r["tp"], r["fp"], r["fn"]) == (1, 1, 1)
    assert r["precision"] == r["recall"] == r["f1"] == pytest.approx(0.5)
    np.testing.assert_allclose(r["matched_ious"], [90 / 110])
    assert r["empty"] is False
    # A stricter IoU threshold turns the match into one FP and one FN.
    strict = building_scores(truth, pred, iou_threshold=0.9)
    assert (strict["tp"], strict["fp"], strict["fn"]) == (0, 2, 2)


def test_building_scores_instances_min_area_and_empty():
    instances = np.zeros((32, 32), np.int32)
    instances[2:10, 2:10] = 5  # two touching buildings as separate instances
    instances[2:10, 10:18] = 9
    pred = instances > 0  # predicted as one blob covering both: IoU 0.5 with each
    r = building_scores(None, pred, true_instances=instances, iou_threshold=0.51)
    assert (r["tp"], r["fp"], r["fn"]) == (0, 1, 2)
    r = building_scores(None, pred, pred_instances=instances, true_instances=instances)
    assert (r["tp"], r["fp"], r["fn"]) == (2, 0, 0)
    noise = np.zeros((32, 32), bool)
    noise[20:22, 20:22] = True  # 4 px < min_area: ignored on both sides
    empty = building_scores(noise, noise)
    assert empty["empty"] is True and empty["f1"] == 1.0 and empty["n_true"] == 0
    assert building_scores(noise, noise, min_area=1)["tp"] == 1


def test_building_connectivity():
    mask = np.zeros((20, 20), bool)
    _square(mask, 2, 2, 5)
    _square(mask, 7, 7, 5)  # touches the first one at a corner only
    assert building_scores(mask, mask, min_area=1)["n_true"] == 1  # 8-connectivity default
    assert building_scores(mask, mask, min_area=1, connectivity=4)["n_true"] == 2
    with pytest.raises(ValueError, match="'connectivity' parameter must be 4 or 8"):
        building_scores(mask, mask, connectivity=6)


def test_count_buildings_splits_touching_squares():
    mask = np.zeros((48, 48), bool)
    _square(mask, 4, 4, 14)
    _square(mask, 14, 14, 14)  # overlaps the first one's corner: one blob, two buildings
    n, labels = count_buildings(mask)
    assert n == 2
    assert labels.shape == mask.shape and set(np.unique(labels)) == {0, 1, 2}
    np.testing.assert_array_equal(labels > 0, mask)
    result = count_buildings(mask)
    assert result.areas.sum() == mask.sum() and len(result.areas) == 2
    assert count_buildings(mask, split_touching=False).n == 1


def test_count_buildings_keeps_elongated_and_l_shapes_whole():
    rect = np.zeros((40, 40), bool)
    rect[5:15, 2:38] = True
    assert count_buildings(rect).n == 1
    ell = np.zeros((40, 40), bool)
    ell[2:10, 2:30] = True
    ell[2:30, 2:10] = True
    assert count_buildings(ell).n == 1


def test_count_buildings_min_area_and_empty():
    mask = np.zeros((32, 32), bool)
    mask[1:3, 1:3] = True  # 4 px noise
    _square(mask, 10, 10, 8)
    assert count_buildings(mask).n == 1
    assert count_buildings(mask, min_area=1).n == 2
    n, labels = count_buildings(np.zeros((16, 16), np.float32))
    assert n == 0 and not labels.any()
    assert count_buildings(np.ones((16, 16), bool)).n == 1


def test_mask_edges_is_the_outline_of_the_mask() -> None:
    from app.ml.metrics import mask_edges

    mask = np.zeros((5, 5), bool)
    mask[1:4, 1:4] = True
    edges = mask_edges(mask)
    assert edges.sum() == 8 and not edges[2, 2] and edges[1, 1] and not edges[0, 0]
    assert not mask_edges(np.zeros((3, 3), bool)).any()
