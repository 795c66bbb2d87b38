"""The project's agreement functions against published reference values.

The cases live outside the repository, in ``shared/data/agreement_oracles.json`` next to it (see
``shared/data/README.md``); the tests skip when the file is missing. A value matches when
abs(computed - expected) <= 0.5 * 10**-decimals, as the file says. Every (case, quantity) in the
file becomes one test; quantities of metrics the project does not implement (Cohen's kappa,
Scott's pi, Gwet's AC1, ICC, ...) are skipped with the reason.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from annotation.agreement import (
    alpha_from_value_counts,
    fleiss_kappa,
    kendall_w,
    krippendorff_alpha,
    observed_agreement,
)

ORACLES = Path(__file__).resolve().parents[3] / "shared" / "data" / "agreement_oracles.json"


def load_cases() -> list[dict[str, Any]]:
    if not ORACLES.exists():
        return []
    return json.loads(ORACLES.read_text())["cases"]


CASES = {case["id"]: case for case in load_cases()}


# --------------------------------------------------------------------------------------------------
# Adapters from the file's layouts
# --------------------------------------------------------------------------------------------------


def coders_by_units(data: list[list[Any]]) -> tuple[np.ndarray, np.ndarray]:
    """A coders x units matrix of any labels (None = missing) -> (float codes with NaN, labels).

    Numbers keep their value (interval alpha needs it); other labels are coded 0, 1, ... in
    sorted order.
    """
    labels = sorted(
        {v for row in data for v in row if v is not None}, key=lambda v: (str(type(v)), v)
    )
    numeric = all(isinstance(v, int | float) for v in labels)
    code = {label: (float(label) if numeric else float(i)) for i, label in enumerate(labels)}
    matrix = np.array([[np.nan if v is None else code[v] for v in row] for row in data])
    return matrix, np.array([code[label] for label in labels])


def value_counts(matrix: np.ndarray, values: np.ndarray) -> np.ndarray:
    """(units, V) counts of each value per unit of a coders x units matrix."""
    return (matrix.T[..., None] == values[None, None, :]).sum(axis=1)


def alpha_both_ways(level: str) -> Callable[[dict[str, Any]], float | None]:
    """Alpha by the package wrapper and by the vectorised implementation; they must agree."""

    def compute(case: dict[str, Any]) -> float | None:
        matrix, values = coders_by_units(case["data"])
        by_package = krippendorff_alpha(matrix, level=level)
        vectorised = alpha_from_value_counts(
            value_counts(matrix, values), level=level, values=values
        )
        assert by_package == pytest.approx(vectorised, abs=1e-12)
        return by_package

    return compute


def alpha_missing_as_category(case: dict[str, Any]) -> float | None:
    """What alpha would be if 'missing' were a real category (the mistake the case guards)."""
    data = [["<missing>" if v is None else str(v) for v in row] for row in case["data"]]
    matrix, _ = coders_by_units(data)
    return krippendorff_alpha(matrix, level="nominal")


def fleiss_from_raters(part: str) -> Callable[[dict[str, Any]], float | None]:
    def compute(case: dict[str, Any]) -> float | None:
        matrix, values = coders_by_units(case["data"])
        result = fleiss_kappa(value_counts(matrix, values))
        assert result is not None
        return getattr(result, part)

    return compute


def fleiss_from_counts(part: str) -> Callable[[dict[str, Any]], float | None]:
    def compute(case: dict[str, Any]) -> float | None:
        result = fleiss_kappa(case["data"])
        assert result is not None
        return getattr(result, part)

    return compute


def fleiss_subject_agreement(index: int) -> Callable[[dict[str, Any]], float | None]:
    """P_i of one subject: the observed agreement of that row alone."""

    def compute(case: dict[str, Any]) -> float | None:
        result = fleiss_kappa([case["data"][index]])
        assert result is not None
        return result.p_observed

    return compute


def percent_agreement_two_coders(case: dict[str, Any]) -> float | None:
    matrix, values = coders_by_units(case["data"])
    return observed_agreement(value_counts(matrix, values))


def kendall_judges_by_objects(case: dict[str, Any]) -> float | None:
    return kendall_w(case["data"])


def kendall_subjects_by_raters(case: dict[str, Any]) -> float | None:
    # each rater's column is ranked over the subjects: judges = raters
    return kendall_w(np.asarray(case["data"], dtype=float).T)


CHECKS: dict[tuple[str, str], Callable[[dict[str, Any]], float | None]] = {
    ("kripp_wikipedia_3coders_15units", "alpha_nominal"): alpha_both_ways("nominal"),
    ("kripp_wikipedia_3coders_15units", "alpha_interval"): alpha_both_ways("interval"),
    ("kripp_nltk_dress_negative", "alpha"): alpha_both_ways("nominal"),
    ("kripp_nltk_perfect_two_units", "alpha"): alpha_both_ways("nominal"),
    ("kripp_nltk_missing_values_all_agree", "alpha"): alpha_both_ways("nominal"),
    ("kripp_nltk_missing_values_all_agree", "alpha_if_null_is_a_category"): (
        alpha_missing_as_category
    ),
    ("kripp_gwet_raw_5observers", "alpha"): alpha_both_ways("nominal"),
    ("kripp_gwet_raw_g1g2", "alpha"): alpha_both_ways("nominal"),
    ("kripp_gwet_raw_gender", "alpha"): alpha_both_ways("nominal"),
    ("kripp_gwet_raw_ben_gerry", "alpha"): alpha_both_ways("nominal"),
    ("kripp_gwet_raw_5observers", "fleiss_kappa_generalized"): fleiss_from_raters("kappa"),
    ("kripp_gwet_raw_g1g2", "fleiss_kappa_generalized"): fleiss_from_raters("kappa"),
    ("kripp_gwet_raw_gender", "fleiss_kappa_generalized"): fleiss_from_raters("kappa"),
    ("kripp_gwet_raw_ben_gerry", "fleiss_kappa_generalized"): fleiss_from_raters("kappa"),
    ("gwet_raw_4raters_other_coefficients", "fleiss_kappa_generalized"): fleiss_from_raters(
        "kappa"
    ),
    ("gwet_raw_4raters_other_coefficients", "percent_agreement_pa"): fleiss_from_raters(
        "p_observed"
    ),
    ("fleiss_wikipedia_10subjects_14raters", "kappa"): fleiss_from_counts("kappa"),
    ("fleiss_wikipedia_10subjects_14raters", "P_bar"): fleiss_from_counts("p_observed"),
    ("fleiss_wikipedia_10subjects_14raters", "P_e_bar"): fleiss_from_counts("p_expected"),
    ("fleiss_wikipedia_10subjects_14raters", "P_i_subject2"): fleiss_subject_agreement(1),
    ("fleiss_randolph_2x2", "fleiss_kappa"): fleiss_from_counts("kappa"),
    ("fleiss_randolph_2x3", "fleiss_kappa"): fleiss_from_counts("kappa"),
    ("artstein_poesio_2008_example", "A_o"): percent_agreement_two_coders,
    ("kendall_w_nag_g08daf_3x10_ties", "W_tie_corrected"): kendall_judges_by_objects,
    ("kendall_w_irr_anxiety", "W_tie_corrected"): kendall_subjects_by_raters,
}

NOT_IMPLEMENTED = (
    "not implemented in annotation.agreement (the project reports alpha, Fleiss' kappa, "
    "Kendall's W and pairwise agreement only)"
)


def quantities() -> list[Any]:
    params = []
    for case_id, case in CASES.items():
        for quantity in case["expected"]:
            params.append(pytest.param(case_id, quantity, id=f"{case_id}-{quantity}"))
    return params


pytestmark = pytest.mark.skipif(not ORACLES.exists(), reason=f"oracle file missing: {ORACLES}")


@pytest.mark.parametrize(("case_id", "quantity"), quantities())
def test_matches_reference_value(case_id: str, quantity: str):
    check = CHECKS.get((case_id, quantity))
    if check is None:
        pytest.skip(f"{quantity} of {CASES[case_id]['metric']}: {NOT_IMPLEMENTED}")
    expected = CASES[case_id]["expected"][quantity]
    computed = check(CASES[case_id])
    assert computed is not None
    tolerance = 0.5 * 10 ** -expected["decimals"]
    assert abs(computed - expected["value"]) <= tolerance, (computed, expected)


def test_every_implemented_check_names_a_case_in_the_file():
    missing = [
        key for key in CHECKS if key[0] not in CASES or key[1] not in CASES[key[0]]["expected"]
    ]
    assert missing == []


def test_alpha_is_undefined_when_expected_disagreement_is_zero():
    # The second half of nltk's test_easy3 (see kripp_nltk_perfect_two_units): only one unit is
    # pairable and both its values are 1, so D_e = 0 and alpha = 0/0. nltk says 1.0, the
    # krippendorff package nan; the project's convention is "undefined" (None).
    assert krippendorff_alpha([[1, 2], [1, math.nan]], level="nominal") is None


@pytest.mark.parametrize(("level", "expected"), [("nominal", 0.743), ("ordinal", 0.815)])
def test_krippendorff_2011_example_other_levels(level: str, expected: float):
    # The data of gwet_raw_4raters_other_coefficients is Krippendorff's (2011) "Computing
    # Krippendorff's alpha-reliability" example (4 coders x 12 units; the file notes it); the
    # paper and the doctest of the krippendorff package give nominal 0.743 and ordinal 0.815.
    compute = alpha_both_ways(level)
    computed = compute(CASES["gwet_raw_4raters_other_coefficients"])
    assert computed is not None
    assert abs(computed - expected) <= 0.5e-3
