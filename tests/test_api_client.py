"""A client generated from the OpenAPI schema works against the server.

openapi-python-generator (httpx + pydantic) writes a client package from ``/api/schema/``;
the test imports it and labels a task through it, as an integration would: a token, the
labeller's campaigns, the next task, a ranking submitted, the rankings read back as a page,
and a bad ranking refused with 400. Pydantic parses every answer with the schema's models, so
a response that does not match its declared schema fails here.
"""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from accounts.services import token_create

GENERATOR = Path(sys.executable).parent / "openapi-python-generator"
SERVICES = ("campaigns", "assignments", "rankings")


@pytest.fixture
def generated_client(client, tmp_path, monkeypatch):
    if not GENERATOR.exists():
        pytest.skip("openapi-python-generator is not installed (the dev extra has it)")
    schema = client.get("/api/schema/", {"format": "json"})
    assert schema.status_code == 200
    (tmp_path / "schema.json").write_text(json.dumps(schema.json()))
    subprocess.run(
        [str(GENERATOR), "schema.json", "rlhf_client", "--formatter", "none"],
        cwd=tmp_path,
        check=True,
        capture_output=True,
        timeout=120,
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    api = SimpleNamespace()
    for module in ("models", "api_config", *(f"services.{s}_service" for s in SERVICES)):
        vars(api).update(vars(importlib.import_module(f"rlhf_client.{module}")))
    yield api
    for name in [name for name in sys.modules if name.startswith("rlhf_client")]:
        del sys.modules[name]


# The generated code calls pydantic's deprecated .dict(); that is the generator's business.
@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_a_client_generated_from_the_schema_labels_a_task(
    generated_client, live_server, campaign, labeller
):
    api = generated_client
    config = api.APIConfig(base_path=live_server.url, access_token=token_create(user=labeller)[1])

    campaigns = api.campaigns_list(config)
    assert [c.id for c in campaigns] == [campaign.pk]

    assignment = api.campaigns_next_task_create(config, id=str(campaign.pk))
    completions = [c.id for c in assignment.completions]
    assert len(completions) == campaign.completions_per_task

    ranking = api.assignments_ranking_create(
        config,
        id=str(assignment.id),
        data=api.RankingInputRequest(
            items=[
                api.RankingItemInputRequest(completion=c, rank=i + 1)
                for i, c in enumerate(completions)
            ],
            time_spent_ms=1200,
        ),
    )
    assert ranking.assignment == assignment.id

    page = api.rankings_list(config, campaign=campaign.pk)
    assert page.count == 1 and [r.id for r in page.results] == [ranking.id]

    with pytest.raises(api.HTTPException) as refused:
        api.assignments_ranking_create(
            config,
            id=str(assignment.id),
            data=api.RankingInputRequest(
                items=[api.RankingItemInputRequest(completion=completions[0], rank=1)],
                time_spent_ms=5,
            ),
        )
    assert refused.value.status_code == 400
