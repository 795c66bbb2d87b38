"""Hostile input gets a 4xx, never a 500 (issue 16).

The cases are kept in lists, one per category, that bench/README.md's "Hostile input" table
counts: JSON bodies (deep, large, not storable), imports through the API and the dashboard,
query parameters, unknown fields, list sizes, and the debug page. Every answer must be the
API's error shape, ``{"detail", "code", "errors"}``, naming the place and the problem. Set
``HOSTILE_INPUT_REPORT=<file>`` to have each case's status appended there as a JSON line.
"""

from __future__ import annotations

import io
import json
import os
import sys
from dataclasses import dataclass
from unittest import mock

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client, RequestFactory
from django.views.debug import technical_500_response

from annotation import services
from annotation.api import serializers as api_serializers
from annotation.api.parsers import InvalidBody, LimitedJSONParser
from annotation.models import Campaign, Prompt
from tests.conftest import client_for
from tests.factories import CampaignFactory
from training import rounds
from training import services as training_services
from training.api import serializers as training_serializers
from training.jobs import lifecycle, reward_model

pytestmark = pytest.mark.django_db

DEEP = "[" * 100_000 + "]" * 100_000  # RecursionError in json.loads before the fix
NESTED_40 = '{"a": ' * 40 + "1" + "}" * 40  # parses, but deeper than anything we store
LONE = "\\ud800"  # a lone surrogate, as JSON writes it
NUL = "\\u0000"


def _record(category: str, name: str, status: int) -> None:
    path = os.environ.get("HOSTILE_INPUT_REPORT")
    if path:
        with open(path, "a") as report:
            report.write(json.dumps({"category": category, "case": name, "status": status}) + "\n")


@pytest.fixture
def world(campaign, labeller, other_labeller, admin_user, django_capture_on_commit_callbacks):
    """A campaign with a ranking (by bob), alice's open assignment, a round and a job."""
    done = services.task_assign_next(labeller=other_labeller, campaign=campaign)
    items = [{"completion": c, "rank": i + 1} for i, c in enumerate(done.display_order)]
    services.ranking_submit(labeller=other_labeller, assignment=done, items=items, time_spent_ms=10)
    assignment = services.task_assign_next(labeller=labeller, campaign=campaign)
    base = training_services.model_version_register(kind="base", name="b", path="/models/b")
    rnd = rounds.round_start(campaign=campaign, policy=base, created_by=admin_user)
    with django_capture_on_commit_callbacks(execute=False):
        job = lifecycle.job_create(
            "reward_model",
            reward_model.Request(created_by=admin_user, campaign_ids=[campaign.pk]),
            from_form=True,
        )
    return {
        "c": campaign.pk,
        "a": assignment.pk,
        "t": assignment.task_id,
        "r": rnd.pk,
        "j": job.pk,
        "completions": list(assignment.display_order),
        "users": {"admin": admin_user, "labeller": labeller, "anonymous": None},
    }


def _client(user):
    """An API client for ``user`` (None: anonymous) that answers a 500 rather than raising."""
    client = client_for(user) if user is not None else Client()
    client.raise_request_exception = False  # a 500 is an answer to count, not a crash
    return client


def assert_error_shape(response, key: str | None = None, reason: str | None = None) -> dict:
    assert response.status_code == 400, (response.status_code, response.content[:300])
    body = response.json()
    assert set(body) >= {"detail", "code", "errors"}, body
    if key is not None:
        assert key in body["errors"], body
        assert any(message.startswith(reason or "") for message in body["errors"][key]), body
    return body


# --- JSON bodies --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Body:
    name: str
    method: str
    url: str
    body: str | bytes
    who: str = "admin"
    error: tuple[str, str] | None = None  # (errors key, start of the reason)
    code: str | None = None


