"""guard.score_trees: gradient-boosted trees scored with numpy, on closed-form trees whose every
score and contribution is known by hand, and its loading through guard.score.load."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

from guard import score
from guard.errors import ModelError
from guard.score_trees import TreeCalibration, from_lightgbm

# Two stumps-and-a-bit in LightGBM's dump_model() shape: features a (index 0) and b (index 1).
DUMP = {"tree_info": [
    {"tree_structure": {"split_index": 0, "split_feature": 0, "threshold": 1.0, "decision_type": "<=",
                        "internal_value": 0.1,
                        "left_child": {"leaf_index": 0, "leaf_value": -1.0},
                        "right_child": {"split_index": 1, "split_feature": 1, "threshold": 0.5,
                                        "decision_type": "<=", "internal_value": 0.8,
                                        "left_child": {"leaf_index": 1, "leaf_value": 0.5},
                                        "right_child": {"leaf_index": 2, "leaf_value": 2.0}}}},
    {"tree_structure": {"split_index": 0, "split_feature": 1, "threshold": 3.0, "decision_type": "<=",
                        "internal_value": -0.2,
                        "left_child": {"leaf_index": 0, "leaf_value": -0.5},
                        "right_child": {"leaf_index": 1, "leaf_value": 0.7}}},
]}
THRESHOLDS = {"flag": 0.6, "suppress": 0.9}


@pytest.fixture
def cal() -> TreeCalibration:
    return from_lightgbm("tiny.en", DUMP, ["a", "b"], np.array([0.0, 10.0]), THRESHOLDS, {"note": "hand-made"})


def sigmoid(v: float) -> float:
    return 1 / (1 + math.exp(-v))


@pytest.mark.parametrize("row, leaves", [
    ({"a": 0.0, "b": 0.0}, (-1.0, -0.5)),
    ({"a": 1.0, "b": 9.0}, (-1.0, 0.7)),     # a <= 1.0 goes left (LightGBM's rule)
    ({"a": 2.0, "b": 0.5}, (0.5, -0.5)),
    ({"a": 2.0, "b": 4.0}, (2.0, 0.7)),
    ({"a": 2.0}, (2.0, 0.7)),                # missing b takes its fill (10.0)
    ({"a": 2.0, "b": float("nan")}, (2.0, 0.7)),
])
def test_scores_are_the_sum_of_the_leaves(cal, row, leaves):
    assert cal.logits([row])[0] == pytest.approx(sum(leaves))
    assert cal.score([row])[0] == pytest.approx(sigmoid(sum(leaves)))


def test_contributions_are_exact_and_credit_the_split_features(cal):
    rows = [{"a": 0.0, "b": 0.0}, {"a": 2.0, "b": 4.0}, {"a": 2.0, "b": 0.2}]
    contrib, bias = cal.contributions(rows)
    assert bias == pytest.approx(0.1 - 0.2)  # the roots' values
    np.testing.assert_allclose(contrib.sum(axis=1) + bias, cal.logits(rows), atol=1e-12)
    # row 2: tree 1 root -> right (+0.7 on a) -> right (+1.2 on b); tree 2 root -> right (+0.9 on b)
    np.testing.assert_allclose(contrib[1], [0.7, 1.2 + 0.9])
    # row 1: tree 1 root -> left (-1.1 on a); tree 2 -> left (-0.3 on b)
    np.testing.assert_allclose(contrib[0], [-1.1, -0.3])
    reasons = cal.reasons(rows[1])
    assert [r.feature for r in reasons] == ["b", "a"] and reasons[0].value == 4.0
    assert cal.reasons(rows[0]) == []  # nothing pushed it up


def test_round_trip_through_the_loader(cal, tmp_path):
    path = tmp_path / "trees.json"
    path.write_text(json.dumps(cal.to_json()))
    loaded = score.load("tiny.en", path)
    assert isinstance(loaded, TreeCalibration) and loaded.thresholds == THRESHOLDS
    rows = [{"a": x, "b": y} for x in (0.0, 1.5, 3.0) for y in (0.0, 1.0, 5.0)]
    np.testing.assert_array_equal(loaded.score(rows), cal.score(rows))
    assert loaded.uses("a") and not loaded.uses("encoder.")
    assert loaded.score([]).shape == (0,)


@pytest.mark.parametrize("damage, message", [
    (lambda d: d.update(left=d["left"][:-1]), "differ in length"),
    (lambda d: d.update(fill=[0.0]), "differ in length"),
    (lambda d: d.update(roots=[99]), "outside its tree"),
    (lambda d: d["feature"].__setitem__(0, 7), "outside its tree"),
    (lambda d: d["left"].__setitem__(0, 0), "outside its tree"),  # a cycle
    (lambda d: d.pop("value"), "unreadable"),
])
def test_a_damaged_file_fails_clearly(cal, tmp_path, damage, message):
    data = cal.to_json()
    damage(data)
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(data))
    with pytest.raises(ModelError, match=message):
        score.load("tiny.en", path)


def test_only_numeric_splits_are_accepted():
    dump = json.loads(json.dumps(DUMP))
    dump["tree_info"][1]["tree_structure"]["decision_type"] = "=="
    with pytest.raises(ModelError, match="numeric"):
        from_lightgbm("tiny.en", dump, ["a", "b"], np.zeros(2), THRESHOLDS)


def test_the_shipped_calibrations_load_and_explain_themselves():
    for model in ("tiny.en", "base"):
        cal = score.load(model)
        row = {f: 0.5 for f in cal.features}
        s = cal.score([row])[0]
        assert 0.0 <= s <= 1.0
        if isinstance(cal, TreeCalibration):
            contrib, bias = cal.contributions([row])
            assert contrib.sum() + bias == pytest.approx(cal.logits([row])[0])
