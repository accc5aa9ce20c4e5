"""Schemathesis hooks for the edge's contract test (tests/tests/openapi_fuzz.rs).

Two rules of the API are beyond what a schema can state, and the fuzzer is taught them here:

* Partial success. A batch is judged event by event: events that break the spec's `Event`
  schema are listed in the answer's `rejected` (and dead-lettered) while the rest are stored.
  The check `events_judged_as_the_spec_says` asserts that a 2xx answer rejects exactly the
  events the schema calls invalid, which is stricter than the stock checks (a valid event in
  `rejected` is valid data refused; an invalid one missing from it is invalid data accepted).
  A schema-violating batch answered 2xx is therefore not by itself a defect: `filter_failure`
  drops the stock "schema-violating request accepted" failure when the batch's shape is valid
  and the answer rejected exactly its invalid events.
* NDJSON. The spec gives the events of an `application/x-ndjson` body as an array schema (one
  item per line); `ndjson` below writes them that way.
* Idempotency keys are remembered. The same key with another body is `422` by design, so every
  generated valid key is made unique; the replay rules have their own tests (api_contract.rs).
"""

from __future__ import annotations

import copy
import json
import pathlib
import uuid

import jsonschema_rs
import schemathesis
import yaml
from schemathesis.core.failures import AcceptedNegativeData

SPEC = yaml.safe_load((pathlib.Path(__file__).parents[2] / "edge" / "openapi.yaml").read_text())
BATCH_PATHS = ("/v1/events", "/v1/events:debug")
# The schema of each media type's body, as a whole.
SHAPES = {"application/json": "Batch", "text/plain": "Batch", "application/x-ndjson": "Events"}
VALID_EVENT = {"event": "e", "distinct_id": "u"}


def _inline(node):
    """The schema with every local `$ref` replaced by its target (the spec has no cycles)."""
    if isinstance(node, dict):
        ref = node.get("$ref")
        if ref is not None:
            target = SPEC
            for part in ref.lstrip("#/").split("/"):
                target = target[part]
            return _inline(target)
        inlined = {key: _inline(value) for key, value in node.items() if key != "nullable"}
        # OpenAPI 3.0's `nullable`, as schemathesis reads it.
        return {"anyOf": [inlined, {"type": "null"}]} if node.get("nullable") else inlined
    if isinstance(node, list):
        return [_inline(item) for item in node]
    return node


def _validator(name):
    # OpenAPI 3.0 schemas are JSON Schema draft 4 as far as this spec uses them.
    return jsonschema_rs.Draft4Validator(_inline(SPEC["components"]["schemas"][name]), validate_formats=True)


EVENT = _validator("Event")
SHAPE = {media: _validator(schema) for media, schema in SHAPES.items()}


@schemathesis.serializer("application/x-ndjson")
def ndjson(ctx, value):
    """One JSON line per event. A value that is not a list (a negative case) has no NDJSON form:
    it is sent as one line holding it in an array, which the edge must refuse."""
    if isinstance(value, bytes):
        return value
    return "".join(json.dumps(line) + "\n" for line in _ndjson_lines(value)).encode()


def _ndjson_lines(value):
    return value if isinstance(value, list) else [[value]]


def _events(body):
    """The list of events of a batch body, or None when the body holds no list of them."""
    if isinstance(body, list):
        return body
    if isinstance(body, dict) and isinstance(body.get("batch"), list):
        return body["batch"]
    return None


def _sent(case):
    """The body as the edge reads it: an NDJSON body as the list of its lines."""
    return _ndjson_lines(case.body) if case.media_type == "application/x-ndjson" else case.body


def _shape_is_valid(case):
    """Whether the body is valid for its media type once each event is replaced by a valid one."""
    shaped = copy.deepcopy(_sent(case))
    events = _events(shaped)
    if events is None:
        return False
    events[:] = [VALID_EVENT] * len(events)
    return SHAPE[case.media_type].is_valid(shaped)


def _judged(case, response):
    """For a 2xx answer to a JSON batch: (indices the schema calls invalid, indices rejected)."""
    if case.operation.path not in BATCH_PATHS or case.method.upper() != "POST":
        return None
    if not 200 <= response.status_code < 300:
        return None
    if case.media_type not in SHAPES or response.headers.get("idempotent-replayed") == ["true"]:
        return None
    events = _events(_sent(case))
    if events is None:
        return None
    invalid = {i for i, event in enumerate(events) if not EVENT.is_valid(event)}
    rejected = {r["index"] for r in response.json().get("rejected", [])}
    return invalid, rejected


@schemathesis.check
def events_judged_as_the_spec_says(ctx, response, case):
    """A 2xx answer to a batch rejects exactly the events that break the `Event` schema."""
    judged = _judged(case, response)
    if judged is None:
        return None
    invalid, rejected = judged
    if invalid != rejected:
        raise AssertionError(
            f"events {sorted(invalid)} break the spec's Event schema, the edge rejected {sorted(rejected)}"
        )
    return True


@schemathesis.hook
def filter_failure(context, failure, case, response):
    """Keep every failure except a documented partial success (see the module's docstring)."""
    if not isinstance(failure, AcceptedNegativeData):
        return True
    judged = _judged(case, response)
    if judged is None:
        return True
    invalid, rejected = judged
    # The query is not judged: the edge reads only `api_key` there, and only without a key header,
    # while every request of this run carries the key in `Authorization`. Unknown query parameters
    # are ignored, as the spec says.
    negative_elsewhere = any(
        info.mode.is_negative
        for location, info in case.meta.components.items()
        if location.value not in ("body", "query")
    )
    partial = invalid and invalid == rejected and _shape_is_valid(case) and not negative_elsewhere
    return not partial


@schemathesis.hook
def before_call(context, case, kwargs):
    """Makes a valid `X-Idempotency-Key` unique, so no two requests sent share one."""
    for name, value in list((case.headers or {}).items()):
        if name.lower() == "x-idempotency-key" and isinstance(value, str) and _is_valid_key(value):
            case.headers[name] = f"{value[:200]}.{uuid.uuid4().hex}"


def _is_valid_key(value):
    return 1 <= len(value) <= 255 and all("!" <= c <= "~" for c in value)