JSON_ENDPOINTS = [
    ("post", "/api/auth/token/", "anonymous"),
    ("post", "/api/campaigns/", "admin"),
    ("patch", "/api/campaigns/{c}/", "admin"),
    ("post", "/api/campaigns/{c}/status/", "admin"),
    ("post", "/api/campaigns/{c}/members/", "admin"),
    ("delete", "/api/campaigns/{c}/members/", "admin"),
    ("post", "/api/campaigns/{c}/guidelines/", "admin"),
    ("post", "/api/campaigns/{c}/guidelines/acknowledge/", "labeller"),
    ("post", "/api/campaigns/{c}/tasks/{t}/gold/", "admin"),
    ("post", "/api/campaigns/{c}/acquisition/", "admin"),
    ("post", "/api/assignments/{a}/ranking/", "labeller"),
    ("post", "/api/assignments/{a}/skip/", "labeller"),
    ("post", "/api/training-jobs/", "admin"),
    ("post", "/api/model-versions/", "admin"),
    ("post", "/api/rounds/", "admin"),
    ("post", "/api/rounds/{r}/next/", "admin"),
    ("post", "/api/rounds/{r}/run/", "admin"),
]
"""Every endpoint that reads a JSON body, with who gets as far as reading it (next-task,
cancel and retry read none)."""

JSON_BODY_CASES = [
    *(
        Body(
            f"nested 100,000 deep: {method.upper()} {url}", method, url, DEEP, who, code="too_deep"
        )
        for method, url, who in JSON_ENDPOINTS
    ),
    Body(
        "nested 40 deep",
        "post",
        "/api/rounds/",
        '{"campaign": 1, "policy": 1, "eval_settings": ' + NESTED_40 + "}",
        error=("body", "the body is nested more than 32 levels deep"),
        code="too_deep",
    ),
    Body(
        "a body of 3 MB",
        "post",
        "/api/campaigns/{c}/guidelines/",
        json.dumps({"text": "x" * 3_000_000}),
        error=("body", "the body is larger than"),
        code="too_large",
    ),
    Body(
        "NaN",
        "patch",
        "/api/campaigns/{c}/",
        '{"reopen_below": NaN}',
        error=("body", "JSON parse error"),
    ),
    Body(
        "Infinity",
        "patch",
        "/api/campaigns/{c}/",
        '{"reopen_below": -Infinity}',
        error=("body", "JSON parse error"),
    ),
    Body(
        "1e999 (a float out of range)",
        "patch",
        "/api/campaigns/{c}/",
        '{"reopen_below": 1e999}',
        error=("body", "JSON parse error"),
    ),
    Body(
        "an integer of 5,000 digits",
        "patch",
        "/api/campaigns/{c}/",
        '{"overlap": ' + "9" * 5000 + "}",
        error=("body", "JSON parse error - an integer has more than 4,300 digits"),
    ),
    Body(
        "invalid UTF-8",
        "post",
        "/api/campaigns/{c}/status/",
        b'{"status": "\xed\xa0\x80"}',
        error=("body", "the body is not valid utf-8"),
    ),
    Body(
        "lone surrogate in a choice (echoed by its error)",
        "post",
        "/api/campaigns/{c}/status/",
        '{"status": "' + LONE + '"}',
        error=("status", "contains a lone surrogate"),
    ),
    Body(
        "lone surrogate in a field's name",
        "patch",
        "/api/campaigns/{c}/",
        '{"' + LONE + '": 1}',
        error=("body", "has a key that contains a lone surrogate"),
    ),
    Body(
        "lone surrogate in a job's config key",
        "post",
        "/api/training-jobs/",
        '{"kind": "reward_model", "campaign_ids": [{c}], "config": {"' + LONE + '": 1}}',
        error=("config", "has a key that contains a lone surrogate"),
    ),
    Body(
        "lone surrogate in a ranking comment",
        "post",
        "/api/assignments/{a}/ranking/",
        '{"items": [], "time_spent_ms": 1, "comment": "' + LONE + '"}',
        who="labeller",
        error=("comment", "contains a lone surrogate"),
    ),
    Body(
        "NUL in a ranking comment",
        "post",
        "/api/assignments/{a}/ranking/",
        '{"items": [], "time_spent_ms": 1, "comment": "a' + NUL + '"}',
        who="labeller",
        error=("comment", "contains a NUL character"),
    ),
    Body(
        "NUL in a members list",
        "post",
        "/api/campaigns/{c}/members/",
        '{"usernames": ["bob", "' + NUL + '"]}',
        error=("usernames[1]", "contains a NUL character"),
    ),
    Body(
        "NUL in an evaluation setting's key",
        "post",
        "/api/rounds/",
        '{"campaign": {c}, "policy": 1, "eval_settings": {"' + NUL + '": 1}}',
        error=("eval_settings", "has a key that contains a NUL character"),
    ),
]


