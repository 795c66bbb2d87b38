"""Helpers several test modules share: plain functions and data, never tests.

A test module imports from here or takes a fixture from a conftest, never from another test
module (importing one runs its module-level code again and couples two files' private names).

- ``campaigns``: campaigns ranked as planned through the real services, and the plans; a
  labeller ranking every task; the bytes of a JSONL import file.
- ``threads``: running one callable per user at the same instant.
- ``url_matrices``: the labelling API's and labeller pages' permission matrices.
- ``preference_pairs``: synthetic preference pairs a tiny reward model can learn.
- ``training``: a campaign labelled for a reward model to learn ('banana' first), a real Celery
  worker on the ``gpu`` queue, the repository's root.
- ``rounds``: round 0 of the RLHF loop (tests/training/conftest.py's ``loop`` fixture).
- ``html_forms``: what a browser posts for a form on a page.
- ``browser``: Chromium's path and flags, the viewports, the screenshot folder.

``browser_fixtures`` is the exception: a pytest plugin (tests/conftest.py registers it) holding
the browser fixtures that tests/browser/ and tests/dashboard/ share.
"""
