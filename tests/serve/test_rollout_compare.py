"""Rollout routing (weights, sticky keys, shadow, promote, rollback) and the statistics of `vitkit compare`,
against independent references (scipy's exact binomial test and normal distribution, hand-counted logs)."""

from __future__ import annotations

import math

import pytest
from scipy import stats

from vitkit.serve.compare import binomial_two_sided, compare, mcnemar, two_proportions
from vitkit.serve.inputs import InputError
from vitkit.serve.rollout import Rollout, promote, rollback, route, updated


def test_candidate_share_over_1000_keys_is_its_weight_within_a_binomial_bound():
    policy = Rollout("1.0.0", candidate="1.1.0", weight=0.2)
    chosen = [route(policy, "shapes", f"user-{i}").answer for i in range(1000)]
    share = chosen.count("1.1.0")
    assert abs(share - 200) <= 4 * math.sqrt(1000 * 0.2 * 0.8)  # 4 sigma: fails by chance once in 15,000 runs
    assert all(route(policy, "shapes", "user-7").answer == chosen[7] for _ in range(20))  # sticky
    assert all(route(policy, "shapes", f"user-{i}").fallback == "1.0.0" for i in range(1000) if chosen[i] == "1.1.0")


def test_shadow_answers_with_stable_and_computes_the_candidate():
    policy = Rollout("1.0.0", candidate="1.1.0", weight=1.0, shadow=True)
    routes = [route(policy, "shapes", f"k{i}") for i in range(50)]
    assert {(r.answer, r.shadow) for r in routes} == {("1.0.0", "1.1.0")}


def test_promote_and_rollback_keep_a_history():
    policy = updated(Rollout("1.0.0"), {"candidate": "1.1.0", "weight": 0.5}, ["1.0.0", "1.1.0"])
    promoted = promote(policy)
    assert (promoted.stable, promoted.candidate, promoted.history) == ("1.1.0", None, ["1.0.0"])
    assert rollback(promoted) == Rollout("1.0.0")
    with pytest.raises(InputError, match="no earlier stable version"):
        rollback(Rollout("1.0.0"))
    with pytest.raises(InputError, match=r"no version '2\.0'"):
        updated(Rollout("1.0.0"), {"candidate": "2.0"}, ["1.0.0"])
    with pytest.raises(InputError, match="weight must be"):
        updated(Rollout("1.0.0"), {"weight": 1.5}, ["1.0.0"])


@pytest.mark.parametrize(("k", "n"), [(2, 14), (0, 5), (7, 14), (30, 100)])
def test_exact_binomial_p_values_equal_scipys(k: int, n: int):
    assert binomial_two_sided(k, n) == pytest.approx(stats.binomtest(k, n, 0.5).pvalue, rel=1e-12)


def test_two_proportion_test_equals_its_textbook_value():
    # 80/100 against 90/100: pooled p = 0.85, se = sqrt(0.85 * 0.15 * 2 / 100), z = 0.1 / se
    z = 0.1 / math.sqrt(0.85 * 0.15 * 0.02)
    assert two_proportions(80, 100, 90, 100) == pytest.approx(2 * stats.norm.sf(z), rel=1e-9)


def log(pairs: list[tuple[str, str, str]], labels: dict[str, str], roles=("answer", "shadow")) -> list[dict]:
    """(request id, class of version A, class of version B) predictions and feedback labels as log records."""
    records = []
    for request_id, a, b in pairs:
        records.append(
            {"kind": "prediction", "request_id": request_id, "version": "A", "role": roles[0], "top": [[a, 0.8]]}
        )
        records.append(
            {"kind": "prediction", "request_id": request_id, "version": "B", "role": roles[1], "top": [[b, 0.6]]}
        )
    records += [{"kind": "feedback", "request_id": i, "label": label} for i, label in labels.items()]
    return records


def test_compare_on_a_shadow_log_uses_mcnemar_on_the_discordant_images():
    # 20 images labelled "cat": A right on 6, B right on 18; A-only right 1, B-only right 13
    pairs = [(f"r{i}", "cat" if i < 6 else "dog", "cat" if i != 0 and i < 19 else "dog") for i in range(20)]
    result = compare(log(pairs, {f"r{i}": "cat" for i in range(20)}), "A", "B")
    assert result.paired and result.test.startswith("McNemar")
    assert (result.a_value, result.b_value) == (6 / 20, 18 / 20)
    assert result.p_value == pytest.approx(stats.binomtest(1, 14, 0.5).pvalue)
    assert result.verdict.startswith("better")
    assert mcnemar([True, False], [False, True]) == 1.0


def test_compare_without_labels_reports_agreement_and_says_accuracy_is_unknown():
    pairs = [(f"r{i}", "cat", "cat" if i % 4 else "dog") for i in range(40)]
    result = compare(log(pairs, {}), "A", "B")
    assert not result.labelled and result.agreement == 30 / 40
    assert result.verdict.startswith("no labels") and "POST /feedback" in result.verdict
    with pytest.raises(ValueError, match=r"no prediction of version C \(its versions: A, B\)"):
        compare(log(pairs, {}), "A", "C")


def test_a_multi_label_answer_is_right_only_when_all_its_findings_are():
    # 4 images; truth per image, and the findings of A and B (A names one finding too many on image 1)
    truth = [["Effusion"], ["Mass"], [], ["Effusion", "Nodule"]]
    a = [["Effusion"], ["Mass", "Nodule"], [], ["Nodule", "Effusion"]]
    b = [["Effusion"], ["Mass"], ["Mass"], ["Effusion"]]
    records = []
    for i in range(4):
        for version, found in (("A", a[i]), ("B", b[i])):
            top = [["Effusion", 0.7]]
            records.append(
                {"kind": "prediction", "request_id": f"r{i}", "version": version, "top": top, "findings": found}
            )
        records.append({"kind": "feedback", "request_id": f"r{i}", "labels": truth[i]})
    result = compare(records, "A", "B")
    # A right on images 0, 2, 3 (order of findings does not matter); B right on 0, 1
    assert (result.a_value, result.b_value) == (3 / 4, 2 / 4)
    assert result.measure == "exact-match accuracy" and "exact-match accuracy 50.00% against 75.00%" in result.verdict
    assert result.p_value == pytest.approx(stats.binomtest(1, 3, 0.5).pvalue)  # A-only right 2, B-only right 1
    assert result.agreement == 1 / 4  # the same findings only on image 0