def _format(template: str, world: dict) -> str:
    return (
        template.replace("{c}", str(world["c"]))
        .replace("{a}", str(world["a"]))
        .replace("{t}", str(world["t"]))
        .replace("{r}", str(world["r"]))
        .replace("{j}", str(world["j"]))
    )


@pytest.mark.parametrize("case", JSON_BODY_CASES, ids=lambda case: case.name)
def test_hostile_json_body_answers_400_naming_the_problem(world, case):
    body = case.body if isinstance(case.body, bytes) else _format(case.body, world).encode()
    client = _client(world["users"][case.who])
    response = getattr(client, case.method)(
        _format(case.url, world), body, content_type="application/json"
    )
    _record("JSON bodies", case.name, response.status_code)
    data = assert_error_shape(response, *(case.error or (None, None)))
    if case.code:
        assert data["code"] == case.code, data


@pytest.mark.parametrize(
    ("text", "refused"),
    [
        ("[" * 32 + "]" * 32, False),
        ("[" * 33 + "]" * 33, True),
        ('{"a": "' + "[{" * 100 + '", "b": [' + "[]," * 100 + "[]]}", False),  # wide, not deep
        ('{"a": "\\"' + "[" * 40 + '"}', False),  # brackets inside a string, after an escape
    ],
)
def test_json_depth_limit_counts_nesting_not_brackets(text, refused):
    parse = LimitedJSONParser().parse
    if refused:
        with pytest.raises(InvalidBody, match="nested more than 32 levels deep"):
            parse(io.BytesIO(text.encode()))
    else:
        assert parse(io.BytesIO(text.encode())) == json.loads(text)


# --- Imports ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Import:
    name: str
    filename: str
    content: str
    field: str
    reason: str
    line: int = 2  # a good line first: the bad one is reported with its own number


GOOD_JSONL = '{"prompt": "fine", "completions": ["x", "y"]}\n'
GOOD_CSV = "id,prompt,metadata,completion_1,completion_2,source_1\nok,fine,,x,y,\n"


def _jsonl(line: str) -> str:
    return GOOD_JSONL + line + "\n"


def _csv(row: str) -> str:
    return GOOD_CSV + row + "\n"  # the bad row is line 3


