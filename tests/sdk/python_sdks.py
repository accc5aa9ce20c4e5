"""Drives the unmodified `posthog` and `segment-analytics-python` SDKs against a Sluice edge.

usage: python_sdks.py <posthog|segment> <host> <key> <count> <prefix>

Makes <count> calls cycling through every call type of the SDK, each with its own identity
`<prefix>-<i>`, flushes, and prints one JSON object on stdout:
{"sent": [{"call": …, "id": …, "event_id": …}], "errors": [{"status": …, "code": …, "message": …}]}
where `event_id` is the message ID the SDK generated and `errors` what the SDK reported through
its `on_error` hook (expected empty unless the key is wrong).
"""

import json
import sys

host, key, count, prefix = sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5]
errors = []


def on_error(exc, batch):
    errors.append({
        "status": getattr(exc, "status", None),
        "code": getattr(exc, "code", None),
        "message": getattr(exc, "message", str(exc)),
        "events": len(batch),
    })


def run_posthog():
    from posthog import Posthog

    # gzip on, as posthog-python's docs suggest for production; small batches so the run spans
    # several requests.
    client = Posthog(key, host=host, on_error=on_error, gzip=True, flush_at=50, flush_interval=0.2,
                     max_retries=5, enable_exception_autocapture=False)
    calls = ["capture", "set", "set_once", "group_identify", "alias"]
    sent = []
    for i in range(count):
        call, ident = calls[i % len(calls)], f"{prefix}-{i}"
        if call == "capture":
            uuid = client.capture("py signup", distinct_id=ident, properties={"seq": i, "$current_url": "/x"})
        elif call == "set":
            uuid = client.set(distinct_id=ident, properties={"plan": "pro", "seq": i})
        elif call == "set_once":
            uuid = client.set_once(distinct_id=ident, properties={"first_seen": i})
        elif call == "group_identify":
            uuid = client.group_identify("company", f"c-{i}", {"seats": i}, distinct_id=ident)
        else:
            uuid = client.alias(previous_id=ident, distinct_id=f"{ident}-new")
        sent.append({"call": call, "id": ident, "event_id": uuid})
    client.flush()
    client.shutdown()
    return sent


def run_segment():
    import segment.analytics as segment_analytics

    client = segment_analytics.Client(key, host=host, on_error=on_error, gzip=True, upload_size=50,
                                      upload_interval=0.2, max_retries=5)
    calls = ["track", "identify", "page", "screen", "group", "alias"]
    sent = []
    for i in range(count):
        call, ident = calls[i % len(calls)], f"{prefix}-{i}"
        if call == "track":
            ok, msg = client.track(ident, "Py Signed Up", {"seq": i})
        elif call == "identify":
            ok, msg = client.identify(ident, {"plan": "pro", "seq": i})
        elif call == "page":
            ok, msg = client.page(ident, "Docs", "Home", {"url": "http://x/docs"})
        elif call == "screen":
            ok, msg = client.screen(ident, "App", "Main", {"seq": i})
        elif call == "group":
            ok, msg = client.group(ident, f"g-{i}", {"seats": i})
        else:
            ok, msg = client.alias(f"{ident}-old", ident)
        if not ok:
            raise SystemExit(f"the SDK refused to queue {call}")
        sent.append({"call": call, "id": ident, "event_id": msg["messageId"]})
    client.flush()
    client.join()
    return sent


sent = run_posthog() if sys.argv[1] == "posthog" else run_segment()
print(json.dumps({"sent": sent, "errors": errors}))
