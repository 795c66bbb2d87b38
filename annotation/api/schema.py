"""The OpenAPI schema says what the server answers, errors included.

drf-spectacular describes each operation's success responses from the view's ``extend_schema``;
``add_error_responses`` (a postprocessing hook) adds the answers operations can give besides,
in one place and in the one error shape of ``annotation.api.exceptions``
(``{"detail", "code", "errors"}``):

* 400 where the request has a body or query parameters to get wrong,
* 403 for every operation that needs a login or a role (all but the public ones),
* 404 where the path names an object, and on paged lists (a page past the end),
* 409 on writes (a different resubmission, a lease given away, an illegal transition, ...),
* 415 where the operation reads a body (a media type it does not read, a broken header),
* 503 everywhere, with ``Retry-After`` (the database is unreachable; config/unavailable.py).

Nullable fields are written ``anyOf: [{...}, {"type": "null"}]`` (``nullable_as_any_of``), as
pydantic and FastAPI write them, which client generators read; OpenAPI 3.1's shorter
``type: ["string", "null"]`` is lost on some of them (openapi-python-generator drops the null).

tests/test_api_fuzz.py checks the schema against the server's answers (schemathesis's
conformance checks) and tests/test_api_client.py generates a client from it and uses it.
"""

from __future__ import annotations

from drf_spectacular.extensions import OpenApiAuthenticationExtension
from rest_framework.permissions import AllowAny

ERROR_SCHEMA = {
    "type": "object",
    "description": "Every error answer.",
    "properties": {
        "detail": {"type": "string", "description": "what went wrong, in a sentence"},
        "code": {
            "type": "string",
            "description": "machine-readable: invalid, not_found, conflict, lease_expired, ...",
        },
        "errors": {
            "type": "object",
            "additionalProperties": {"type": "array", "items": {"type": "string"}},
            "description": 'reasons per field path: {"items[3].rank": ["must be between 1 and 4"]}',
        },
    },
    "required": ["detail", "code"],
}
WRITE_METHODS = {"post", "put", "patch", "delete"}
REASONS = {
    "400": "The request is invalid: `errors` names each field and why.",
    "403": "Not logged in, or not allowed to do this.",
    "404": "Not found (or not yours), or a page past the end.",
    "409": "Conflicts with the current state: `code` says how.",
    "415": "The body's media type is not one this operation reads (or its header is broken).",
    "503": "The database is unreachable; retry after `Retry-After` seconds.",
    "429": "Too many failed logins for this name from this address, or for any name from "
    "this address: retry after `Retry-After` seconds.",
}
# Answers only some operations give, by operationId: the public login refuses an account that
# must first choose its own password (403 `password_change_required`) and a locked-out name or
# address (429); revoking needs the token (403 without one).
EXTRA = {"auth_token_create": ["403", "429"], "auth_token_destroy": ["403"]}


class TokenScheme(OpenApiAuthenticationExtension):
    """Our token class as an HTTP bearer scheme: generated clients then send the header
    (``Authorization: Bearer <key>``) that the server accepts, as well as DRF's ``Token``."""

    target_class = "annotation.api.authentication.TokenAuthentication"
    name = "tokenAuth"
    priority = 1

    def get_security_definition(self, auto_schema):
        return {
            "type": "http",
            "scheme": "bearer",
            "description": "POST /api/auth/token/ {username, password} gives a key, shown "
            "once (the server keeps only its hash); send `Authorization: Bearer <key>` (or "
            "DRF's `Authorization: Token <key>`). A key expires (`expires` in the answer; "
            "API_TOKEN_TTL_SECONDS), and is revoked by DELETE /api/auth/token/ (the key sent), "
            "DELETE /api/auth/token/all/ (all of the caller's), an admin, a password change "
            "or the account's deactivation.",
        }


def _public(callback) -> bool:
    view = getattr(callback, "cls", None)
    return any(p is AllowAny for p in getattr(view, "permission_classes", ()))


def _errors_for(method: str, path: str, operation: dict, public: bool) -> list[str]:
    parameters = operation.get("parameters", [])
    query = [p for p in parameters if p.get("in") == "query"]
    codes = []
    if method in WRITE_METHODS or query:
        codes.append("400")
    if not public:
        codes.append("403")
    if "{" in path or any(p.get("name") == "page" for p in query):
        codes.append("404")
    if method in WRITE_METHODS:
        codes.append("409")
    if operation.get("requestBody"):
        codes.append("415")
    codes.append("503")
    return codes + EXTRA.get(operation.get("operationId", ""), [])


# Keywords that describe the value itself and move into the non-null branch of ``anyOf``.
_VALUE_KEYWORDS = {
    "format",
    "items",
    "properties",
    "additionalProperties",
    "required",
    "enum",
    "minimum",
    "maximum",
    "exclusiveMinimum",
    "exclusiveMaximum",
    "minLength",
    "maxLength",
    "pattern",
    "minItems",
    "maxItems",
    "multipleOf",
}


def _nullable_as_any_of(node):
    if isinstance(node, list):
        return [_nullable_as_any_of(item) for item in node]
    if not isinstance(node, dict):
        return node
    node = {key: _nullable_as_any_of(value) for key, value in node.items()}
    types = node.get("type")
    if isinstance(types, list) and "null" in types and len(types) == 2:
        (kind,) = [t for t in types if t != "null"]
        value = {"type": kind, **{k: v for k, v in node.items() if k in _VALUE_KEYWORDS}}
        rest = {k: v for k, v in node.items() if k not in _VALUE_KEYWORDS and k != "type"}
        if "enum" in value:
            value["enum"] = [item for item in value["enum"] if item is not None]
        return {**rest, "anyOf": [value, {"type": "null"}]}
    return node


def nullable_as_any_of(result: dict, generator, request, public) -> dict:
    """SPECTACULAR_SETTINGS["POSTPROCESSING_HOOKS"]: ``type: [T, "null"]`` as ``anyOf``."""
    return _nullable_as_any_of(result)


def add_error_responses(result: dict, generator, request, public) -> dict:
    """SPECTACULAR_SETTINGS["POSTPROCESSING_HOOKS"]: the error answers of every operation."""
    result.setdefault("components", {}).setdefault("schemas", {})["Error"] = ERROR_SCHEMA
    callbacks = {(path, method.lower()): cb for path, _, method, cb in generator.endpoints}
    ref = {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}
    for path, operations in result.get("paths", {}).items():
        for method, operation in operations.items():
            public_op = _public(callbacks.get((path, method)))
            responses = operation.setdefault("responses", {})
            for code in _errors_for(method, path, operation, public_op):
                responses.setdefault(code, {"description": REASONS[code], "content": ref})
    return result
