"""Machine-learning code: plain torch + transformers, no Django imports below this package.

Django-side code (``training.tasks``, ``training.services``) calls into these modules with plain
data and an ``on_progress(step, total, metrics)`` callback.
"""
