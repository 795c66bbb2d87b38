"""Import validation: all or nothing, every error with its line number and field."""

from __future__ import annotations

import json

import pytest

from annotation import services
from annotation.importing import ImportFailed, parse_import
from annotation.models import Completion, Prompt, Task
from tests.factories import CampaignFactory

LIMITS = {"completions_per_task": 2, "max_text_chars": 100, "max_bytes": 10_000}


def jsonl(*objs) -> bytes:
    return "\n".join(o if isinstance(o, str) else json.dumps(o) for o in objs).encode()


def errors_of(data: bytes, fmt="jsonl", **overrides) -> list[tuple[int, str, str]]:
    with pytest.raises(ImportFailed) as info:
        parse_import(data, fmt=fmt, **{**LIMITS, **overrides})
    return [(e.line, e.field, e.message) for e in info.value.errors]


def test_jsonl_with_completions_as_strings_and_objects():
    records = parse_import(
        jsonl(
            {"id": "p1", "prompt": "Hi?", "completions": ["a", {"text": "b", "source": "gpt"}]},
            {"prompt": "Only a prompt"},
        ),
        fmt="jsonl",
        **LIMITS,
    )
    assert [r.text for r in records] == ["Hi?", "Only a prompt"]
    assert [(c.text, c.source) for c in records[0].completions] == [("a", "import"), ("b", "gpt")]
    assert records[0].external_id == "p1" and records[1].completions == ()


def test_prompt_taken_from_last_user_message():
    records = parse_import(
        jsonl(
            {
                "messages": [
                    {"role": "system", "content": "Be brief"},
                    {"role": "user", "content": "Why?"},
                ]
            }
        ),
        fmt="jsonl",
        **LIMITS,
    )
    assert records[0].text == "Why?" and records[0].messages[0]["role"] == "system"


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ({"completions": ["a", "b"]}, ("prompt", "is missing")),
        ({"prompt": "p", "completions": ["a", "b", "c"]}, ("completions", "has 3 completions")),
        ({"prompt": "  ", "completions": ["a", "b"]}, ("prompt", "is empty")),
        ({"prompt": "p", "completions": ["a", ""]}, ("completions[1]", "is empty")),
        (
            {"prompt": "p", "completions": ["same", "same"]},
            ("completions[1]", "duplicates completions[0]"),
        ),
        ({"prompt": "p" * 101}, ("prompt", "is 101 characters")),
        ({"prompt": "p", "completions": ["a", 3]}, ("completions[1]", "must be a string")),
        ({"prompt": "p", "colour": "red"}, ("line", "unknown field(s): colour")),
        (
            {"prompt": "p", "completions": [{"txt": "a"}, "b"]},
            ("completions[0]", "unknown field(s): txt"),
        ),
        ({"prompt": "p", "metadata": [1]}, ("metadata", "must be an object")),
        (
            {"prompt": "p", "messages": [{"role": "robot", "content": "x"}]},
            ("messages[0].role", "must be"),
        ),
        ("{not json", ("line", "not valid JSON")),
        ("[1, 2]", ("line", "must be a JSON object")),
    ],
)
def test_jsonl_errors_name_line_and_field(line, expected):
    good = {"prompt": "fine", "completions": ["x", "y"]}
    errors = errors_of(jsonl(good, line))
    assert len(errors) == 1
    number, field, message = errors[0]
    assert number == 2 and field == expected[0] and message.startswith(expected[1])


def test_every_error_in_the_file_is_reported_at_once():
    errors = errors_of(
        jsonl({"prompt": ""}, {"prompt": "ok"}, {"prompt": "p", "completions": ["a"]})
    )
    assert [(e[0], e[1]) for e in errors] == [(1, "prompt"), (3, "completions")]


def test_invalid_utf8_reports_the_line():
    errors = errors_of(b'{"prompt": "ok"}\n{"prompt": "caf\xe9"}\n')
    assert errors == [(2, "file", "not valid UTF-8 (byte 0xe9)")]


def test_oversize_file_refused_before_parsing():
    errors = errors_of(jsonl({"prompt": "x" * 50}), max_bytes=20)
    assert errors[0][0] == 0 and errors[0][1] == "file" and "limit is 20" in errors[0][2]


def test_empty_file_refused():
    assert errors_of(b"\n\n")[0][2] == "the file holds no prompts"


def test_csv_wide_format_with_sources_and_line_numbers():
    data = (
        b"id,prompt,completion_1,completion_2,source_2\n"
        b'p1,"Multi\nline prompt",a,b,model-x\n'
        b"p2,Second,c,d,\n"
    )
    records = parse_import(data, fmt="csv", **LIMITS)
    assert [r.line for r in records] == [2, 4]
    assert records[0].text == "Multi\nline prompt"
    assert [c.source for c in records[0].completions] == ["import", "model-x"]


def test_csv_errors_report_the_record_start_line():
    data = b'prompt,completion_1,completion_2\n"two\nlines",a,a\nok,b\n'
    errors = errors_of(data, fmt="csv")
    assert errors == [
        (2, "completion_2", "duplicates completion_1"),
        (4, "line", "has 2 cells; the header has 3"),
    ]


