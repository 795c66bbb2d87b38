"""The permission matrices of the labelling API and the labeller pages: every URL with the
status each role gets. tests/annotation/test_permissions.py and test_pages.py call them;
tests/test_url_coverage.py checks that together with the training and dashboard matrices they
cover every URL the project serves.

Roles, in the order of each row's expected statuses: anonymous, outsider (member of nothing),
labeller, other labeller, admin. URL templates take ``{c}`` (the campaign), ``{d}`` (a draft
campaign), ``{a}`` (the labeller's assignment), ``{r}`` (its ranking) and ``{t}`` (a task).
"""

from __future__ import annotations

ROLES = ("anonymous", "outsider", "labeller", "other", "admin")

# (method, url, body, expected status for: anonymous, outsider, labeller, other, admin)
ADMIN_ONLY = [
    ("post", "/api/campaigns/", {"name": "New"}, (403, 403, 403, 403, 201)),
    ("patch", "/api/campaigns/{c}/", {"name": "Renamed"}, (403, 404, 403, 403, 200)),
    ("post", "/api/campaigns/{c}/status/", {"status": "paused"}, (403, 404, 403, 403, 200)),
    ("post", "/api/campaigns/{c}/members/", {"usernames": ["mallory"]}, (403, 404, 403, 403, 200)),
    ("delete", "/api/campaigns/{c}/members/", {"usernames": ["bob"]}, (403, 404, 403, 403, 204)),
    ("post", "/api/campaigns/{c}/guidelines/", {"text": "v2"}, (403, 404, 403, 403, 201)),
    # Without a file: the admin is told which field is missing; nobody else gets that far.
    ("post", "/api/campaigns/{c}/import/", None, (403, 404, 403, 403, 400)),
    ("post", "/api/campaigns/{c}/rankings/import/", None, (403, 404, 403, 403, 400)),
    ("get", "/api/campaigns/{c}/webhooks/", None, (403, 404, 403, 403, 200)),
    ("post", "/api/campaigns/{c}/webhooks/", {"url": "x"}, (403, 404, 403, 403, 400)),
    ("delete", "/api/campaigns/{c}/webhooks/{t}/", None, (403, 404, 403, 403, 404)),
    # Those who change no campaign are refused before the body is read.
    ("post", "/api/labellers/invite/", None, (403, 403, 403, 403, 400)),
    # A large import's job (none exists here: the admin is told so).
    ("get", "/api/campaigns/{c}/imports/{t}/", None, (403, 404, 403, 403, 404)),
    ("post", "/api/campaigns/{c}/tasks/{t}/gold/", {"items": []}, (403, 404, 403, 403, 400)),
    ("delete", "/api/campaigns/{c}/tasks/{t}/gold/", None, (403, 404, 403, 403, 200)),
    ("post", "/api/campaigns/{c}/acquisition/", {}, (403, 404, 403, 403, 409)),
    # Adjudicating: the task has one ranking of its two, so the reviewer is told it is not done.
    (
        "post",
        "/api/campaigns/{c}/review/{t}/",
        {"decision": "consensus"},
        (403, 404, 403, 403, 409),
    ),
]
READS = [
    ("get", "/api/", None, (403, 200, 200, 200, 200)),  # DRF's index of the endpoints
    ("get", "/api/campaigns/{c}/", None, (403, 404, 200, 200, 200)),
    ("get", "/api/campaigns/{d}/", None, (403, 404, 404, 404, 200)),
    ("get", "/api/campaigns/{c}/guidelines/", None, (403, 404, 200, 200, 200)),
    ("get", "/api/campaigns/{c}/progress/", None, (403, 404, 200, 200, 200)),
    ("get", "/api/assignments/{a}/", None, (403, 404, 200, 404, 404)),
    ("get", "/api/assignments/{a}/ranking/", None, (403, 404, 200, 404, 404)),
    ("get", "/api/rankings/{r}/", None, (403, 404, 200, 404, 200)),
    # Lists: everyone their own (an outsider's is empty; tests below check the scoping).
    ("get", "/api/assignments/", None, (403, 200, 200, 200, 200)),
    ("get", "/api/rankings/", None, (403, 200, 200, 200, 200)),
    # Each member's own feedback on their reviewed tasks (the admin's is empty).
    ("get", "/api/campaigns/{c}/feedback/", None, (403, 404, 200, 200, 200)),
]
LABELLER_WRITES = [
    ("post", "/api/campaigns/{c}/next-task/", None, (403, 404, 200, 200, 403)),
    (
        "post",
        "/api/campaigns/{c}/guidelines/acknowledge/",
        {"version": 1},
        (403, 404, 200, 200, 200),
    ),
    ("post", "/api/assignments/{a}/skip/", {"reason": "x"}, (403, 404, 409, 404, 404)),
    (
        "post",
        "/api/assignments/{a}/ranking/",
        {"items": [], "time_spent_ms": 1},
        (403, 404, 400, 404, 404),
    ),
    (
        "put",
        "/api/assignments/{a}/ranking/",
        {"items": [], "time_spent_ms": 1, "version": 1},
        (403, 404, 400, 404, 404),
    ),
]
# Agreement, labeller quality and exports: admins only; labellers 403, outsiders 404.
ADMIN_READS = [
    ("get", "/api/campaigns/{c}/agreement/", None, (403, 404, 403, 403, 200)),
    ("get", "/api/campaigns/{c}/agreement/?tasks=1", None, (403, 404, 403, 403, 200)),
    ("get", "/api/campaigns/{c}/labellers/", None, (403, 404, 403, 403, 200)),
    ("get", "/api/campaigns/{c}/gold/", None, (403, 404, 403, 403, 200)),
    ("get", "/api/campaigns/{c}/pairs/", None, (403, 404, 403, 403, 200)),
    (
        "get",
        "/api/campaigns/{c}/pairs/?ties=1&fail_policy=rank_last&aggregate=ranked_pairs",
        None,
        (403, 404, 403, 403, 200),
    ),
    ("get", "/api/campaigns/{c}/rankings/export/", None, (403, 404, 403, 403, 200)),
    ("get", "/api/campaigns/{c}/rankings/export/?format=csv", None, (403, 404, 403, 403, 200)),
    ("get", "/api/campaigns/{d}/agreement/", None, (403, 404, 404, 404, 200)),
    ("get", "/api/campaigns/{d}/pairs/", None, (403, 404, 404, 404, 200)),
    ("get", "/api/campaigns/{c}/pairs/?provenance=adjudicated", None, (403, 404, 403, 403, 200)),
    (
        "get",
        "/api/campaigns/{c}/rankings/export/?versions=all",
        None,
        (403, 404, 403, 403, 200),
    ),
    # The review queue and a task's review: those who review the campaign.
    # Cohen's kappa per labeller pair: those who view the campaign.
    ("get", "/api/campaigns/{c}/kappa/", None, (403, 404, 403, 403, 200)),
    ("get", "/api/campaigns/{c}/review/", None, (403, 404, 403, 403, 200)),
    ("get", "/api/campaigns/{c}/review/{t}/", None, (403, 404, 403, 403, 200)),
]

PAGES = [
    "/",
    "/campaigns/{c}/guidelines/",
    "/campaigns/{c}/label/",
    "/assignments/{a}/",
    "/assignments/{a}/edit/",
    "/history/",
]
# Expected status per role, for GET. 302 to the login page for anonymous visitors; other
# people's assignments and campaigns one is not in answer 404, never 403 with data. The
# labeller's "label" redirects to their open assignment; an admin who is not a member is told.
PAGE_MATRIX = {
    "/": (302, 200, 200, 200, 200),
    "/campaigns/{c}/guidelines/": (302, 404, 200, 200, 200),
    "/campaigns/{c}/label/": (302, 404, 302, 302, 403),
    "/assignments/{a}/": (302, 404, 200, 404, 404),
    # Editing one's submitted ranking; the history of one's own rankings (everyone has one).
    "/assignments/{a}/edit/": (302, 404, 200, 404, 404),
    "/history/": (302, 200, 200, 200, 200),
}