IMPORT_CASES = [
    Import(
        "NUL in id",
        "f.jsonl",
        _jsonl('{"id": "a' + NUL + '", "prompt": "p"}'),
        "id",
        "contains a NUL",
    ),
    Import(
        "NUL in a completion's source",
        "f.jsonl",
        _jsonl('{"prompt": "p", "completions": [{"text": "a", "source": "s' + NUL + '"}, "b"]}'),
        "completions[0].source",
        "contains a NUL",
    ),
    Import(
        "NUL in metadata",
        "f.jsonl",
        _jsonl('{"prompt": "p", "metadata": {"note": "' + NUL + '"}}'),
        "metadata.note",
        "contains a NUL",
    ),
    Import(
        "NUL in a metadata key",
        "f.jsonl",
        _jsonl('{"prompt": "p", "metadata": {"' + NUL + '": 1}}'),
        "metadata",
        "has a key that contains a NUL",
    ),
    Import(
        "NUL in a completion's metadata",
        "f.jsonl",
        _jsonl(
            '{"prompt": "p", "completions": ["a", {"text": "b", "metadata": {"m": ["'
            + NUL
            + '"]}}]}'
        ),
        "completions[1].metadata.m[0]",
        "contains a NUL",
    ),
    Import(
        "lone surrogate in prompt",
        "f.jsonl",
        _jsonl('{"prompt": "' + LONE + '"}'),
        "prompt",
        "contains a lone surrogate (U+D800)",
    ),
    Import(
        "lone surrogate in id",
        "f.jsonl",
        _jsonl('{"id": "' + LONE + '", "prompt": "p"}'),
        "id",
        "contains a lone surrogate",
    ),
    Import(
        "lone surrogate in a completion",
        "f.jsonl",
        _jsonl('{"prompt": "p", "completions": ["a", "\\udc00"]}'),
        "completions[1]",
        "contains a lone surrogate (U+DC00)",
    ),
    Import(
        "lone surrogate in an unknown field's name",
        "f.jsonl",
        _jsonl('{"prompt": "p", "' + LONE + '": 1}'),
        "line",
        "has a key that contains a lone surrogate",
    ),
    Import(
        "NaN in metadata",
        "f.jsonl",
        _jsonl('{"prompt": "p", "metadata": {"x": NaN}}'),
        "metadata.x",
        "is NaN",
    ),
    Import(
        "Infinity in metadata",
        "f.jsonl",
        _jsonl('{"prompt": "p", "metadata": {"x": [-Infinity]}}'),
        "metadata.x[0]",
        "is -Infinity",
    ),
    Import(
        "1e999 in metadata",
        "f.jsonl",
        _jsonl('{"prompt": "p", "metadata": {"x": 1e999}}'),
        "metadata.x",
        "is Infinity",
    ),
    Import(
        "an integer of 5,000 digits in metadata",
        "f.jsonl",
        _jsonl('{"prompt": "p", "metadata": {"x": ' + "7" * 5000 + "}}"),
        "metadata.x",
        "is a number of 5,000 digits; the limit is 4,300",
    ),
    Import(
        "an integer of 5,000 digits as id",
        "f.jsonl",
        _jsonl('{"id": -' + "7" * 5000 + ', "prompt": "p"}'),
        "id",
        "is a number of 5,000 digits",
    ),
    Import(
        "metadata nested 100,000 deep",
        "f.jsonl",
        _jsonl('{"prompt": "p", "metadata": ' + DEEP + "}"),
        "line",
        "is nested more than 32 levels deep",
    ),
    Import(
        "metadata nested 40 deep",
        "f.jsonl",
        _jsonl('{"prompt": "p", "metadata": ' + NESTED_40 + "}"),
        "metadata" + ".a" * 31,
        "is nested more than 32 levels deep",
    ),
    Import("CSV: NUL in id", "f.csv", _csv("a\x00b,p,,c,d,"), "id", "contains a NUL", line=3),
    Import(
        "CSV: NUL in source",
        "f.csv",
        _csv("b,p,,c,d,s\x00"),
        "completion_1.source",
        "contains a NUL",
        line=3,
    ),
    Import(
        "CSV: NaN in metadata",
        "f.csv",
        _csv('b,p,"{""x"": NaN}",c,d,'),
        "metadata.x",
        "is NaN",
        line=3,
    ),
    Import(
        "CSV: lone surrogate in metadata",
        "f.csv",
        _csv('b,p,"{""x"": ""' + LONE + '""}",c,d,'),
        "metadata.x",
        "contains a lone surrogate",
        line=3,
    ),
    Import(
        "CSV: metadata nested 20,000 deep",
        "f.csv",
        _csv("b,p," + "[" * 20_000 + "]" * 20_000 + ",c,d,"),  # within csv's cell limit
        "metadata",
        "is nested more than 32",
        line=3,
    ),
]


