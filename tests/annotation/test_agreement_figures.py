"""Agreement and labeller quality through the database and the API: hand-computed figures on a
small campaign, the same numbers as the pure module, and the outlier labeller flagged."""

from __future__ import annotations

import pytest

from annotation import agreement_figures, exports
from annotation.agreement import Bootstrap, agreement_report
from annotation.pairs import FAIL
from tests.conftest import client_for
from tests.factories import CampaignFactory
from tests.helpers.campaigns import SMALL, outlier_plans, ranked_campaign

pytestmark = pytest.mark.django_db

FAST = Bootstrap(resamples=200, seed=3)


@pytest.fixture
def small(admin_user):
    campaign, ids, users = ranked_campaign(
        SMALL, completions=3, admin=admin_user, seconds={"alice": 20_000, "bob": 40_000}
    )
    return campaign, ids, users


def agreement_of(campaign, **params):
    query = {"resamples": 200, "seed": 3, **params}
    response = client_for(campaign.created_by).get(
        f"/api/campaigns/{campaign.pk}/agreement/", query
    )
    assert response.status_code == 200, response.content
    return response.json()


def test_api_figures_match_the_hand_computed_values(small):
    campaign, _, _ = small
    body = agreement_of(campaign)
    assert (body["rankings"], body["tasks"], body["labellers"]) == (4, 2, 2)
    assert body["tasks_with_overlap"] == 2
    assert body["fail_policy"] == "rank_last"
    pairwise = {f["form"]: f for f in body["pairwise_agreement"]}
    # strict: 2 of 3 on task 1, 2 of 2 on task 2 ((d,e) is left out: alice tied it) -> 4 / 5
    assert pairwise["strict"]["value"] == pytest.approx(4 / 5)
    assert (pairwise["strict"]["n"], pairwise["strict"]["chance"]) == (5, 0.5)
    # three-way: 2 of 3 on each task -> 4 / 6; tie-half: the tie counts 1/2 -> 4.5 / 6
    assert pairwise["three_way"]["value"] == pytest.approx(4 / 6)
    assert (pairwise["three_way"]["n"], pairwise["three_way"]["chance"]) == (
        6,
        pytest.approx(1 / 3),
    )
    assert pairwise["tie_half"]["value"] == pytest.approx(4.5 / 6)
    for figure in body["pairwise_agreement"]:
        assert (
            figure["form"] in figure["label"] or figure["form"].replace("_", "-") in figure["label"]
        )
        assert "chance" in figure["label"]
    # Kendall's W: task 1 rank sums (2, 5, 5), S = 6, W = 12*6 / (4 * 24) = 0.75;
    # task 2 mid-ranks alice (1.5, 1.5, 3), bob (1, 2, 3): S = 6.5, one tie of 2 in one ranking,
    # W = 12*6.5 / (4*24 - 2*6) = 78 / 84; the mean of the two
    assert body["kendall_w"]["value"] == pytest.approx((0.75 + 78 / 84) / 2)
    assert body["kendall_w"]["n"] == 2
    # Fleiss' kappa on the 6 (task, pair) units of 2 answers: 4 agree -> P_o = 4/6; category
    # shares first/tie/second = 5/6, 1/12, 1/12 -> P_e = 102/144; kappa = -1/7
    assert body["fleiss_kappa"]["value"] == pytest.approx(-1 / 7)
    assert body["fleiss_kappa"]["n"] == 6
    levels = {f["key"]: f["level"] for f in body["krippendorff_alpha"]}
    assert levels == {
        "alpha.ranks": "ordinal",
        "alpha.pair_preferences": "nominal",
        "alpha.fail_flags": "nominal",
    }
    for figure in [*body["pairwise_agreement"], *body["krippendorff_alpha"]]:
        assert {"value", "n", "n_of", "ci_low", "ci_high"} <= figure.keys()


def test_api_figures_are_the_pure_module_figures(small):
    campaign, _, _ = small
    body = agreement_of(campaign)
    rows = exports.ranking_rows(campaign_ids=[campaign.pk])
    report = agreement_report(exports.ranking_records(rows), bootstrap=FAST)

    def same(figure, estimate):
        assert figure["value"] == pytest.approx(estimate.value)
        assert figure["n"] == estimate.n
        assert figure["ci_low"] == (
            None if estimate.ci_low is None else pytest.approx(estimate.ci_low)
        )
        assert figure["ci_high"] == (
            None if estimate.ci_high is None else pytest.approx(estimate.ci_high)
        )

    for figure, pure in zip(body["pairwise_agreement"], report.pairwise, strict=True):
        assert (figure["form"], figure["chance"]) == (pure.form, pure.chance)
        same(figure, pure.estimate)
    alpha = {f["key"]: f for f in body["krippendorff_alpha"]}
    same(alpha["alpha.ranks"], report.alpha_ranks)
    same(alpha["alpha.pair_preferences"], report.alpha_pairs)
    same(alpha["alpha.fail_flags"], report.alpha_fail)
    same(body["kendall_w"], report.kendall_w)
    same(body["fleiss_kappa"], report.fleiss_kappa)
    # two tasks: the bootstrap has something to resample
    assert body["pairwise_agreement"][0]["ci_low"] is not None


