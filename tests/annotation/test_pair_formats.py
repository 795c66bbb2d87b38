"""Pairs out in TRL's exact formats: every variant loads in `datasets` with one type per
column and the documented schema, and TRL's RewardTrainer and DPOTrainer take a few steps on
each (the tiny local model; no network)."""

from __future__ import annotations

import io
import json
import os

import pytest
from django.core.management import call_command

from annotation import exports, pair_formats, services
from tests.factories import CampaignFactory

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

VARIANTS = [
    (style, part, aggregate)
    for style in ("standard", "conversational")
    for part in ("pairs", "ties")
    for aggregate in ("none", "majority", "bradley_terry")
]


def _line(prompt_id, labeller, ranks, *, chat=False, completions=None):
    line = {
        "prompt_id": prompt_id,
        "completions": completions or [f"{prompt_id} answer {i}" for i in range(3)],
        "labeller": labeller,
        "ranks": ranks,
    }
    if chat:
        line["messages"] = [
            {"role": "system", "content": "Answer briefly."},
            {"role": "user", "content": f"Question {prompt_id}?"},
        ]
    else:
        line["prompt"] = f"Question {prompt_id}?"
    return line


@pytest.fixture
def ranked(db, admin_user):
    """Two campaigns of 3 completions, 3 labellers (ties and F among them): one with plain
    prompts, one with chat conversations. The first task's first ranking has no guidelines."""

    def make(chat: bool):
        campaign = CampaignFactory(completions_per_task=3, overlap=3, created_by=admin_user)
        lines = []
        for t in range(4):
            for i, ranks in enumerate(([1, 2, 3], [1, 1, 3], [2, 1, "F"])):
                lines.append(_line(f"p{t}", f"ann{i}", ranks, chat=chat))
        data = "\n".join(json.dumps(line) for line in lines).encode()
        services.campaign_import_rankings(campaign=campaign, data=data, filename="r.jsonl")
        rows = exports.ranking_rows(campaign_ids=[campaign.pk])
        return campaign, rows, exports.texts_for(rows)

    return make


def _export(rows, texts, fmt, style, part, aggregate, rlhf_columns=True) -> bytes:
    return b"".join(
        pair_formats.pair_export(
            rows,
            texts,
            fmt=fmt,
            style=style,
            part=part,
            aggregate=aggregate,
            rlhf_columns=rlhf_columns,
        )
    )


@pytest.mark.parametrize(("style", "part", "aggregate"), VARIANTS)
def test_every_variant_round_trips_through_datasets_with_its_schema(
    ranked, tmp_path, style, part, aggregate
):
    from datasets import Features, load_dataset

    _, rows, texts = ranked(style == "conversational")
    options = {"style": style, "part": part, "aggregate": aggregate}
    schema = pair_formats.schema_for(**options)
    expected = list(pair_formats.trl_records(rows, texts, **options))
    assert expected, "the fixture has pairs and ties of every kind"
    for fmt in ("trl", "parquet"):
        path = tmp_path / f"pairs.{'parquet' if fmt == 'parquet' else 'jsonl'}"
        path.write_bytes(_export(rows, texts, fmt, style, part, aggregate))
        if fmt == "trl":  # inferred: the same columns, every one of one type
            inferred = load_dataset("json", data_files=str(path))["train"]
            assert inferred.column_names == schema.names
            assert inferred.to_list() == expected
            # A list column empty in every row reads as list<null>: the schema says what it is.
            loaded = load_dataset(
                "json", data_files=str(path), features=Features.from_arrow_schema(schema)
            )
        else:  # Parquet carries the schema
            loaded = load_dataset("parquet", data_files=str(path))
        split = loaded["train"]
        assert split.column_names == schema.names
        assert split.features.arrow_schema.types == schema.types
        assert split.to_list() == expected
        assert not {"margin", "messages", "tie"} & set(split.column_names)
        if part == "ties":
            assert not {"chosen", "rejected"} & set(split.column_names)


def test_the_standard_style_refuses_chat_prompts_and_the_columns_can_go(ranked):
    _, rows, texts = ranked(True)
    with pytest.raises(pair_formats.ChatPromptsNeedConversational):
        _export(rows, texts, "trl", "standard", "pairs", "none")
    plain = _export(rows, texts, "trl", "conversational", "pairs", "none", rlhf_columns=False)
    first = json.loads(plain.splitlines()[0])
    assert list(first) == ["prompt", "chosen", "rejected"]
    assert first["prompt"][0] == {"role": "system", "content": "Answer briefly."}
    assert first["chosen"] == [{"role": "assistant", "content": first["chosen"][0]["content"]}]


