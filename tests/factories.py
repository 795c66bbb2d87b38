"""factory_boy factories for the annotation and training models."""

from __future__ import annotations

import factory
from django.contrib.auth import get_user_model

from annotation import services
from annotation.models import (
    Campaign,
    Completion,
    Prompt,
    Task,
    TaskCompletion,
    Team,
    TeamMembership,
)
from training.models import ModelVersion, Round, TrainingJob


class UserFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = get_user_model()
        django_get_or_create = ("username",)

    username = factory.Sequence(lambda n: f"labeller{n}")
    password = factory.django.Password("correct horse battery")


class AdminFactory(UserFactory):
    """What the tests call an admin: a trainer (manager who also trains) of the default team,
    which every CampaignFactory campaign belongs to; staff too, for Django's admin site."""

    class Meta:
        skip_postgeneration_save = True

    username = factory.Sequence(lambda n: f"admin{n}")
    is_staff = True

    @factory.post_generation
    def team_role(self, create, extracted, **kwargs):
        if create:
            TeamMembership.objects.get_or_create(
                team=services.team_default(),
                user=self,
                defaults={"role": extracted or TeamMembership.Role.TRAINER},
            )


class TeamFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Team
        django_get_or_create = ("name",)

    name = factory.Sequence(lambda n: f"Team {n}")


class CampaignFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Campaign

    team = factory.LazyFunction(services.team_default)
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


class ModelVersionFactory(factory.django.DjangoModelFactory):
    """A policy version whose path is a placeholder: nothing loads it unless a test writes a
    model there (pass ``path``)."""

    class Meta:
        model = ModelVersion

    kind = ModelVersion.Kind.POLICY
    name = factory.Sequence(lambda n: f"version-{n}")
    path = factory.LazyAttribute(lambda version: f"/nowhere/{version.name}")


class TrainingJobFactory(factory.django.DjangoModelFactory):
    """A queued reward-model job over its campaign's pairs (a row only: nothing is enqueued)."""

    class Meta:
        model = TrainingJob

    kind = TrainingJob.Kind.REWARD_MODEL
    campaign = factory.SubFactory(CampaignFactory)
    team = factory.SelfAttribute("campaign.team")
    params = factory.LazyAttribute(lambda job: {"campaign_ids": [job.campaign.pk]})


class RoundFactory(factory.django.DjangoModelFactory):
    """A collecting round on its own campaign; the reference is the policy that generated it."""

    class Meta:
        model = Round

    campaign = factory.SubFactory(CampaignFactory)
    number = factory.SelfAttribute("campaign.round_number")
    reference = factory.SubFactory(ModelVersionFactory, kind=ModelVersion.Kind.BASE)
    policy_before = factory.SelfAttribute("reference")
