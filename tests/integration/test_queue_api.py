"""Queue API of spool mode (SPEC §7.1, issue 8): the real daemon, a spool on disk, an upstream
that is down (so messages stay deferred) and one that refuses for good."""
import json
import time
from datetime import datetime, timedelta, timezone

from conftest import dead_port, basic_config, service_yaml

APP, OTHER, OPS = "app-key", "other-key", "ops-key"


def spool_config(dead_port, extra_services="", spool_extra=""):
    """Services `email` and `bulk` point at a port where nobody listens."""
    services = ""
    for name in ("email", "bulk"):
        services += f"""  {name}:
    host: 127.0.0.1
    port: {dead_port}
    encryption: none
    from_email: noreply@example.com
    connect_timeout: 5s
"""
    return f"""listen:
  http: 127.0.0.1:{{HTTP_PORT}}
services:
{services}{extra_services}roles:
  app:
    senders: ["*"]
  other:
    senders: ["*"]
  ops:
    senders: ["*"]
    queue: all
credentials:
  - api_key: {APP}
    role: app
  - api_key: {OTHER}
    role: other
  - api_key: {OPS}
    role: ops
spool:
  path: ./spool
  retry: [1m]
  bounces: none
{spool_extra}limits:
  idle_timeout: 10s
  shutdown_grace: 5s
log:
  format: json
  level: debug
"""


def call(mc, method, path, key):
    headers = {"X-DreamFactory-API-Key": key} if key else {}
    status, rh, raw = mc.request(method, path, headers=headers)
    return status, (json.loads(raw) if raw else None), rh


def submit(mc, service, key, to="alice@example.com"):
    status, body, _ = mc.send(service, {"to": [{"email": to}], "subject": "Hi",
                                        "body_text": "Hello"}, key=key)
    assert status == 202, body
    assert body["queued"] is True
    return body["id"]


def wait_state(mc, state, count, timeout=20):
    deadline = time.time() + timeout
    while time.time() < deadline:
        status, body, _ = call(mc, "GET", f"/queue?state={state}&limit=1000", OPS)
        assert status == 200, body
        if len(body["messages"]) == count:
            return body["messages"]
        time.sleep(0.1)
    raise AssertionError(f"wanted {count} {state} messages, have {body}\n{mc.log()}")


def parse_time(text):
    assert text.endswith("Z"), text
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=timezone.utc)


def test_list_pages_filters_and_shows_one_message(mailcar_factory):
    mc = mailcar_factory(spool_config(dead_port()))
    started = datetime.now(timezone.utc)
    app_ids = [submit(mc, "email", APP, f"r{i}@example.com") for i in range(5)]
    bulk_id = submit(mc, "bulk", APP)
    other_id = submit(mc, "email", OTHER)
    wait_state(mc, "deferred", 7)

    # Cursor paging over the 5 email messages of role app, 2 at a time.
    seen, after, pages = [], "", 0
    while True:
        status, body, _ = call(mc, "GET", f"/queue?service=email&limit=2&after={after}", APP)
        assert status == 200, body
        pages += 1
        seen += [m["id"] for m in body["messages"]]
        assert len(body["messages"]) == (2 if pages < 3 else 1)
        if body.get("next") is None:
            break
        after = body["next"]
    assert pages == 3
    assert seen == sorted(app_ids)

    # Filters and what each role sees.
    assert [m["id"] for m in call(mc, "GET", "/queue?service=bulk", APP)[1]["messages"]] == [bulk_id]
    assert sorted(m["id"] for m in call(mc, "GET", "/queue", APP)[1]["messages"]) == \
        sorted(app_ids + [bulk_id])
    assert [m["id"] for m in call(mc, "GET", "/queue", OTHER)[1]["messages"]] == [other_id]
    assert len(call(mc, "GET", "/queue", OPS)[1]["messages"]) == 7
    assert call(mc, "GET", "/queue?state=queued", OPS)[1]["messages"] == []
    assert call(mc, "GET", "/queue?state=bogus", OPS)[0] == 400
    assert call(mc, "GET", "/queue?limit=0", OPS)[0] == 400
    assert call(mc, "GET", "/queue?limit=1001", OPS)[0] == 400

    # One message, every field.
    status, m, _ = call(mc, "GET", f"/queue/{app_ids[0]}", APP)
    assert status == 200, m
    assert m["id"] == app_ids[0] and m["service"] == "email" and m["role"] == "app"
    assert m["ingress"] == "http" and m["state"] == "deferred"
    assert m["size"] > 100 and m["attempts"] == 1
    queued_at = parse_time(m["queued_at"])
    assert started - timedelta(seconds=1) <= queued_at <= datetime.now(timezone.utc)
    # retry: [1m] with 10 % jitter, counted from the failed attempt.
    delay = (parse_time(m["next_attempt"]) - queued_at).total_seconds()
    assert 50 <= delay <= 70, m
    assert m["last_reply"]
    assert len(m["recipients"]) == 1
    r = m["recipients"][0]
    assert r["email"] == "r0@example.com" and r["state"] == "pending"
    assert r["smtp_code"] is None and r["smtp_reply"]

    # /ready/upstream while the spool takes messages: the spool is fine, the upstreams are
    # down (issue 9 reports them too), so not ready.
    status, body, _ = call(mc, "GET", "/ready/upstream", None)
    assert (status, body["status"], body["spool"]) == (503, "not ready", "ok"), body
    assert body["services"]["email"]["ok"] is False


