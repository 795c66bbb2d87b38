"""factory_boy factories for the annotation models."""

from __future__ import annotations

import factory
from django.contrib.auth import get_user_model

from annotation import services
from annotation.models import Campaign, Completion, Prompt, Task, TaskCompletion


class UserFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = get_user_model()
        django_get_or_create = ("username",)

    username = factory.Sequence(lambda n: f"labeller{n}")
    password = factory.django.Password("correct horse battery")


class AdminFactory(UserFactory):
    username = factory.Sequence(lambda n: f"admin{n}")
    is_staff = True


class CampaignFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Campaign

    name = factory.Sequence(lambda n: f"Campaign {n}")
    status = Campaign.Status.ACTIVE
    completions_per_task = 4
    overlap = 3


class PromptFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Prompt

    campaign = factory.SubFactory(CampaignFactory)
    text = factory.Sequence(lambda n: f"Prompt number {n}: explain something.")


def make_tasks(campaign: Campaign, count: int) -> list[Task]:
    """``count`` tasks, each with the campaign's N completions, through the real service."""
    groups = []
    for i in range(count):
        prompt = PromptFactory(campaign=campaign, text=f"Prompt {i} of {campaign.name}")
        completions = Completion.objects.bulk_create(
            [
                Completion(prompt=prompt, text=f"Answer {j} to prompt {i}", source="test")
                for j in range(campaign.completions_per_task)
            ]
        )
        groups.append((prompt, completions))
    return services.tasks_create(campaign=campaign, groups=groups)


def task_completion_ids(task: Task) -> list[int]:
    return list(
        TaskCompletion.objects.filter(task=task)
        .order_by("position")
        .values_list("completion_id", flat=True)
    )