@pytest.fixture
def import_campaign(admin_user):
    return CampaignFactory(completions_per_task=2, status=Campaign.Status.DRAFT)


def _upload(case: Import) -> SimpleUploadedFile:
    return SimpleUploadedFile(case.filename, case.content.encode("utf-8", "surrogatepass"))


@pytest.mark.parametrize("case", IMPORT_CASES, ids=lambda case: case.name)
def test_hostile_import_through_the_api_answers_400_with_line_and_field(
    admin_user, import_campaign, case
):
    client = _client(admin_user)
    response = client.post(
        f"/api/campaigns/{import_campaign.pk}/import/", {"file": _upload(case)}, format="multipart"
    )
    _record("imports (API)", case.name, response.status_code)
    body = assert_error_shape(response, f"line {case.line}: {case.field}", case.reason)
    assert body["code"] == "import_failed"
    assert not Prompt.objects.filter(campaign=import_campaign).exists()


DASHBOARD_IMPORT_CASES = [IMPORT_CASES[0], IMPORT_CASES[5]]  # NUL in id, lone surrogate in prompt


@pytest.mark.parametrize("case", DASHBOARD_IMPORT_CASES, ids=lambda case: case.name)
def test_hostile_import_on_the_dashboard_shows_the_line_and_field(
    admin_user, import_campaign, case
):
    client = Client(raise_request_exception=False)
    client.force_login(admin_user)
    response = client.post(
        f"/dashboard/campaigns/{import_campaign.pk}/import/", {"file": _upload(case)}
    )
    _record("imports (dashboard)", case.name, response.status_code)
    assert response.status_code == 400
    row = f'<tr><td class="num">{case.line}</td><td><code>{case.field}</code></td><td>{case.reason}'
    assert row in response.content.decode(), response.content.decode()[-2000:]
    assert not Prompt.objects.filter(campaign=import_campaign).exists()


VALID_SEPARATOR_CASES = [
    ("f.jsonl", '{"prompt": "a\u2028b", "completions": ["c\u2029d", "e\x85f"]}\n', "a\u2028b"),
    ("f.jsonl", '{"prompt": "crlf", "metadata": {"n": "\u2028"}}\r\n{"prompt": "two"}\r\n', "crlf"),
    ("f.csv", 'prompt,completion_1,completion_2\n"a\u2028b","c\u2029d","e\x85f"\n', "a\u2028b"),
]


@pytest.mark.parametrize(("filename", "content", "prompt"), VALID_SEPARATOR_CASES)
def test_valid_import_with_unicode_line_separators_inside_strings_is_stored(
    admin_user, import_campaign, filename, content, prompt
):
    client = _client(admin_user)
    upload = SimpleUploadedFile(filename, content.encode())
    response = client.post(
        f"/api/campaigns/{import_campaign.pk}/import/", {"file": upload}, format="multipart"
    )
    _record("imports (valid, U+2028/U+2029/U+0085)", filename, response.status_code)
    assert response.status_code == 201, response.content
    assert Prompt.objects.filter(campaign=import_campaign, text=prompt).exists()


# --- Query parameters ---------------------------------------------------------------------------

QUERY_ENDPOINTS = [
    ("/api/model-versions/", training_serializers.ModelVersionQuerySerializer),
    ("/api/training-jobs/{j}/metrics/", training_serializers.MetricsQuerySerializer),
    ("/api/rounds/", api_serializers.CampaignFilterSerializer),
    ("/api/assignments/", api_serializers.CampaignFilterSerializer),
    ("/api/rankings/", api_serializers.CampaignFilterSerializer),
    ("/api/campaigns/{c}/agreement/", api_serializers.AgreementQuerySerializer),
    ("/api/campaigns/{c}/labellers/", api_serializers.LabellerQuerySerializer),
    ("/api/campaigns/{c}/gold/", api_serializers.GoldQuerySerializer),
    ("/api/campaigns/{c}/pairs/", api_serializers.PairsQuerySerializer),
    ("/api/campaigns/{c}/rankings/export/", api_serializers.RankingsExportQuerySerializer),
]
QUERY_CASES = [(url, name) for url, serializer in QUERY_ENDPOINTS for name in serializer().fields]
"""Every query parameter of every endpoint (from its serializer, so a new one is tested too)."""