def test_roles_retry_and_delete(mailcar_factory, upstream_factory):
    refusing = upstream_factory(mode="plain", reject_data="550 5.7.1 not from you")
    extra = service_yaml("strict", refusing)
    mc = mailcar_factory(spool_config(dead_port(), extra_services=extra))
    mine = submit(mc, "email", APP)
    gone = submit(mc, "email", APP)
    failed = submit(mc, "strict", APP)
    wait_state(mc, "deferred", 2)
    wait_state(mc, "failed", 1)

    # Another role: a 404 worded as for an unknown id, for every method.
    status, hidden, _ = call(mc, "GET", f"/queue/{mine}", OTHER)
    status2, unknown, _ = call(mc, "GET", "/queue/no-such-id", OTHER)
    assert (status, status2) == (404, 404)
    assert hidden["error"]["message"] == f"Message '{mine}' not found."
    assert unknown["error"]["message"] == "Message 'no-such-id' not found."
    assert call(mc, "POST", f"/queue/{mine}/retry", OTHER)[0] == 404
    assert call(mc, "DELETE", f"/queue/{mine}", OTHER)[0] == 404
    # The submitting role without `queue: all`: may read, not change.
    assert call(mc, "GET", f"/queue/{mine}", APP)[0] == 200
    assert call(mc, "POST", f"/queue/{mine}/retry", APP)[0] == 403
    assert call(mc, "DELETE", f"/queue/{mine}", APP)[0] == 403
    # Wrong methods.
    status, _, rh = call(mc, "PUT", f"/queue/{mine}", OPS)
    assert status == 405 and rh["allow"] == "GET, DELETE"
    status, _, rh = call(mc, "GET", f"/queue/{mine}/retry", OPS)
    assert status == 405 and rh["allow"] == "POST"
    assert call(mc, "GET", "/queue", None)[0] == 401

    # Retry: tried again now (the upstream is still down), attempts grows.
    status, body, _ = call(mc, "POST", f"/queue/{mine}/retry", OPS)
    assert status == 200, body
    deadline = time.time() + 20
    while time.time() < deadline:
        m = call(mc, "GET", f"/queue/{mine}", OPS)[1]
        if m["attempts"] == 2 and m["state"] == "deferred":
            break
        time.sleep(0.1)
    assert m["attempts"] == 2 and m["state"] == "deferred", m
    # Not deferred: 409, saying what it is.
    status, body, _ = call(mc, "POST", f"/queue/{failed}/retry", OPS)
    assert status == 409
    assert "is failed, not deferred" in body["error"]["message"]
    assert call(mc, "POST", "/queue/no-such-id/retry", OPS)[0] == 404

    # Delete: the file leaves the spool folder, the log names who did it.
    spool = mc.dir / "spool"
    assert (spool / f"{gone}.msg").exists()
    status, body, _ = call(mc, "DELETE", f"/queue/{gone}", OPS)
    assert (status, body) == (200, {"id": gone, "deleted": True})
    assert not (spool / f"{gone}.msg").exists()
    assert not (spool / f"{gone}.state").exists()
    assert call(mc, "GET", f"/queue/{gone}", OPS)[0] == 404
    assert call(mc, "DELETE", f"/queue/{gone}", OPS)[0] == 404
    lines = [e for e in mc.log_events() if e.get("event") == "queue_delete"]
    assert len(lines) == 1, mc.log()
    assert lines[0]["id"] == gone and lines[0]["role"] == "ops"
    assert lines[0]["identity"] == "api_key#3" and lines[0]["message_role"] == "app"
    assert OPS not in mc.log()


def test_direct_mode_has_no_queue(mailcar_factory, upstream_factory):
    up = upstream_factory(mode="plain")
    mc = mailcar_factory(basic_config(service_yaml("email", up)))
    assert call(mc, "GET", "/queue", "test-key")[0] == 404
    assert call(mc, "GET", "/queue/some-id", "test-key")[0] == 404
    assert call(mc, "DELETE", "/queue/some-id", "test-key")[0] == 404
    # Direct mode: no spool key; ready once the upstream's first probe passed (issue 9).
    deadline = time.time() + 10
    while (status := call(mc, "GET", "/ready/upstream", None)[0]) != 200:
        assert time.time() < deadline, call(mc, "GET", "/ready/upstream", None)
        time.sleep(0.05)
    status, body, _ = call(mc, "GET", "/ready/upstream", None)
    assert body["status"] == "ready" and "spool" not in body, body
    assert body["services"]["email"]["ok"] is True


def test_ready_upstream_says_spool_full(mailcar_factory):
    mc = mailcar_factory(spool_config(dead_port(), spool_extra="  max_bytes: 512\n"))
    status, body, _ = call(mc, "GET", "/ready/upstream", None)
    assert body["spool"] == "ok", body  # (503 all the same: the upstreams are down, issue 9)
    status, body, rh = mc.send("email", {"to": "a@example.com", "subject": "Hi",
                                         "body_text": "x" * 2000}, key=APP)
    assert status == 503, body
    assert int(rh["retry-after"]) > 0
    status, body, _ = call(mc, "GET", "/ready/upstream", None)
    assert (status, body["status"], body["spool"]) == (503, "not ready", "full"), body
    # The pod stays in service (SPEC §9.3).
    assert call(mc, "GET", "/ready", None)[0] == 200
