"""Rankings in: existing rankings imported all or nothing, with line numbers, onto new or
existing tasks; unknown labellers created inactive or refused; partial rankings refused."""

from __future__ import annotations

import json

import pytest
from django.contrib.auth import get_user_model
from django.core.files.uploadedfile import SimpleUploadedFile
from django.core.management import call_command

from annotation import services
from annotation.importing import ImportFailed, parse_rankings
from annotation.models import Assignment, ImportJob, Membership, Ranking, RankingItem, Task
from tests.conftest import client_for
from tests.factories import CampaignFactory, make_tasks, task_completion_ids

LIMITS = {"completions_per_task": 2, "max_text_chars": 1000, "max_bytes": 100_000}


def jsonl(*objs) -> bytes:
    return "\n".join(o if isinstance(o, str) else json.dumps(o) for o in objs).encode()


def line(labeller="ann1", ranks=(1, 2), prompt_id="p1", **extra) -> dict:
    return {
        "prompt_id": prompt_id,
        "prompt": f"Prompt {prompt_id}",
        "completions": ["first answer", {"text": "second answer", "source": "model-b"}],
        "labeller": labeller,
        "ranks": list(ranks),
        **extra,
    }


def errors_of(data: bytes, fmt="jsonl", **overrides) -> list[tuple[int, str, str]]:
    with pytest.raises(ImportFailed) as info:
        parse_rankings(data, fmt=fmt, **{**LIMITS, **overrides})
    return [(e.line, e.field, e.message) for e in info.value.errors]


def test_parses_rankings_with_ties_fail_time_comment_and_timestamp():
    records = parse_rankings(
        jsonl(
            line(time_spent_ms=4000, comment="close call", created_at="2024-05-01T12:00:00Z"),
            line("ann2", ranks=(1, 1)),
            line("ann3", ranks=("F", 1)),
        ),
        fmt="jsonl",
        **LIMITS,
    )
    assert [r.labels for r in records] == [(1, 2), (1, 1), ("F", 1)]
    assert records[0].created_at.isoformat() == "2024-05-01T12:00:00+00:00"
    assert records[0].time_spent_ms == 4000 and records[0].comment == "close call"
    assert len({r.task_key for r in records}) == 1


@pytest.mark.parametrize(
    ("obj", "expected"),
    [
        (line(ranks=(1, None)), ("ranks[1]", "completion 2 is unranked: partial rankings")),
        (line(ranks=(1,)), ("ranks", "has 1 labels for 2 completions")),
        (line(ranks=(1, 3)), ("ranks[1]", "must be between 1 and 2")),
        (line(labeller=None), ("labeller", "is missing")),
        (line(created_at="yesterday"), ("created_at", "is not an ISO 8601 timestamp")),
        (line(time_spent_ms=-1), ("time_spent_ms", "must be an integer")),
        (line(strength=[1]), ("strength", "this campaign asks no preference strength")),
        (line(colour="red"), ("line", "unknown field(s): colour")),
        ({**line(), "completions": []}, ("completions", "a ranking needs the completions")),
    ],
)
def test_refuses_a_bad_line_naming_line_and_field(obj, expected):
    errors = errors_of(jsonl(line("ok"), obj))
    assert errors and errors[0][0] == 2
    assert errors[0][1] == expected[0] and expected[1] in errors[0][2], errors


def test_refuses_ties_and_fail_where_the_campaign_does_not_allow_them():
    assert errors_of(jsonl(line(ranks=(1, 1))), allow_ties=False)[0][2].startswith(
        "this campaign does not allow ties"
    )
    assert "does not allow F" in errors_of(jsonl(line(ranks=("F", 1))), allow_fail=False)[0][2]


def test_one_labeller_ranks_a_task_once_and_a_prompt_id_has_one_text():
    errors = errors_of(
        jsonl(line(), line(ranks=(2, 1)), {**line("ann2"), "prompt": "Another text"})
    )
    assert errors[0][:2] == (2, "labeller") and "already ranked this task" in errors[0][2]
    assert errors[1][:2] == (3, "prompt") and "another text on line 1" in errors[1][2]


