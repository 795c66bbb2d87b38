"""Training jobs: one module per kind, each with its Request, Spec, ``build`` and ``run``
(see :mod:`training.jobs.base`), and their lifecycle (:mod:`training.jobs.lifecycle`).

:data:`KINDS` is the one list of kinds: nothing registers itself by being imported.
"""

from __future__ import annotations

from training.jobs.acquisition import AcquisitionJob
from training.jobs.base import JobKind
from training.jobs.dpo import DPOJob
from training.jobs.generate import GenerateJob
from training.jobs.ppo import PPOJob
from training.jobs.reward_model import RewardModelJob
from training.jobs.round import RoundJob

KINDS: dict[str, JobKind] = {
    kind.kind: kind
    for kind in (
        RewardModelJob(),
        PPOJob(),
        DPOJob(),
        GenerateJob(),
        RoundJob(),
        AcquisitionJob(),
    )
}
"""Every job kind by its ``TrainingJob.Kind`` value, in the order the dashboard lists them."""
