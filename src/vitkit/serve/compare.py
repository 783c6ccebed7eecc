"""`vitkit compare LOG --a V1 --b V2`: is the candidate better than the stable version, from a prediction log?

With true labels (POST /feedback) the question is accuracy. When both versions answered the same images (shadow
mode) the test is McNemar's exact test on the images only one of them got right; when they answered different
requests (A/B) it is a two-proportion z-test. Without labels only agreement and confidence can be compared: a sign
test on paired confidences, or a z-test on the mean confidences of unpaired answers.

A multi-label model's answer is the set of findings at its thresholds, and it is right on an image when that set is
exactly the true one (POST /feedback with "labels"): exact-match accuracy, which the same tests compare.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

ALPHA = 0.05


@dataclass
class Comparison:
    a: str
    b: str
    labelled: bool
    paired: bool
    n_a: int
    n_b: int
    a_value: float  # accuracy with labels, else mean confidence
    b_value: float
    p_value: float
    test: str
    agreement: float | None  # share of paired images with the same top class (multi-label: the same findings)
    verdict: str
    multilabel: bool = False  # accuracy is then exact-match accuracy: all of an image's findings right

    @property
    def measure(self) -> str:
        if not self.labelled:
            return "mean confidence"
        return "exact-match accuracy" if self.multilabel else "accuracy"


def normal_two_sided(z: float) -> float:
    return math.erfc(abs(z) / math.sqrt(2))


def binomial_two_sided(k: int, n: int) -> float:
    """Exact two-sided p-value of k successes in n fair trials (the smaller tail, doubled, at most 1)."""
    if n == 0:
        return 1.0
    low = min(k, n - k)
    tail = sum(math.comb(n, i) for i in range(low + 1)) / 2**n
    return min(1.0, 2 * tail)


def mcnemar(a_right: list[bool], b_right: list[bool]) -> float:
    only_a = sum(x and not y for x, y in zip(a_right, b_right, strict=True))
    only_b = sum(y and not x for x, y in zip(a_right, b_right, strict=True))
    return binomial_two_sided(only_a, only_a + only_b)


def two_proportions(hits_a: int, n_a: int, hits_b: int, n_b: int) -> float:
    pooled = (hits_a + hits_b) / (n_a + n_b)
    se = math.sqrt(pooled * (1 - pooled) * (1 / n_a + 1 / n_b))
    return 1.0 if se == 0 else normal_two_sided((hits_b / n_b - hits_a / n_a) / se)


def mean_difference(xs: list[float], ys: list[float]) -> float:
    """Two-sided p-value of a difference in means (Welch's statistic, normal approximation)."""
    if len(xs) < 2 or len(ys) < 2:
        return 1.0
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    vx = sum((x - mx) ** 2 for x in xs) / (len(xs) - 1)
    vy = sum((y - my) ** 2 for y in ys) / (len(ys) - 1)
    se = math.sqrt(vx / len(xs) + vy / len(ys))
    return 1.0 if se == 0 else normal_two_sided((my - mx) / se)


Label = str | tuple[str, ...]  # a class, or a multi-label model's findings (sorted)


def _answers(records: list[dict[str, Any]], model: str | None, version: str) -> dict[str, tuple[Label, float]]:
    """request id -> (top class or findings, top probability) for one version's answers and shadow predictions."""
    return {
        r["request_id"]: (_answer(r), float(r["top"][0][1]))
        for r in records
        if r.get("kind") == "prediction" and r.get("version") == version and model in (None, r.get("model"))
    }


def _answer(prediction: dict[str, Any]) -> Label:
    return tuple(sorted(prediction["findings"])) if "findings" in prediction else prediction["top"][0][0]


def _truth(feedback: dict[str, Any]) -> Label:
    return tuple(sorted(feedback["labels"])) if "labels" in feedback else feedback["label"]


def compare(records: list[dict[str, Any]], a: str, b: str, model: str | None = None) -> Comparison:
    answers_a, answers_b = _answers(records, model, a), _answers(records, model, b)
    if not answers_a or not answers_b:
        missing = a if not answers_a else b
        held = sorted({str(r.get("version")) for r in records if r.get("kind") == "prediction"})
        versions = ", ".join(held) or "none"
        raise ValueError(f"the log holds no prediction of version {missing} (its versions: {versions}).")
    labels = {r["request_id"]: _truth(r) for r in records if r.get("kind") == "feedback"}
    multilabel = any(isinstance(answer, tuple) for answer, _ in [*answers_a.values(), *answers_b.values()])
    shared = sorted(set(answers_a) & set(answers_b))
    agreement = sum(answers_a[i][0] == answers_b[i][0] for i in shared) / len(shared) if shared else None
    labelled_a = [i for i in answers_a if i in labels]
    labelled_b = [i for i in answers_b if i in labels]
    if labelled_a and labelled_b:
        paired = [i for i in shared if i in labels]
        if paired:
            right_a = [answers_a[i][0] == labels[i] for i in paired]
            right_b = [answers_b[i][0] == labels[i] for i in paired]
            p, test, n_a, n_b = mcnemar(right_a, right_b), "McNemar exact (paired)", len(paired), len(paired)
            value_a, value_b = sum(right_a) / n_a, sum(right_b) / n_b
        else:
            hits_a = sum(answers_a[i][0] == labels[i] for i in labelled_a)
            hits_b = sum(answers_b[i][0] == labels[i] for i in labelled_b)
            n_a, n_b = len(labelled_a), len(labelled_b)
            p, test = two_proportions(hits_a, n_a, hits_b, n_b), "two-proportion z-test"
            value_a, value_b = hits_a / n_a, hits_b / n_b
        verdict = _verdict(value_a, value_b, p, "exact-match accuracy" if multilabel else "accuracy")
        return Comparison(a, b, True, bool(paired), n_a, n_b, value_a, value_b, p, test, agreement, verdict, multilabel)
    if shared:
        conf_a, conf_b = [answers_a[i][1] for i in shared], [answers_b[i][1] for i in shared]
        higher = sum(y > x for x, y in zip(conf_a, conf_b, strict=True))
        lower = sum(y < x for x, y in zip(conf_a, conf_b, strict=True))
        p, test = binomial_two_sided(higher, higher + lower), "sign test on confidence (paired)"
        n_a = n_b = len(shared)
    else:
        conf_a, conf_b = [v[1] for v in answers_a.values()], [v[1] for v in answers_b.values()]
        p, test, n_a, n_b = mean_difference(conf_a, conf_b), "z-test on mean confidence", len(conf_a), len(conf_b)
    value_a, value_b = sum(conf_a) / len(conf_a), sum(conf_b) / len(conf_b)
    verdict = (
        "no labels: accuracy cannot be judged; send true labels to POST /feedback. "
        + (f"{b} agrees with {a} on {agreement:.1%} of shared images; " if agreement is not None else "")
        + f"its mean confidence is {value_b:.3f} against {value_a:.3f} (p = {p:.3g})."
    )
    return Comparison(a, b, False, bool(shared), n_a, n_b, value_a, value_b, p, test, agreement, verdict, multilabel)


def _verdict(a: float, b: float, p: float, measure: str) -> str:
    if p < ALPHA:
        return f"{'better' if b > a else 'worse'}: {measure} {b:.2%} against {a:.2%} (p = {p:.3g} < {ALPHA})."
    return f"no significant difference: {measure} {b:.2%} against {a:.2%} (p = {p:.3g}); collect more labels."