def test_a_ranking_without_guidelines_has_version_zero_not_null(ranked):
    _, rows, texts = ranked(False)
    records = list(pair_formats.trl_records(rows, texts, style="standard"))
    assert {r["rlhf_guideline_version"] for r in records} == {0}


def test_api_serves_trl_jsonl_parquet_and_ties_apart(ranked, admin_client):
    import pyarrow.parquet as pq

    campaign, _, _ = ranked(True)
    url = f"/api/campaigns/{campaign.pk}/pairs/"
    response = admin_client.get(url + "?format=parquet")
    assert response.status_code == 200
    assert response["Content-Type"] == "application/vnd.apache.parquet"
    table = pq.read_table(io.BytesIO(b"".join(response.streaming_content)))
    assert table.column_names[:3] == ["prompt", "chosen", "rejected"]
    ties = admin_client.get(url + "?format=trl&part=ties&rlhf_columns=false")
    first = json.loads(b"".join(ties.streaming_content).splitlines()[0])
    assert list(first) == ["prompt", "completion_a", "completion_b"]
    refused = admin_client.get(url + "?format=trl&style=standard")
    assert refused.status_code == 400 and "style" in refused.json()["errors"]
    assert admin_client.get(url + "?format=trl&ties=1").status_code == 400
    legacy = admin_client.get(url)  # the project's own JSONL, as before
    assert "margin" in json.loads(b"".join(legacy.streaming_content).splitlines()[0])


def test_export_pairs_command_writes_parquet(ranked, tmp_path):
    import pyarrow.parquet as pq

    campaign, _, _ = ranked(False)
    out = tmp_path / "pairs.parquet"
    call_command("export_pairs", str(campaign.pk), "--format", "parquet", "-o", str(out))
    assert pq.read_table(out).num_rows == len(
        list(
            pair_formats.trl_records(
                *(lambda r: (r, exports.texts_for(r)))(
                    exports.ranking_rows(campaign_ids=[campaign.pk])
                )
            )
        )
    )


# --- TRL trains on every pair variant ------------------------------------------------------------


def _trl_args(config_class, tmp_path, **extra):
    return config_class(
        output_dir=str(tmp_path / "out"),
        max_steps=2,
        per_device_train_batch_size=2,
        learning_rate=1e-3,
        bf16=False,
        use_cpu=True,
        report_to="none",
        save_strategy="no",
        logging_steps=1,
        max_length=128,
        dataloader_num_workers=0,
        seed=0,
        **extra,
    )


@pytest.mark.slow
@pytest.mark.parametrize("style", ["standard", "conversational"])
@pytest.mark.parametrize("fmt", ["trl", "parquet"])
@pytest.mark.parametrize("aggregate", ["none", "bradley_terry"])
def test_trl_reward_and_dpo_trainers_step_on_each_export(
    ranked, tiny_model_dir, tmp_path, style, fmt, aggregate
):
    import torch
    from datasets import load_dataset
    from transformers import (
        AutoModelForCausalLM,
        AutoModelForSequenceClassification,
        AutoTokenizer,
    )
    from trl import DPOConfig, DPOTrainer, RewardConfig, RewardTrainer

    torch.manual_seed(0)
    _, rows, texts = ranked(style == "conversational")
    path = tmp_path / f"pairs.{'parquet' if fmt == 'parquet' else 'jsonl'}"
    path.write_bytes(_export(rows, texts, fmt, style, "pairs", aggregate))
    dataset = load_dataset("parquet" if fmt == "parquet" else "json", data_files=str(path))["train"]
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)

    reward_model = AutoModelForSequenceClassification.from_pretrained(tiny_model_dir, num_labels=1)
    reward_model.config.pad_token_id = tokenizer.pad_token_id
    reward = RewardTrainer(
        model=reward_model,
        args=_trl_args(RewardConfig, tmp_path / "rm"),
        train_dataset=dataset,
        processing_class=tokenizer,
    )
    assert "margin" not in reward.train_dataset.column_names
    before = [p.detach().clone() for p in reward_model.parameters()]
    result = reward.train()
    assert torch.isfinite(torch.tensor(result.training_loss))
    assert any(
        not torch.equal(a, b) for a, b in zip(before, reward_model.parameters(), strict=True)
    )

    policy = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    dpo = DPOTrainer(
        model=policy,
        args=_trl_args(DPOConfig, tmp_path / "dpo"),
        train_dataset=dataset,
        processing_class=tokenizer,
    )
    result = dpo.train()
    assert torch.isfinite(torch.tensor(result.training_loss))