def test_csv_rankings_with_rank_columns():
    data = (
        b"prompt_id,prompt,completion_1,completion_2,labeller,rank_1,rank_2,time_spent_ms\n"
        b"p1,Prompt p1,first answer,second answer,ann1,1,2,1500\n"
        b"p1,Prompt p1,first answer,second answer,ann2,F,1,\n"
    )
    records = parse_rankings(data, fmt="csv", **LIMITS)
    assert [r.labels for r in records] == [(1, 2), ("F", 1)]
    assert records[0].time_spent_ms == 1500
    partial = data.replace(b"ann2,F,1", b"ann2,F,")
    assert errors_of(partial, fmt="csv")[0][:2] == (3, "ranks[1]")


@pytest.fixture
def pair_campaign(db, admin_user):
    return CampaignFactory(completions_per_task=2, overlap=3, created_by=admin_user)


def test_import_creates_tasks_rankings_and_inactive_labellers(pair_campaign):
    result = services.campaign_import_rankings(
        campaign=pair_campaign,
        data=jsonl(
            line("ann1", created_at="2024-05-01T12:00:00+02:00", time_spent_ms=3000),
            line("ann2", ranks=(1, 1)),
            line("ann1", prompt_id="p2", ranks=("F", 1)),
        ),
        filename="r.jsonl",
    )
    assert (result.rankings, result.tasks_created, result.tasks_matched) == (3, 2, 0)
    assert sorted(result.labellers_created) == ["ann1", "ann2"]
    assert [c["external_id"] for c in result.created] == ["p1", "p2"]
    users = get_user_model().objects.filter(username__in=["ann1", "ann2"])
    assert all(not u.is_active and not u.has_usable_password() for u in users)
    assert Membership.objects.filter(campaign=pair_campaign, user__in=users).count() == 2
    task = Task.objects.get(pk=result.created[0]["task"])
    assert (task.active_count, task.submitted_count, task.target_overlap) == (2, 2, 3)
    first = Ranking.objects.get(task=task, labeller__username="ann1")
    assert first.created_at.isoformat() == "2024-05-01T10:00:00+00:00"
    assert first.time_spent_ms == 3000 and first.assignment.status == "submitted"
    labels = {i.completion.text: i.label for i in first.items.select_related("completion")}
    assert labels == {"first answer": 1, "second answer": 2}
    failed = RankingItem.objects.get(
        ranking__task_id=result.created[1]["task"], completion__text="first answer"
    )
    assert failed.failed and failed.rank is None


def test_import_adds_rankings_to_an_existing_task_in_any_completion_order(pair_campaign, labeller):
    [task] = make_tasks(pair_campaign, 1)
    texts = [c.text for c in task.completions.order_by("task_completions__position")]
    reversed_line = {
        "prompt": task.prompt.text,
        "completions": texts[::-1],
        "labeller": labeller.username,
        "ranks": [1, 2],
    }
    result = services.campaign_import_rankings(
        campaign=pair_campaign, data=jsonl(reversed_line), filename="r.jsonl"
    )
    assert (result.tasks_created, result.tasks_matched) == (1, 0)  # another order: new task
    same = {**reversed_line, "completions": texts, "labeller": "someone"}
    result = services.campaign_import_rankings(
        campaign=pair_campaign, data=jsonl(same), filename="r.jsonl"
    )
    assert (result.tasks_created, result.tasks_matched) == (0, 1)
    task.refresh_from_db()
    assert task.submitted_count == 1
    ranking = Ranking.objects.get(task=task)
    assert ranking.assignment.display_order == task_completion_ids(task)


def test_too_many_rankings_for_the_overlap_refuse_the_file_unless_per_task(pair_campaign):
    data = jsonl(*(line(f"ann{i}") for i in range(4)))
    with pytest.raises(ImportFailed) as info:
        services.campaign_import_rankings(campaign=pair_campaign, data=data, filename="r.jsonl")
    assert info.value.errors[0].line == 4 and "overlap is 3" in info.value.errors[0].message
    assert not Ranking.objects.exists() and not Task.objects.filter(campaign=pair_campaign).exists()
    result = services.campaign_import_rankings(
        campaign=pair_campaign, data=data, filename="r.jsonl", task_overlap="rankings"
    )
    task = Task.objects.get(pk=result.created[0]["task"])
    assert (task.target_overlap, task.submitted_count) == (4, 4)