@pytest.mark.parametrize(("url", "param"), QUERY_CASES)
def test_nul_in_a_query_parameter_answers_400_naming_it(world, url, param):
    response = _client(world["users"]["admin"]).get(f"{_format(url, world)}?{param}=%00")
    _record("query parameters", f"{url}?{param}", response.status_code)
    assert_error_shape(response, param, "contains a NUL character")


# --- Unknown fields -----------------------------------------------------------------------------

UNKNOWN_FIELD_CASES = [
    ("post", "/api/campaigns/", {"name": "n", "colour": "red"}, "admin", "colour"),
    ("patch", "/api/campaigns/{c}/", {"name": "n", "statu": "x"}, "admin", "statu"),
    ("post", "/api/campaigns/{c}/status/", {"status": "paused", "why": "x"}, "admin", "why"),
    ("post", "/api/campaigns/{c}/members/", {"usernames": ["bob"], "rol": "x"}, "admin", "rol"),
    ("post", "/api/campaigns/{c}/guidelines/", {"text": "v2", "title": "x"}, "admin", "title"),
    ("post", "/api/campaigns/{c}/guidelines/acknowledge/", {"version": 1, "x": 1}, "labeller", "x"),
    ("post", "/api/campaigns/{c}/tasks/{t}/gold/", {"items": [], "x": 1}, "admin", "x"),
    ("post", "/api/campaigns/{c}/acquisition/", {"reward_model": 1}, "admin", "reward_model"),
    (
        "post",
        "/api/assignments/{a}/ranking/",
        {"items": [], "time_spent_ms": 1, "x": 1},
        "labeller",
        "x",
    ),
    (
        "post",
        "/api/assignments/{a}/ranking/",
        {"items": [{"completion": 1, "rank": 1, "why": "x"}], "time_spent_ms": 1},
        "labeller",
        "items[0].why",
    ),
    ("post", "/api/assignments/{a}/skip/", {"reason": "r", "x": 1}, "labeller", "x"),
    (
        "post",
        "/api/model-versions/",
        {"kind": "base", "name": "n", "path": "p", "x": 1},
        "admin",
        "x",
    ),
    ("post", "/api/rounds/", {"campaign": 1, "policy": 1, "x": 1}, "admin", "x"),
    ("post", "/api/rounds/{r}/next/", {"x": 1}, "admin", "x"),
    ("post", "/api/training-jobs/", {"kind": "reward_model", "x": 1}, "admin", "x"),
]


@pytest.mark.parametrize(("method", "url", "body", "who", "field"), UNKNOWN_FIELD_CASES)
def test_unknown_field_answers_400_naming_it(world, method, url, body, who, field):
    response = getattr(_client(world["users"][who]), method)(
        _format(url, world), body, format="json"
    )
    _record("unknown fields", f"{method.upper()} {url} {field}", response.status_code)
    assert_error_shape(response, field, "unknown field")


def test_unknown_field_in_a_multipart_import_answers_400_naming_it(admin_user, import_campaign):
    client = _client(admin_user)
    upload = SimpleUploadedFile("f.jsonl", GOOD_JSONL.encode())
    response = client.post(
        f"/api/campaigns/{import_campaign.pk}/import/",
        {"file": upload, "fromat": "csv"},
        format="multipart",
    )
    _record("unknown fields", "POST import (multipart) fromat", response.status_code)
    assert_error_shape(response, "fromat", "unknown field")


