"""Capture and mirror (SPEC §10.4) over both doors, against a real aiosmtpd upstream: a role
with `capture:` has its messages checked and counted as usual and written to a file service
instead of relayed; `mirror_to` adds envelope recipients (never header ones) to every relayed
message, outside the answer's count."""
import smtplib
import subprocess
import time

from conftest import MAILCAR_BIN

GRACE = 1.0


def config(upstream_port, outbox="./outbox"):
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
    mirror_to: [service-audit@example.org]
  outbox:
    driver: file
    path: {outbox}
roles:
  staging:
    services: [email]
    senders: ["*@example.com"]
    rate_limits: [3/minute]
    capture: outbox
  watched:
    services: [email]
    senders: ["*@example.com"]
    mirror_to: [role-audit@example.org, service-audit@example.org]
credentials:
  - api_key: staging-key
    role: staging
  - api_key: watched-key
    role: watched
  - smtp_username: staging-app
    smtp_password: staging-secret
    role: staging
smtp:
  service: email
  anonymous_role: watched
limits:
  shutdown_grace: 5s
log:
  format: json
  level: info
"""


def payload(subject="hi", to=("alice@example.com",)):
    return {"to": list(to), "subject": subject, "body_text": "body", "from_email": "app@example.com"}


def metric_lines(mc, name):
    _, _, raw = mc.request("GET", "/metrics")
    return [l for l in raw.decode().splitlines() if l.startswith(name + "{")]


def smtp_send(mc, rcpts, login=None, subject="smtp"):
    data = (f"From: app@example.com\r\nTo: {', '.join(rcpts)}\r\nSubject: {subject}\r\n\r\nbody\r\n"
            .encode())
    with smtplib.SMTP("127.0.0.1", mc.smtp_port, timeout=30) as c:
        c.ehlo("client.test")
        if login:
            c.login(*login)
        assert c.mail("app@example.com")[0] == 250
        for r in rcpts:
            assert c.rcpt(r)[0] == 250
        return c.data(data)


def test_capture_writes_the_file_and_relays_nothing(upstream_factory, mailcar_factory):
    up = upstream_factory(mode="plain")
    mc = mailcar_factory(config(up.port))
    status, body, _ = mc.send("email", payload("captured one", to=("a@example.com", "b@example.com")),
                              key="staging-key")
    assert status == 200, body
    assert body["captured"] is True and body["count"] == 2
    eml = mc.dir / "outbox" / f"{body['id']}.eml"
    assert eml.exists()
    assert b"Subject: captured one" in eml.read_bytes()
    code, reply = smtp_send(mc, ["c@example.com"], login=("staging-app", "staging-secret"))
    assert code == 250, reply
    assert len(list((mc.dir / "outbox").glob("*.eml"))) == 2
    time.sleep(GRACE)
    assert up.messages == []
    # Checked and counted as usual: the role's sender rule and 3/minute still hold.
    status, body, _ = mc.send("email", {**payload(), "from_email": "x@elsewhere.test"},
                              key="staging-key")
    assert status == 403
    status, body, _ = mc.send("email", payload(), key="staging-key")
    assert status == 429, body
    lines = metric_lines(mc, "mailcar_messages_total")
    assert 'mailcar_messages_total{ingress="http",role="staging",service="email",outcome="captured"} 1' in lines
    assert 'mailcar_messages_total{ingress="smtp",role="staging",service="email",outcome="captured"} 1' in lines
    events = [e for e in mc.log_events() if e.get("event") == "message"]
    assert [e["outcome"] for e in events] == ["captured", "captured"]
    # Mirror recipients never go to captured messages.
    assert "service-audit@example.org" not in eml.read_text()


def test_mirror_adds_envelope_recipients_only(upstream_factory, mailcar_factory):
    up = upstream_factory(mode="plain")
    mc = mailcar_factory(config(up.port))
    status, body, _ = mc.send("email", payload("watched"), key="watched-key")
    assert status == 200, body
    assert body["count"] == 1 and "captured" not in body
    code, reply = smtp_send(mc, ["bob@example.com"])
    assert code == 250, reply
    msgs = up.wait_for(2)
    for m, rcpt in zip(msgs, ["alice@example.com", "bob@example.com"]):
        assert m["rcpt_tos"] == [rcpt, "role-audit@example.org", "service-audit@example.org"]
        assert b"audit" not in m["data"], "a mirror recipient must never be named in a header"
    lines = metric_lines(mc, "mailcar_mirrored_recipients_total")
    assert 'mailcar_mirrored_recipients_total{service="email"} 4' in lines
    recipients = metric_lines(mc, "mailcar_recipients_total")
    assert 'mailcar_recipients_total{service="email",outcome="sent"} 2' in recipients
    events = [e for e in mc.log_events() if e.get("event") == "message"]
    assert [e["mirrored"] for e in events] == [2, 2]
    assert [e["recipients"] for e in events] == [1, 1]


def test_mirror_recipient_refused_upstream_does_not_change_the_answer(upstream_factory,
                                                                      mailcar_factory):
    up = upstream_factory(mode="plain", reject={"role-audit@example.org": "550 5.1.1 no such user"})
    mc = mailcar_factory(config(up.port))
    status, body, _ = mc.send("email", payload(), key="watched-key")
    assert status == 200, body
    assert body["count"] == 1 and "rejected" not in body
    up.wait_for(1)
    assert any(e.get("event") == "mirror_rejected" for e in mc.log_events())


def test_capture_must_be_a_file_service(tmp_path):
    cfg = config(2525).replace("capture: outbox", "capture: email")
    path = tmp_path / "bad.yaml"
    path.write_text(cfg.replace("{HTTP_PORT}", "2580").replace("{SMTP_PORT}", "2525"))
    out = subprocess.run([MAILCAR_BIN, "--check", "-c", str(path)], capture_output=True, text=True,
                         timeout=30)
    assert out.returncode == 1
    text = out.stdout + out.stderr
    assert "capture" in text and "driver: file" in text
