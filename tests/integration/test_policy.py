"""Policy (issue 4): one budget across both doors, quotas across restarts, reload, metrics."""
import json
import re
import signal
import smtplib
import time

import pytest

from conftest import Mailcar

prometheus_parser = pytest.importorskip("prometheus_client.parser")


def policy_config(upstream, role_limits="[3/minute]", quota="", senders='["*@example.com"]'):
    quota_line = f"    rate_limit: {quota}\n" if quota else ""
    return f"""listen:
  http: 127.0.0.1:{{HTTP_PORT}}
  smtp: 127.0.0.1:{{SMTP_PORT}}
services:
  email:
    host: 127.0.0.1
    port: {upstream.port}
    encryption: none
    from_email: noreply@example.com
{quota_line}  other:
    driver: file
    path: ./other-outbox
roles:
  app:
    services: [email]
    senders: {senders}
    rate_limits: {role_limits}
    max_recipients: 5
credentials:
  - api_key: test-key
    role: app
smtp:
  service: email
  anonymous_role: app
limits:
  shutdown_grace: 5s
log:
  format: json
  level: info
"""


def msg(to="a@example.com", **kw):
    d = {"to": to, "subject": "s", "body_text": "b", "from_email": "app@example.com"}
    d.update(kw)
    return d


SMTP_MESSAGE = b"From: app@example.com\r\nTo: a@example.com\r\nSubject: s\r\n\r\nb\r\n"


def test_http_and_smtp_share_one_budget(upstream_factory, mailcar_factory):
    up = upstream_factory(mode="plain")
    mc = mailcar_factory(policy_config(up))
    assert mc.send("email", msg())[0] == 200
    with smtplib.SMTP("127.0.0.1", mc.smtp_port, timeout=30) as c:
        assert c.sendmail("app@example.com", ["a@example.com"], SMTP_MESSAGE) == {}
    assert mc.send("email", msg())[0] == 200
    # Three recipients used of 3/minute: both doors are now refused, with a wait.
    status, body, headers = mc.send("email", msg())
    assert status == 429, body
    assert body["error"]["message"] == "API limit(s) exceeded."
    retry = int(headers["retry-after"])
    assert 1 <= retry <= 60
    assert headers["x-ratelimit-limit"] == "3"
    assert headers["x-ratelimit-remaining"] == "0"
    assert 1 <= int(headers["x-ratelimit-reset"]) <= 60
    with smtplib.SMTP("127.0.0.1", mc.smtp_port, timeout=30) as c:
        # Refused at MAIL FROM already (or at the end of data): temporary, with the wait.
        with pytest.raises((smtplib.SMTPSenderRefused, smtplib.SMTPDataError)) as err:
            c.sendmail("app@example.com", ["a@example.com"], SMTP_MESSAGE)
        assert err.value.smtp_code == 450 and b"4.7.1" in err.value.smtp_error
        assert re.search(rb"\d+ second", err.value.smtp_error)
    assert len(up.wait_for(3)) == 3
    # A refusal consumed nothing, and a message that can never pass is 403, not 429.
    status, body, _ = mc.send("email", msg(to=[f"r{i}@example.com" for i in range(4)]))
    assert status == 403, body


def test_policy_refusals_are_403_with_the_rule(upstream_factory, mailcar_factory):
    up = upstream_factory(mode="plain")
    mc = mailcar_factory(policy_config(up, role_limits="[]"))
    status, body, _ = mc.send("email", msg(from_email="x@evil.org"))
    assert status == 403 and "x@evil.org" in body["error"]["message"]
    status, body, _ = mc.send("other", msg())
    assert status == 403 and "other" in body["error"]["message"]
    status, body, _ = mc.send("email", msg(to=[f"r{i}@example.com" for i in range(6)]))
    assert status == 403 and "max_recipients" in body["error"]["message"]
    # The service's own from_email is always allowed.
    assert mc.send("email", msg(from_email="noreply@example.com"))[0] == 200
    # Refusals are logged with role and rule, never with the key.
    refusals = [e for e in mc.log_events() if e.get("event") == "message_refused"]
    assert len(refusals) == 3
    for e in refusals:
        assert e["role"] == "app" and e["reason"] and e["identity"] == "api_key#1"
        assert "test-key" not in json.dumps(e)


def test_quota_survives_restart(upstream_factory, tmp_path):
    up = upstream_factory(mode="plain")
    folder = tmp_path / "q"
    folder.mkdir()
    cfg = policy_config(up, role_limits="[]", quota="2/day")
    mc = Mailcar(folder, cfg)
    try:
        assert mc.send("email", msg())[0] == 200
        assert mc.send("email", msg())[0] == 200
        assert mc.send("email", msg())[0] == 429
    finally:
        assert mc.stop() == 0
    mc = Mailcar(folder, cfg)
    try:
        status, body, headers = mc.send("email", msg())
        assert status == 429, "a restart must not reset a daily quota"
        assert int(headers["retry-after"]) > 3600
    finally:
        assert mc.stop() == 0