def test_patch_with_a_read_only_field_answers_400_and_changes_nothing(world):
    url = f"/api/campaigns/{world['c']}/"
    response = _client(world["users"]["admin"]).patch(url, {"status": "closed"}, format="json")
    _record("unknown fields", "PATCH /api/campaigns/{c}/ status", response.status_code)
    assert_error_shape(response, "status", "unknown field")
    assert Campaign.objects.get(pk=world["c"]).status == Campaign.Status.ACTIVE


# --- Sizes --------------------------------------------------------------------------------------


def test_ranking_with_more_items_than_completions_is_refused_before_any_item_is_checked(world):
    items = [{"completion": i, "rank": 1} for i in range(1, 60_001)]  # about 1.6 MB
    check = mock.patch.object(
        api_serializers.RankingItemInputSerializer,
        "to_internal_value",
        side_effect=AssertionError("an item was checked"),
    )
    with check as checked:
        response = _client(world["users"]["labeller"]).post(
            f"/api/assignments/{world['a']}/ranking/",
            {"items": items, "time_spent_ms": 1},
            format="json",
        )
    _record("sizes", "ranking of 60,000 items", response.status_code)
    assert_error_shape(response, "items", "Ensure this field has no more than 9 elements.")
    assert not checked.called


SIZE_CASES = [
    (
        "/api/assignments/{a}/ranking/",
        {"items": [{"completion": 1, "rank": 1}] * 10, "time_spent_ms": 1},
        "labeller",
        "items",
    ),
    (
        "/api/campaigns/{c}/tasks/{t}/gold/",
        {"items": [{"completion": 1, "rank": 1}] * 10},
        "admin",
        "items",
    ),
    ("/api/campaigns/{c}/members/", {"usernames": ["bob"] * 1001}, "admin", "usernames"),
    (
        "/api/training-jobs/",
        {"kind": "reward_model", "campaign_ids": [1] * 101},
        "admin",
        "campaign_ids",
    ),
]


@pytest.mark.parametrize(("url", "body", "who", "field"), SIZE_CASES)
def test_list_longer_than_its_limit_answers_400_naming_it(world, url, body, who, field):
    response = _client(world["users"][who]).post(_format(url, world), body, format="json")
    _record("sizes", f"{url} {field}", response.status_code)
    assert_error_shape(response, field, "Ensure this field has no more than")


# --- Debug pages --------------------------------------------------------------------------------

PASSWORDS = ("broker-pw-7f3a", "result-pw-91c2", "redis-pw-c0de", "any-url-pw-5e1f")
SECRETS = {
    "CELERY_BROKER_URL": f"redis://:{PASSWORDS[0]}@redis.internal:6379/0",
    "CELERY_RESULT_BACKEND": f"redis://:{PASSWORDS[1]}@redis.internal:6379/0",
    "REDIS_URL": f"redis://:{PASSWORDS[2]}@redis.internal:6379/0",
    "SENTRY_ENDPOINT": f"https://alice:{PASSWORDS[3]}@errors.example.org/1",
}


def _debug_page_of_a_crash(broker_url: str) -> str:
    """The DEBUG page of an exception raised here, with the URL in a frame variable."""
    request = RequestFactory().get("/api/campaigns/", REDIS_URL=SECRETS["REDIS_URL"])
    try:
        raise RuntimeError(f"cannot reach {broker_url.split('@')[-1]}")
    except RuntimeError:
        return technical_500_response(request, *sys.exc_info()).content.decode()


def test_debug_page_masks_the_broker_cache_and_database_secrets(settings):
    settings.DEBUG = True
    for name, value in SECRETS.items():
        setattr(settings, name, value)
    page = _debug_page_of_a_crash(settings.CELERY_BROKER_URL)
    _record("debug page", "broker, result, cache and URL passwords", 200)
    assert "cannot reach redis.internal" in page  # the page is still there
    assert "CELERY_BROKER_URL" in page and "DATABASES" in page and "********" in page
    for password in PASSWORDS:
        assert password not in page, password