def test_per_task_figures_are_paged(small):
    campaign, _, _ = small
    body = agreement_of(campaign, tasks=1, page_size=1)
    assert "per_task" in body and body["per_task"]["count"] == 2
    (first,) = body["per_task"]["results"]
    assert first["rankings"] == 2
    strict = {f["form"]: f for f in first["pairwise_agreement"]}["strict"]
    assert (strict["value"], strict["n"], strict["ci_low"]) == (pytest.approx(2 / 3), 3, None)
    assert first["kendall_w"]["value"] == pytest.approx(0.75)
    assert first["kendall_w"]["n"] == 2
    second = agreement_of(campaign, tasks=1, page_size=1, page=2)["per_task"]["results"][0]
    assert second["kendall_w"]["value"] == pytest.approx(78 / 84)
    three_way = {f["form"]: f for f in second["pairwise_agreement"]}["three_way"]
    assert (three_way["value"], three_way["n"]) == (pytest.approx(2 / 3), 3)
    assert agreement_of(campaign, tasks=1, page=3)["per_task"]["results"] == []
    assert "per_task" not in agreement_of(campaign)


def test_labeller_table_habits(small):
    campaign, _, users = small
    response = client_for(campaign.created_by).get(
        f"/api/campaigns/{campaign.pk}/labellers/", {"resamples": 100}
    )
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["flag_rule"]["min_tasks"] == 10
    rows = {row["username"]: row for row in body["labellers"]}
    assert rows["alice"]["labeller"] == users["alice"].pk
    assert (rows["alice"]["tasks"], rows["alice"]["tasks_with_overlap"]) == (2, 2)
    assert rows["alice"]["fail_rate"] == 0.0
    assert rows["alice"]["tie_rate"] == pytest.approx(1 / 6)  # (d,e) of her 6 ranked pairs
    assert rows["bob"]["tie_rate"] == 0.0
    assert rows["alice"]["median_seconds"] == 20.0 and rows["bob"]["median_seconds"] == 40.0
    # against the other's ranking: alice scores her 5 strict pairs, 4 agree -> 0.8
    assert rows["alice"]["agreement"]["value"] == pytest.approx(4 / 5)
    assert rows["alice"]["agreement"]["n"] == 5
    assert rows["alice"]["agreement"]["form"] == "strict"
    # bob: 6 strict pairs; (b,c) opposite, (d,e) alice tied -> 1/2 -> 4.5 / 6
    assert rows["bob"]["agreement"]["value"] == pytest.approx(4.5 / 6)
    assert not rows["alice"]["flagged"] and rows["alice"]["flag_reason"] is None


def test_f_rate_and_fail_policy(admin_user):
    plans = [
        {"alice": [1, 2, FAIL], "bob": [1, FAIL, FAIL]},
        {"alice": [2, 1, 3], "bob": [2, 1, 3]},
    ]
    campaign, _, _ = ranked_campaign(plans, completions=3, admin=admin_user)
    rows = {
        row.username: row for row in agreement_figures.labeller_quality_table(campaign=campaign)
    }
    assert rows["alice"].fail_rate == pytest.approx(1 / 6)
    assert rows["bob"].fail_rate == pytest.approx(2 / 6)
    ranked_last = agreement_of(campaign)
    dropped = agreement_of(campaign, fail_policy="drop")
    assert dropped["fail_policy"] == "drop"
    # rank_last: task 1 (a,b) a>b vs a>F agree, (a,c) agree, (b,c) b>F vs F=F -> strict 5 of 5;
    # drop: bob ranked only a on task 1 -> no pair compared there; task 2: 3 of 3
    assert ranked_last["pairwise_agreement"][0]["n"] == 5
    assert dropped["pairwise_agreement"][0]["n"] == 3
    alpha_fail = {f["key"]: f for f in ranked_last["krippendorff_alpha"]}["alpha.fail_flags"]
    assert alpha_fail["n"] == 6


def test_empty_campaign_reports_undefined_figures(admin_user):
    campaign = CampaignFactory(created_by=admin_user)
    body = agreement_of(campaign, tasks=1)
    assert body["rankings"] == 0
    assert body["pairwise_agreement"][0]["value"] is None
    assert body["kendall_w"]["value"] is None
    assert body["per_task"]["count"] == 0
    table = client_for(admin_user).get(f"/api/campaigns/{campaign.pk}/labellers/").json()
    assert table["labellers"] == []


def test_outlier_labeller_is_flagged_with_a_reason_through_the_api(admin_user):
    campaign, _, _ = ranked_campaign(outlier_plans(), completions=4, admin=admin_user)
    response = client_for(admin_user).get(
        f"/api/campaigns/{campaign.pk}/labellers/", {"resamples": 200}
    )
    assert response.status_code == 200
    rows = response.json()["labellers"]
    assert [row["username"] for row in rows if row["flagged"]] == ["frank"]
    assert rows[0]["username"] == "frank"  # flagged first
    frank = rows[0]
    assert "below the median" in frank["flag_reason"]
    assert frank["robust_z"] < -2.5
    assert frank["agreement"]["n"] == 12 * 6 and frank["tasks"] == 12
    assert frank["agreement"]["ci_low"] is not None
    others = [row for row in rows if row["username"] != "frank"]
    assert all(row["flag_reason"] is None for row in others)
    assert frank["agreement"]["ci_high"] < min(row["agreement"]["ci_low"] for row in others)


def test_service_layer_figures_are_plain_dataclasses(small):
    campaign, _, _ = small
    figures = agreement_figures.campaign_agreement(campaign=campaign, bootstrap=FAST)
    assert [f.form for f in figures.pairwise] == ["strict", "three_way", "tie_half"]
    assert all(f.chance is not None for f in figures.pairwise)
    assert len(figures.figures) == 3 + 3 + 2
    inputs = agreement_figures.agreement_inputs(campaign=campaign)
    count, tasks = agreement_figures.task_figures(inputs)
    assert count == 2 and [t.rankings for t in tasks] == [2, 2]
    assert tasks[0].prompt_id is not None