def test_sighup_changes_limit_without_dropping_connections(upstream_factory, mailcar_factory):
    up = upstream_factory(mode="plain")
    mc = mailcar_factory(policy_config(up, role_limits="[1/minute]"))
    c = smtplib.SMTP("127.0.0.1", mc.smtp_port, timeout=30)
    c.ehlo()
    assert c.sendmail("app@example.com", ["a@example.com"], SMTP_MESSAGE) == {}
    with pytest.raises((smtplib.SMTPSenderRefused, smtplib.SMTPDataError)) as err:
        c.sendmail("app@example.com", ["a@example.com"], SMTP_MESSAGE)
    assert err.value.smtp_code == 450
    mc.config_path.write_text(mc.config_path.read_text().replace("[1/minute]", "[100/minute]"))
    mc.signal(signal.SIGHUP)
    deadline = time.time() + 5
    while '"reloaded"' not in mc.log() and time.time() < deadline:
        time.sleep(0.05)
    assert '"reloaded"' in mc.log()
    # Same connection, new limit.
    c.rset()
    assert c.sendmail("app@example.com", ["a@example.com"], SMTP_MESSAGE) == {}
    c.quit()


def test_metrics_parse_and_match(upstream_factory, mailcar_factory):
    up = upstream_factory(mode="plain")
    mc = mailcar_factory(policy_config(up, role_limits="[2/minute]"))
    assert mc.send("email", msg(to=["a@example.com", "b@example.com"]))[0] == 200
    assert mc.send("email", msg())[0] == 429
    assert mc.send("email", msg(from_email="x@evil.org"))[0] == 403
    status, headers, raw = mc.request("GET", "/metrics")
    assert status == 200 and headers["content-type"].startswith("text/plain")
    families = {f.name: f for f in prometheus_parser.text_string_to_metric_families(raw.decode())}

    def value(family, sample_name, **labels):
        for s in families[family].samples:
            if s.name == sample_name and all(s.labels.get(k) == v for k, v in labels.items()):
                return s.value
        return None

    assert value("mailcar_messages", "mailcar_messages_total", ingress="http", role="app",
                 service="email", outcome="sent") == 1
    assert value("mailcar_messages", "mailcar_messages_total", ingress="http", role="app",
                 service="email", outcome="rate_limited") == 1
    assert value("mailcar_messages", "mailcar_messages_total", ingress="http", role="app",
                 service="email", outcome="rejected") == 1
    assert value("mailcar_recipients", "mailcar_recipients_total", service="email",
                 outcome="sent") == 2
    assert value("mailcar_rate_limited", "mailcar_rate_limited_total", role="app") == 1
    assert value("mailcar_upstream_seconds", "mailcar_upstream_seconds_count") == 1
    assert value("mailcar_connections", "mailcar_connections", listener="http") >= 1


def test_state_goes_to_systemd_state_directory(upstream_factory, tmp_path):
    up = upstream_factory(mode="plain")
    folder = tmp_path / "conf"
    folder.mkdir()
    state_dir = tmp_path / "state"
    state_dir.mkdir()
    cfg = policy_config(up, role_limits="[]", quota="1/day")
    env = {"STATE_DIRECTORY": str(state_dir)}
    mc = Mailcar(folder, cfg, env=env)
    try:
        assert mc.send("email", msg())[0] == 200
    finally:
        assert mc.stop() == 0
    assert (state_dir / "mailcar.state").exists()
    assert not (folder / "mailcar.state").exists()
    mc = Mailcar(folder, cfg, env=env)
    try:
        assert mc.send("email", msg())[0] == 429
    finally:
        assert mc.stop() == 0


def test_oversized_state_file_is_not_read(upstream_factory, tmp_path):
    # Every read has a limit (issue 7): a state file over 4 MiB is not ours; it is skipped with
    # a warning and mailcar starts with fresh windows.
    up = upstream_factory(mode="plain")
    folder = tmp_path / "conf"
    folder.mkdir()
    state = folder / "mailcar.state"
    state.write_bytes(b"x" * (4 * 1024 * 1024 + 1))
    mc = Mailcar(folder, policy_config(up, role_limits="[]", quota="1/day"))
    try:
        assert mc.send("email", msg())[0] == 200
        warnings = [e for e in mc.log_events() if e.get("event") == "state_not_restored"]
        assert len(warnings) == 1, mc.log()
        assert warnings[0]["error"] == f"{state}: larger than the limit of 4194304 bytes"
    finally:
        assert mc.stop() == 0
