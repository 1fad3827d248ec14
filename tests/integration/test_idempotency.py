"""Idempotency keys (SPEC §10.3) over both doors, against real aiosmtpd upstreams: a repeated
key gets the first answer and nothing is sent twice; 409 while the first is in flight, 422 for
a different request, 400 for a bad key; 429 and 5xx are not kept; keys expire after the TTL and
survive a restart in spool mode."""
import asyncio
import smtplib
import threading
import time

from conftest import Mailcar, RecordingHandler

GRACE = 1.0  # how long to watch an upstream for a message that must not come


class SlowHandler(RecordingHandler):
    """Holds each DATA for `delay` seconds; `data_started` is set when one arrives."""

    def __init__(self, delay):
        super().__init__()
        self.delay = delay
        self.data_started = threading.Event()

    async def handle_DATA(self, server, session, envelope):
        self.data_started.set()
        await asyncio.sleep(self.delay)
        return await super().handle_DATA(server, session, envelope)


def config(upstream_port, ttl=None, roles_extra="", spool=None, rate_limits="[]"):
    idem = f"idempotency:\n  ttl: {ttl}\n" if ttl else ""
    spool_yaml = f"spool:\n  path: {spool}\n  retry: [1s]\n" if spool else ""
    return f"""listen:
  http: 127.0.0.1:{{HTTP_PORT}}
  smtp: 127.0.0.1:{{SMTP_PORT}}
services:
  email:
    host: 127.0.0.1
    port: {upstream_port}
    encryption: none
    from_email: noreply@example.com
    connect_timeout: 5s
    command_timeout: 10s
roles:
  app:
    services: [email]
    senders: ["*@example.com"]
    rate_limits: {rate_limits}
  other:
    services: [email]
    senders: ["*@example.com"]
{roles_extra}credentials:
  - api_key: test-key
    role: app
  - smtp_username: other-app
    smtp_password: other-secret
    role: other
smtp:
  service: email
  anonymous_role: app
limits:
  shutdown_grace: 5s
log:
  format: json
  level: info
{idem}{spool_yaml}"""


def payload(subject="hello", to="alice@example.com", sender="app@example.com"):
    return {"to": [to], "subject": subject, "body_text": "body", "from_email": sender}


def keyed(mc, key, body, **kw):
    return mc.send("email", body, headers={"Idempotency-Key": key}, **kw)


def idem_metric(mc, ingress, result):
    _, _, raw = mc.request("GET", "/metrics")
    line = f'mailcar_idempotency_total{{ingress="{ingress}",result="{result}"}} '
    for l in raw.decode().splitlines():
        if l.startswith(line):
            return float(l.split()[-1])
    return 0.0


def test_http_replay_gives_the_first_answer_and_sends_once(upstream_factory, mailcar_factory):
    up = upstream_factory(mode="plain")
    mc = mailcar_factory(config(up.port))
    status, body, headers = keyed(mc, "order-42", payload())
    assert status == 200 and body["count"] == 1
    assert "idempotent-replayed" not in headers
    up.wait_for(1)
    for _ in range(2):
        again, again_body, again_headers = keyed(mc, "order-42", payload())
        assert (again, again_body) == (status, body)
        assert again_headers["idempotent-replayed"] == "true"
    time.sleep(GRACE)
    assert len(up.messages) == 1
    # The key is the role's and the service's: another key is another request.
    assert keyed(mc, "order-43", payload())[0] == 200
    up.wait_for(2)
    assert idem_metric(mc, "http", "replayed") == 2
    assert idem_metric(mc, "http", "fresh") == 2


def test_http_same_key_different_request_is_422(upstream_factory, mailcar_factory):
    up = upstream_factory(mode="plain")
    mc = mailcar_factory(config(up.port))
    assert keyed(mc, "k1", payload("first"))[0] == 200
    status, body, headers = keyed(mc, "k1", payload("second"))
    assert status == 422, body
    assert body["error"]["code"] == 422
    # A different query (a template choice, say) is a different request too.
    status, _, raw = mc.request("POST", "/api/v2/email?x=1", payload("first"),
                                {"X-DreamFactory-API-Key": "test-key", "Idempotency-Key": "k1"})
    assert status == 422, raw
    time.sleep(GRACE)
    assert len(up.messages) == 1