def test_unknown_labellers_refused_by_option_and_external_ids_kept(pair_campaign, labeller):
    with pytest.raises(ImportFailed) as info:
        services.campaign_import_rankings(
            campaign=pair_campaign,
            data=jsonl(line(labeller.username), line("ghost", prompt_id="p2")),
            filename="r.jsonl",
            new_labellers="refuse",
        )
    assert [(e.line, e.field) for e in info.value.errors] == [(2, "labeller")]
    data = jsonl(
        {**line(None), "labeller_external_id": "worker 17"},
        {**line(None, prompt_id="p2"), "labeller_external_id": "worker 17"},
    )
    result = services.campaign_import_rankings(
        campaign=pair_campaign, data=data, filename="x.jsonl"
    )
    assert result.labellers_created == ["ext-worker-17"]
    again = services.campaign_import_rankings(
        campaign=pair_campaign,
        data=jsonl({**line(None, prompt_id="p3"), "labeller_external_id": "worker 17"}),
        filename="x.jsonl",
        new_labellers="refuse",
    )
    assert again.labellers_created == []
    assert Ranking.objects.filter(labeller__username="ext-worker-17").count() == 3


def test_a_labeller_who_holds_the_task_already_is_refused_with_the_line(pair_campaign):
    services.campaign_import_rankings(
        campaign=pair_campaign, data=jsonl(line()), filename="a.jsonl"
    )
    with pytest.raises(ImportFailed) as info:
        services.campaign_import_rankings(
            campaign=pair_campaign, data=jsonl(line("ann2"), line()), filename="b.jsonl"
        )
    assert [(e.line, e.field) for e in info.value.errors] == [(2, "labeller")]
    assert Ranking.objects.count() == 1


def test_empty_and_identical_completions_only_where_the_campaign_allows_them(pair_campaign):
    odd = {**line(), "completions": ["", ""]}
    with pytest.raises(ImportFailed):
        services.campaign_import_rankings(
            campaign=pair_campaign, data=jsonl(odd), filename="a.jsonl"
        )
    pair_campaign.allow_empty_completions = True
    pair_campaign.save()
    result = services.campaign_import_rankings(
        campaign=pair_campaign, data=jsonl(odd), filename="a.jsonl"
    )
    assert result.warnings == {"empty_completions": 2, "identical_completions": 0}


def test_large_rankings_file_goes_through_the_import_job(pair_campaign, admin_user, settings):
    settings.IMPORT_BACKGROUND_BYTES = 10
    upload = SimpleUploadedFile("r.jsonl", jsonl(line(), line("ann2")))
    job = services.campaign_import_upload(
        campaign=pair_campaign,
        file=upload,
        filename="r.jsonl",
        fmt=None,
        created_by=admin_user,
        kind=ImportJob.Kind.RANKINGS,
        options={"new_labellers": "inactive"},
    )
    assert isinstance(job, ImportJob) and job.kind == "rankings"
    services.import_job_run(job_id=job.pk)
    job.refresh_from_db()
    assert job.status == "succeeded" and job.result["rankings"] == 2


def test_api_imports_rankings_and_reports_agreement(pair_campaign, admin_client):
    data = jsonl(
        *(line(f"ann{i}", prompt_id=f"p{t}") for t in range(3) for i in range(3)),
    )
    url = f"/api/campaigns/{pair_campaign.pk}/rankings/import/"
    response = admin_client.post(
        url, {"file": SimpleUploadedFile("r.jsonl", data)}, format="multipart"
    )
    assert response.status_code == 201, response.content
    assert response.json()["rankings"] == 9 and len(response.json()["created"]) == 3
    agreement = admin_client.get(f"/api/campaigns/{pair_campaign.pk}/agreement/?resamples=0")
    body = agreement.json()
    assert body["rankings"] == 9 and body["tasks_with_overlap"] == 3
    assert body["pairwise_agreement"][0]["value"] == 1.0
    bad = admin_client.post(
        url,
        {"file": SimpleUploadedFile("r.jsonl", data), "new_labellers": "maybe"},
        format="multipart",
    )
    assert bad.status_code == 400 and "new_labellers" in bad.json()["errors"]


def test_command_imports_rankings_into_a_new_campaign(tmp_path, db, capsys):
    path = tmp_path / "r.jsonl"
    path.write_bytes(jsonl(line(), line("ann2", ranks=(1, 1))))
    call_command("import_rankings", "--new-campaign", "From elsewhere", str(path), "--allow-empty")
    out = capsys.readouterr().out
    assert "imported 2 rankings" in out
    assert Assignment.objects.filter(status="submitted").count() == 2
    path.write_bytes(jsonl(line(ranks=(1, None))))
    with pytest.raises(Exception, match="nothing was imported"):
        call_command("import_rankings", "--new-campaign", "Again", str(path))
    assert f"{path}:1: ranks[1]:" in capsys.readouterr().err


