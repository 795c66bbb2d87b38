"""The export_pairs and agreement_report management commands print what the API serves."""

from __future__ import annotations

import json
from io import StringIO

import pytest
from django.core.management import CommandError, call_command

from tests.conftest import client_for
from tests.helpers.campaigns import SMALL, TIES_AND_FAILS, outlier_plans, ranked_campaign

pytestmark = pytest.mark.django_db


def run(*args) -> tuple[str, str]:
    out, err = StringIO(), StringIO()
    call_command(*args, stdout=out, stderr=err)
    return out.getvalue(), err.getvalue()


def test_export_pairs_to_stdout_is_the_api_export(admin_user):
    campaign, _, _ = ranked_campaign(TIES_AND_FAILS, completions=4, admin=admin_user)
    out, err = run("export_pairs", str(campaign.pk), "--ties", "--fail-policy", "rank_last")
    response = client_for(admin_user).get(
        f"/api/campaigns/{campaign.pk}/pairs/", {"ties": 1, "fail_policy": "rank_last"}
    )
    assert out == b"".join(response.streaming_content).decode()
    assert len(out.splitlines()) == 35
    assert "wrote 35 pairs" in err and "6 rankings" in err


def test_export_pairs_to_a_file_aggregated(admin_user, tmp_path):
    campaign, _, _ = ranked_campaign(TIES_AND_FAILS, completions=4, admin=admin_user)
    path = tmp_path / "pairs.jsonl"
    out, err = run("export_pairs", str(campaign.pk), "--aggregate", "majority", "-o", str(path))
    assert out == ""
    records = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    assert records and all(r["aggregate"] == "majority" for r in records)
    assert {"margin", "votes_for", "voters", "labellers"} <= set(records[0])
    assert f"wrote {len(records)} pairs (majority" in err and str(path) in err


def test_export_pairs_refuses_an_unknown_campaign(db):
    with pytest.raises(CommandError, match="no campaign with id 999999"):
        run("export_pairs", "999999")


def test_agreement_report_prints_each_figure_with_n_ci_and_form(admin_user):
    campaign, _, _ = ranked_campaign(SMALL, completions=3, admin=admin_user)
    out, _ = run("agreement_report", str(campaign.pk), "--resamples", "200", "--tasks", "2")
    assert "4 rankings, 2 tasks (2 ranked by two or more labellers), 2 labellers" in out
    strict = next(line for line in out.splitlines() if "pairwise agreement (strict form" in line)
    assert "chance 50%" in strict and ": 0.800" in strict and "n=5 " in strict
    assert "95% CI [" in strict
    three_way = next(line for line in out.splitlines() if "(three-way form" in line)
    assert "chance 33%" in three_way and ": 0.667" in three_way and "n=6 " in three_way
    for name in (
        "Krippendorff's alpha, ordinal, on ranks",
        "Krippendorff's alpha, nominal, on pair preferences",
        "Krippendorff's alpha, nominal, on F flags",
        "Kendall's W with tie correction, mean over tasks",
        "Fleiss' kappa on pair preferences",
    ):
        assert name in out
    kappa = next(line for line in out.splitlines() if "Fleiss' kappa" in line)
    assert ": -0.143" in kappa and "n=6 " in kappa
    assert "Per task (first 2 of 2" in out
    assert "strict 0.667 (n=3, chance 50%)" in out
    assert "Kendall's W 0.750 (n=2 labellers)" in out
    assert "alice" in out and "bob" in out and "FLAGGED" not in out


def test_agreement_report_shows_the_flagged_labeller_and_why(admin_user):
    campaign, _, _ = ranked_campaign(outlier_plans(), completions=4, admin=admin_user)
    out, _ = run("agreement_report", str(campaign.pk), "--resamples", "100")
    flagged = [line for line in out.splitlines() if "FLAGGED" in line]
    assert len(flagged) == 1 and "frank" in flagged[0]
    assert "frank flagged: agreement with the others' consensus" in out
    assert "below the median" in out


def test_agreement_report_refuses_an_unknown_campaign(db):
    with pytest.raises(CommandError, match="no campaign with id 999999"):
        run("agreement_report", "999999")