def test_http_bad_keys_are_400(upstream_factory, mailcar_factory):
    up = upstream_factory(mode="plain")
    mc = mailcar_factory(config(up.port))
    for bad in ["", "a b", "x" * 256, "caf\u00e9", "tab\there"]:
        status, body, _ = keyed(mc, bad, payload())
        assert status == 400, (bad, body)
        assert "Idempotency-Key" in body["error"]["message"], repr(bad)
    # DEL is refused by the HTTP parser itself, before any key is looked at: a 400 too.
    assert keyed(mc, "\x7f", payload())[0] == 400
    assert keyed(mc, "x" * 255, payload())[0] == 200
    assert keyed(mc, "!~", payload())[0] == 200
    time.sleep(GRACE)
    assert len(up.messages) == 2
    # 401 comes first: no key is looked at for an unknown caller.
    status, _, _ = mc.send("email", payload(), key="wrong", headers={"Idempotency-Key": ""})
    assert status == 401


def test_http_in_flight_is_409_then_replayed(upstream_factory, mailcar_factory):
    handler = SlowHandler(delay=3)
    up = upstream_factory(mode="plain", handler=handler)
    mc = mailcar_factory(config(up.port))
    first = {}

    def send_first():
        first["answer"] = keyed(mc, "slow-1", payload())

    t = threading.Thread(target=send_first)
    t.start()
    assert handler.data_started.wait(15), "the first request never reached the upstream"
    status, body, _ = keyed(mc, "slow-1", payload())
    assert status == 409, body
    # A different request with that key while in flight: it is the key that conflicts.
    assert keyed(mc, "slow-1", payload("other"))[0] in (409, 422)
    t.join(30)
    assert first["answer"][0] == 200
    status, body, headers = keyed(mc, "slow-1", payload())
    assert (status, body) == first["answer"][:2]
    assert headers["idempotent-replayed"] == "true"
    time.sleep(GRACE)
    assert len(up.messages) == 1
    assert idem_metric(mc, "http", "in_flight") >= 1


def test_http_5xx_and_429_are_not_kept(upstream_factory, mailcar_factory):
    up = upstream_factory(mode="plain", reject_data="554 5.6.0 refused for now")
    mc = mailcar_factory(config(up.port, rate_limits="[3/minute]"))
    status, body, headers = keyed(mc, "retry-me", payload())
    assert status == 500, body
    up.handler.reject_data = None
    status, body, headers = keyed(mc, "retry-me", payload())
    assert status == 200, body
    assert "idempotent-replayed" not in headers
    up.wait_for(1)
    # The role's 3/minute is used up by these three: the next one is a 429, not kept.
    assert keyed(mc, "third", payload())[0] == 200
    for _ in range(2):
        status, body, headers = keyed(mc, "limited", payload())
        assert status == 429, body
        assert "idempotent-replayed" not in headers
    assert idem_metric(mc, "http", "fresh") == 5


def test_http_4xx_answers_are_kept(upstream_factory, mailcar_factory):
    up = upstream_factory(mode="plain")
    mc = mailcar_factory(config(up.port))
    status, body, _ = keyed(mc, "forbidden", payload(sender="evil@elsewhere.test"))
    assert status == 403
    status2, body2, headers = keyed(mc, "forbidden", payload(sender="evil@elsewhere.test"))
    assert (status2, body2) == (status, body)
    assert headers["idempotent-replayed"] == "true"
    status, body, _ = keyed(mc, "no-rcpt", {"subject": "s", "body_text": "b"})
    assert status == 400
    assert keyed(mc, "no-rcpt", {"subject": "s", "body_text": "b"})[2]["idempotent-replayed"] == "true"


def test_ttl_expiry_makes_a_key_new_again(upstream_factory, mailcar_factory):
    up = upstream_factory(mode="plain")
    mc = mailcar_factory(config(up.port, ttl="1s"))
    assert keyed(mc, "short", payload("one"))[0] == 200
    assert keyed(mc, "short", payload("one"))[2]["idempotent-replayed"] == "true"
    time.sleep(1.5)
    status, body, headers = keyed(mc, "short", payload("two"))
    assert status == 200, body
    assert "idempotent-replayed" not in headers
    up.wait_for(2)


def smtp_message(key=None, subject="smtp hello"):
    lines = ["From: app@example.com", "To: alice@example.com", f"Subject: {subject}"]
    if key is not None:
        lines.append(f"Idempotency-Key: {key}")
    return ("\r\n".join(lines) + "\r\n\r\nbody\r\n").encode()