def test_task_import_returns_created_task_ids_with_external_ids(pair_campaign):
    result = services.campaign_import(
        campaign=pair_campaign,
        data=jsonl(
            {"id": "a", "prompt": "A?", "completions": ["x", "y"]},
            {"prompt": "Later"},
            {"id": "b", "prompt": "B?", "completions": ["x", "y"]},
        ),
        filename="t.jsonl",
    )
    assert [c["external_id"] for c in result.created] == ["a", "b"]
    tasks = {t.pk: t.prompt.external_id for t in Task.objects.filter(campaign=pair_campaign)}
    assert {c["task"]: c["external_id"] for c in result.created} == tasks


def test_identical_and_empty_completions_refused_by_default_and_counted_when_allowed(
    pair_campaign,
):
    data = jsonl(
        {"prompt": "A?", "completions": ["same", "same"]},
        {"prompt": "B?", "completions": ["", "text"]},
    )
    with pytest.raises(ImportFailed) as info:
        services.campaign_import(campaign=pair_campaign, data=data, filename="t.jsonl")
    assert [(e.line, e.field) for e in info.value.errors] == [
        (1, "completions[1]"),
        (2, "completions[0]"),
    ]
    campaign = services.campaign_update(
        campaign=pair_campaign, allow_empty_completions=True, allow_identical_completions=True
    )
    result = services.campaign_import(campaign=campaign, data=data, filename="t.jsonl")
    assert result.warnings == {"empty_completions": 1, "identical_completions": 1}


def test_more_errors_than_the_cap_say_at_least(pair_campaign, admin_client):
    data = jsonl(*({"prompt": ""} for _ in range(221)))
    with pytest.raises(ImportFailed) as info:
        services.campaign_import(campaign=pair_campaign, data=data, filename="t.jsonl")
    assert info.value.count == "at least 200" and len(info.value.errors) == 200
    response = admin_client.post(
        f"/api/campaigns/{pair_campaign.pk}/import/",
        {"file": SimpleUploadedFile("t.jsonl", data)},
        format="multipart",
    )
    assert "at least 200 error(s)" in response.json()["detail"]


def test_assignments_show_provenance_only_where_the_campaign_says(pair_campaign, labeller):
    services.campaign_import(
        campaign=pair_campaign,
        data=jsonl(
            {
                "id": "p-9",
                "prompt": "A?",
                "metadata": {"topic": "x"},
                "completions": [{"text": "x", "source": "model-a"}, "y"],
            }
        ),
        filename="t.jsonl",
    )
    services.campaign_add_members(campaign=pair_campaign, users=[labeller])
    client = client_for(labeller)
    body = client.post(f"/api/campaigns/{pair_campaign.pk}/next-task/").json()
    assert body["prompt"]["external_id"] == "" and body["prompt"]["metadata"] == {}
    assert {c["source"] for c in body["completions"]} == {""}
    services.campaign_update(campaign=pair_campaign, assignment_provenance=True)
    body = client.get(f"/api/assignments/{body['id']}/").json()
    assert body["prompt"]["external_id"] == "p-9" and body["prompt"]["metadata"] == {"topic": "x"}
    assert {c["source"] for c in body["completions"]} == {"model-a", "import:t.jsonl"}


def test_strength_is_checked_against_the_campaigns_scale_and_stored(pair_campaign):
    pair_campaign.strength_scale = "llama2"
    pair_campaign.save()
    with pytest.raises(ImportFailed) as info:
        services.campaign_import_rankings(
            campaign=pair_campaign, data=jsonl(line(strength=[7])), filename="s.jsonl"
        )
    assert (info.value.errors[0].line, info.value.errors[0].field) == (1, "strength[0]")
    services.campaign_import_rankings(
        campaign=pair_campaign,
        data=jsonl(line(strength=[3]), line("ann2", ranks=(1, 1))),
        filename="s.jsonl",
    )
    stored = dict(Ranking.objects.values_list("labeller__username", "strength"))
    assert stored == {"ann1": [3], "ann2": []}