def test_csv_header_must_have_prompt_and_known_columns():
    errors = errors_of(b"question,completion_1\nq,a\n", fmt="csv")
    assert {e[2] for e in errors} == {"needs a 'prompt' column", "unknown column(s): question"}


@pytest.mark.django_db
def test_failed_import_stores_nothing():
    campaign = CampaignFactory(completions_per_task=2)
    with pytest.raises(ImportFailed):
        services.campaign_import(
            campaign=campaign,
            data=jsonl(
                {"prompt": "fine", "completions": ["a", "b"]},
                {"prompt": "bad", "completions": ["a"]},
            ),
            filename="x.jsonl",
        )
    assert not Prompt.objects.exists() and not Task.objects.exists()


@pytest.mark.django_db
def test_import_creates_prompts_completions_and_tasks():
    campaign = CampaignFactory(completions_per_task=2, overlap=3)
    result = services.campaign_import(
        campaign=campaign,
        data=jsonl({"prompt": "a?", "completions": ["1", "2"]}, {"prompt": "b?"}),
        filename="batch.jsonl",
    )
    assert (result.prompts, result.tasks, result.completions) == (2, 1, 2)
    task = Task.objects.get()
    assert task.target_overlap == 3 and task.completions.count() == 2
    assert set(Completion.objects.values_list("source", flat=True)) == {"import:batch.jsonl"}


# --- Values that cannot be stored (issue 16): refused with their line and field ----------------

DEEP = "[" * 50_000 + "]" * 50_000  # RecursionError in json.loads


@pytest.mark.parametrize(
    ("line", "field", "reason"),
    [
        ('{"id": "a\\u0000", "prompt": "p"}', "id", "contains a NUL character"),
        (
            '{"prompt": "p", "completions": [{"text": "a", "source": "\\ud800"}, "b"]}',
            "completions[0].source",
            "contains a lone surrogate (U+D800)",
        ),
        ('{"prompt": "p", "metadata": {"x": NaN}}', "metadata.x", "is NaN"),
        ('{"prompt": "p", "metadata": {"x": [1, -Infinity]}}', "metadata.x[1]", "is -Infinity"),
        ('{"prompt": "p", "metadata": {"x": 2e400}}', "metadata.x", "is Infinity"),
        (
            '{"prompt": "p", "metadata": {"n": ' + "1" * 4301 + "}}",
            "metadata.n",
            "is a number of 4,301 digits; the limit is 4,300",
        ),
        ('{"prompt": "p", "metadata": ' + DEEP + "}", "line", "is nested more than 32 levels"),
        (
            '{"prompt": "p", "metadata": ' + "[" * 33 + "]" * 33 + "}",
            "metadata" + "[0]" * 31,
            "is nested more than 32 levels",
        ),
        ('{"prompt": "p", "\\udfffx": 1}', "line", "has a key that contains a lone surrogate"),
        (
            '{"prompt": "p", "metadata": {"\\u0000": 1}}',
            "metadata",
            "has a key that contains a NUL",
        ),
    ],
)
def test_jsonl_values_that_cannot_be_stored_are_refused_with_line_and_field(line, field, reason):
    good = {"prompt": "fine", "completions": ["x", "y"]}
    errors = errors_of(jsonl(good, line), max_bytes=1_000_000)
    assert len(errors) == 1, errors
    assert errors[0][:2] == (2, field) and errors[0][2].startswith(reason), errors


def test_jsonl_lines_end_at_newline_only():
    """U+2028, U+2029 and U+0085 are valid inside JSON strings; str.splitlines split at them."""
    data = (
        '{"prompt": "a\u2028b", "completions": ["c\u2029d", "e\x85f"]}\r\n'
        '{"prompt": "g", "metadata": {"note": "\u2028"}}\n'
        '{"prompt": ""}\n'
    ).encode()
    assert errors_of(data) == [(3, "prompt", "is empty")]
    records = parse_import(data.rsplit(b"\n", 2)[0], fmt="jsonl", **LIMITS)
    assert [r.text for r in records] == ["a\u2028b", "g"]
    assert [c.text for c in records[0].completions] == ["c\u2029d", "e\x85f"]


def test_csv_cells_are_checked_like_jsonl_values():
    data = (
        "id,prompt,metadata,gold,completion_1,completion_2,source_2\n"
        "a\x00,p1,,,x,y,\n"
        'b,"p\u2028two",,,x,y,s\x00\n'
        'c,p3,"{""x"": NaN}",,x,y,\n'
        f"d,p4,,{'[' * 20_000}{']' * 20_000},x,y,\n"
        'e,"p\u2029five","{""\u0085"": ""\\ud800""}",,x,y,\n'
    ).encode()
    assert errors_of(data, fmt="csv", max_bytes=1_000_000) == [
        (2, "id", "contains a NUL character"),
        (3, "completion_2.source", "contains a NUL character"),
        (4, "metadata.x", "is NaN; only finite numbers can be stored"),
        (5, "gold", "is nested more than 32 levels deep"),
        (6, "metadata.\x85", "contains a lone surrogate (U+D800)"),
    ]


def test_error_messages_show_nul_and_surrogates_as_escapes():
    errors = errors_of(b"prompt,co\x00l\nq,r\n", fmt="csv")
    assert errors == [(1, "header", "unknown column(s): co\\x00l")]