def smtp_send(mc, data, login=None):
    with smtplib.SMTP("127.0.0.1", mc.smtp_port, timeout=30) as c:
        c.ehlo("client.test")
        if login:
            c.login(*login)
        code, _ = c.mail("app@example.com")
        assert code == 250
        code, _ = c.rcpt("alice@example.com")
        assert code == 250
        return c.data(data)


def test_smtp_key_once_per_role_and_header_removed(upstream_factory, mailcar_factory):
    up = upstream_factory(mode="plain")
    mc = mailcar_factory(config(up.port))
    code, reply = smtp_send(mc, smtp_message("smtp-1"))
    assert code == 250, reply
    up.wait_for(1)
    assert b"idempotency-key" not in up.messages[0]["data"].lower()
    msg_id = up.messages[0]["data"].split(b"Message-ID: <")[1].split(b">")[0].decode()
    # A repeat (even a resent copy with another subject) is answered and not sent.
    code, reply = smtp_send(mc, smtp_message("smtp-1", subject="resent"))
    assert code == 250
    assert reply.decode() == f"2.0.0 Already accepted as {msg_id}"
    time.sleep(GRACE)
    assert len(up.messages) == 1
    # Another role's key of the same name is its own.
    code, reply = smtp_send(mc, smtp_message("smtp-1"), login=("other-app", "other-secret"))
    assert code == 250 and b"Already" not in reply
    up.wait_for(2)
    # The HTTP door's keys are apart from the SMTP door's.
    assert keyed(mc, "smtp-1", payload())[0] == 200
    up.wait_for(3)
    assert idem_metric(mc, "smtp", "replayed") == 1
    # A malformed key is refused, and nothing is sent.
    code, reply = smtp_send(mc, smtp_message("bad key"))
    assert code == 554 and b"Idempotency-Key" in reply
    time.sleep(GRACE)
    assert len(up.messages) == 3


def test_smtp_failed_delivery_does_not_keep_the_key(upstream_factory, mailcar_factory):
    up = upstream_factory(mode="plain", reject_data="451 4.3.0 try later")
    mc = mailcar_factory(config(up.port))
    code, reply = smtp_send(mc, smtp_message("smtp-retry"))
    assert code == 451, reply
    up.handler.reject_data = None
    code, reply = smtp_send(mc, smtp_message("smtp-retry"))
    assert code == 250 and b"Already" not in reply
    up.wait_for(1)


def test_spool_mode_keys_survive_a_restart(upstream_factory, tmp_path):
    up = upstream_factory(mode="plain")
    folder = tmp_path / "mc"
    folder.mkdir()
    cfg = config(up.port, spool=str(tmp_path / "spool"))
    mc = Mailcar(folder, cfg)
    try:
        status, body, _ = keyed(mc, "durable-1", payload())
        assert status == 202, body
        code, reply = smtp_send(mc, smtp_message("durable-2"))
        assert code == 250, reply
        smtp_id = reply.decode().rsplit(" ", 1)[-1]
        up.wait_for(2, timeout=20)
    finally:
        assert mc.stop() == 0
    journal = tmp_path / "spool" / "idempotency.journal"
    assert journal.exists()
    # A torn last record (a crash mid-append) loses only itself.
    with open(journal, "ab") as f:
        f.write(b"K 99999999999999 " + b"ab" * 10)
    mc = Mailcar(folder, cfg)
    try:
        status2, body2, headers = keyed(mc, "durable-1", payload())
        assert (status2, body2) == (status, body)
        assert headers["idempotent-replayed"] == "true"
        code, reply = smtp_send(mc, smtp_message("durable-2"))
        assert code == 250 and reply.decode() == f"2.0.0 Already accepted as {smtp_id}"
        assert keyed(mc, "durable-1", payload("changed"))[0] == 422
        time.sleep(GRACE)
        assert len(up.messages) == 2
        assert any(e.get("event") == "idempotency_journal_truncated" for e in mc.log_events())
    finally:
        assert mc.stop() == 0
    # Compacted at start: the torn record is gone, the two answers are there once each.
    text = journal.read_bytes()
    assert text.count(b"\nK ") + text.startswith(b"K ") == 2
    assert b"ab" * 10 not in text
