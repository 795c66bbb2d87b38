"""Running one callable per user at the same instant, each thread on its own connection."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Any

from django.db import connections


def run_all(target: Callable[[Any], object], users: Sequence[Any]) -> None:
    """Start ``target(user)`` in one thread per user, released together by a barrier; join them
    and fail with the first errors any raised. Each thread closes its database connections."""
    barrier = threading.Barrier(len(users))
    errors: list[BaseException] = []

    def run(user):
        try:
            barrier.wait()
            target(user)
        except BaseException as exc:
            errors.append(exc)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=run, args=(u,)) for u in users]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not errors, errors[:3]
