"""Celery tasks of the training app; routed to the ``gpu`` queue (see config/celery.py)."""

from __future__ import annotations

import socket

from celery import shared_task


@shared_task(name="training.tasks.worker_info")
def worker_info() -> dict:
    """What the GPU worker runs on: host, torch version and device. Used by health checks."""
    import torch

    cuda = torch.cuda.is_available()
    return {
        "worker": socket.gethostname(),
        "torch": torch.__version__,
        "device": torch.cuda.get_device_name(0) if cuda else "cpu",
        "cuda": cuda,
    }
