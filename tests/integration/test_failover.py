"""Failover and routing (issue 9, SPEC §9.2): fallback lists on both doors and in spool mode,
routes for SMTP-submitted mail by role and by sender, against real aiosmtpd upstreams."""
import smtplib
import subprocess
import time

import pytest

from conftest import dead_port, metric, MAILCAR_BIN


PASSWORD = "mkt-pa55word"
PAYLOAD = {"to": "alice@example.com", "subject": "failover", "body_text": "hello",
           "from_email": "app@example.com"}


def failover_config(primary, backup_port, extra_services="", routes="", spool="", smtp=False):
    """`primary` is a services-entry body (host/port/encryption lines) of the primary."""
    listen_smtp = "  smtp: 127.0.0.1:{SMTP_PORT}\n" if smtp else ""
    return f"""listen:
  http: 127.0.0.1:{{HTTP_PORT}}
{listen_smtp}services:
  primary:
{primary}    from_email: noreply@example.com
    connect_timeout: 3s
    command_timeout: 5s
    probe_interval: 0
    fallback: [backup]
  backup:
    host: 127.0.0.1
    port: {backup_port}
    encryption: none
    from_email: noreply@example.com
    probe_interval: 0
{extra_services}roles:
  app:
    services: [primary]  # app
    senders: ["*"]
  marketing:
    services: [primary]  # marketing
    senders: ["*"]
credentials:
  - api_key: test-key
    role: app
  - smtp_username: mkt
    smtp_password: {PASSWORD}
    role: marketing
smtp:
  service: primary
  anonymous_role: app
  hostname: mailcar.test
{routes}{spool}limits:
  idle_timeout: 10s
  shutdown_grace: 5s
log:
  format: json
  level: debug
"""


def plain(port):
    return f"    host: 127.0.0.1\n    port: {port}\n    encryption: none\n"


def message_events(mc):
    return [e for e in mc.log_events() if e.get("event") == "message"]


def assert_delivered_via_backup(mc, backup, body):
    assert body["delivered_via"] == "backup", body
    assert body["count"] == 1
    assert backup.wait_for(1)[0]["rcpt_tos"] == ["alice@example.com"]
    line = message_events(mc)[-1]
    assert line["service"] == "primary" and line["delivered_via"] == "backup", line
    assert line["outcome"] == "sent"
    steps = [e for e in mc.log_events() if e.get("event") == "failover"]
    assert steps and steps[-1]["service"] == "primary" and steps[-1]["next"] == "backup", steps
    assert metric(mc, "mailcar_messages_total", ingress="http", role="app", service="backup",
                  outcome="sent") == 1
    assert metric(mc, "mailcar_messages_total", ingress="http", role="app", service="primary",
                  outcome="sent") is None
    assert metric(mc, "mailcar_recipients_total", service="backup", outcome="sent") == 1


def test_primary_refusing_connections_fails_over(upstream_factory, mailcar_factory):
    backup = upstream_factory()
    mc = mailcar_factory(failover_config(plain(dead_port()), backup.port))
    status, body, _ = mc.send("primary", PAYLOAD)
    assert status == 200, body
    assert_delivered_via_backup(mc, backup, body)
    step = [e for e in mc.log_events() if e.get("event") == "failover"][-1]
    assert step["status"] == "connection_refused"


@pytest.mark.parametrize("reply", ["421 4.3.2 Service shutting down",
                                   "451 4.3.0 Temporary local problem"])
def test_primary_4xx_to_rcpt_fails_over(upstream_factory, mailcar_factory, reply):
    primary = upstream_factory(reject={"alice@example.com": reply})
    backup = upstream_factory()
    mc = mailcar_factory(failover_config(plain(primary.port), backup.port))
    status, body, _ = mc.send("primary", PAYLOAD)
    assert status == 200, body
    assert_delivered_via_backup(mc, backup, body)
    assert primary.messages == []
    step = [e for e in mc.log_events() if e.get("event") == "failover"][-1]
    assert step["upstream_code"] == int(reply[:3])


def test_primary_451_to_data_fails_over(upstream_factory, mailcar_factory):
    primary = upstream_factory(reject_data="451 4.3.0 Try again later")
    backup = upstream_factory()
    mc = mailcar_factory(failover_config(plain(primary.port), backup.port))
    status, body, _ = mc.send("primary", PAYLOAD)
    assert status == 200, body
    assert_delivered_via_backup(mc, backup, body)


def test_primary_with_bad_certificate_fails_over(certs, upstream_factory, mailcar_factory):
    primary = upstream_factory(mode="starttls", wrong_cert=True)
    backup = upstream_factory()
    entry = (f"    host: localhost\n    port: {primary.port}\n    encryption: tls\n"
             f"    ca_file: {certs.ca}\n")
    mc = mailcar_factory(failover_config(entry, backup.port))
    status, body, _ = mc.send("primary", PAYLOAD)
    assert status == 200, body
    assert_delivered_via_backup(mc, backup, body)
    step = [e for e in mc.log_events() if e.get("event") == "failover"][-1]
    assert step["status"] == "certificate_error"


def test_primary_550_is_final(upstream_factory, mailcar_factory):
    primary = upstream_factory(reject={"alice@example.com": "550 5.1.1 No such user"})
    backup = upstream_factory()
    mc = mailcar_factory(failover_config(plain(primary.port), backup.port))
    status, body, _ = mc.send("primary", PAYLOAD)
    assert status == 500, body
    assert body["error"]["context"]["smtp_code"] == 550
    assert backup.messages == []
    assert not [e for e in mc.log_events() if e.get("event") == "failover"]
    assert message_events(mc)[-1]["delivered_via"] == "primary"


def test_both_down_reports_the_last_failure(upstream_factory, mailcar_factory):
    mc = mailcar_factory(failover_config(plain(dead_port()), dead_port()))
    status, body, _ = mc.send("primary", PAYLOAD)
    assert status == 500, body
    assert body["error"]["message"] == "Connection refused"
    assert body["error"]["context"]["retryable"] is True
    assert message_events(mc)[-1]["delivered_via"] == "backup"


def test_smtp_door_fails_over(upstream_factory, mailcar_factory):
    backup = upstream_factory()
    mc = mailcar_factory(failover_config(plain(dead_port()), backup.port, smtp=True))
    with smtplib.SMTP("127.0.0.1", mc.smtp_port, timeout=30) as c:
        c.sendmail("app@example.com", ["alice@example.com"],
                   b"From: app@example.com\r\nTo: alice@example.com\r\nSubject: s\r\n\r\nhi\r\n")
    assert backup.wait_for(1)[0]["rcpt_tos"] == ["alice@example.com"]
    line = message_events(mc)[-1]
    assert line["ingress"] == "smtp" and line["delivered_via"] == "backup", line


def test_spool_attempt_fails_over(upstream_factory, mailcar_factory):
    backup = upstream_factory()
    spool = "spool:\n  path: ./spool\n  retry: [1s]\n"
    mc = mailcar_factory(failover_config(plain(dead_port()), backup.port, spool=spool))
    status, body, _ = mc.send("primary", PAYLOAD)
    assert status == 202, body
    assert backup.wait_for(1)[0]["rcpt_tos"] == ["alice@example.com"]
    deadline = time.time() + 10
    while not [e for e in mc.log_events() if e.get("event") == "delivery"]:
        assert time.time() < deadline, mc.log()
        time.sleep(0.05)
    attempt = [e for e in mc.log_events() if e.get("event") == "delivery"][-1]
    assert attempt["result"] == "sent" and attempt["service"] == "primary", attempt
    assert attempt["delivered_via"] == "backup"
    assert metric(mc, "mailcar_delivery_attempts_total", service="backup", result="sent") == 1


def test_fallback_cycle_is_a_config_error(tmp_path):
    cfg = tmp_path / "m.yaml"
    cfg.write_text("""services:
  a:
    host: 127.0.0.1
    fallback: [b]
  b:
    host: 127.0.0.1
    fallback: [a]
""")
    r = subprocess.run([MAILCAR_BIN, "--check", "-c", str(cfg)], capture_output=True, text=True,
                       timeout=30)
    assert r.returncode == 1
    assert f"{cfg}:7:16: services.b.fallback[0]: fallback cycle: a -> b -> a" in r.stderr, r.stderr
    cfg.write_text("services:\n  a:\n    host: 127.0.0.1\n    fallback: [nope]\n")
    r = subprocess.run([MAILCAR_BIN, "--check", "-c", str(cfg)], capture_output=True, text=True,
                       timeout=30)
    assert r.returncode == 1
    assert f"{cfg}:4:16: services.a.fallback[0]: no service named 'nope'" in r.stderr, r.stderr


# ---- routes ------------------------------------------------------------------------------------

ROUTES = """routes:
  - {role: marketing, service: bulk}
  - {sender: "*@brand-b.example", service: brandb}
"""


def routing_config(primary, bulk, brandb):
    extra = (f"  bulk:\n{plain(bulk.port)}    probe_interval: 0\n"
             f"  brandb:\n{plain(brandb.port)}    probe_interval: 0\n")
    cfg = failover_config(plain(primary.port), primary.port, extra_services=extra, routes=ROUTES,
                          smtp=True)
    # app may use brandb, marketing bulk: the routes need them.
    return (cfg.replace("[primary]  # app", "[primary, brandb]")
            .replace("[primary]  # marketing", "[primary, bulk]"))


def smtp_send(mc, sender, login=None):
    with smtplib.SMTP("127.0.0.1", mc.smtp_port, timeout=30) as c:
        if login:
            c.login(*login)
        c.sendmail(sender, ["alice@example.com"],
                   f"From: {sender}\r\nTo: alice@example.com\r\nSubject: r\r\n\r\nhi\r\n".encode())


def test_routes_by_role_and_by_sender(upstream_factory, mailcar_factory):
    primary, bulk, brandb = upstream_factory(), upstream_factory(), upstream_factory()
    mc = mailcar_factory(routing_config(primary, bulk, brandb))
    smtp_send(mc, "news@example.com", login=("mkt", PASSWORD))  # role route
    assert bulk.wait_for(1)[0]["mail_from"] == "news@example.com"
    smtp_send(mc, "shop@brand-b.example")  # sender route (anonymous role app)
    assert brandb.wait_for(1)[0]["mail_from"] == "shop@brand-b.example"
    smtp_send(mc, "app@example.com")  # no route: smtp.service
    assert primary.wait_for(1)[0]["mail_from"] == "app@example.com"
    assert len(bulk.messages) == 1 and len(brandb.messages) == 1
    services = [(e["role"], e["service"]) for e in message_events(mc)]
    assert services == [("marketing", "bulk"), ("app", "brandb"), ("app", "primary")]
    # The HTTP door keeps choosing by URL.
    status, body, _ = mc.send("primary", {**PAYLOAD, "from_email": "x@brand-b.example"})
    assert status == 200 and body["delivered_via"] == "primary", body


def test_route_to_a_service_the_role_may_not_use_is_refused(upstream_factory, mailcar_factory):
    primary, bulk, brandb = upstream_factory(), upstream_factory(), upstream_factory()
    cfg = routing_config(primary, bulk, brandb).replace("[primary, bulk]", "[primary]")
    mc = mailcar_factory(cfg)
    with smtplib.SMTP("127.0.0.1", mc.smtp_port, timeout=30) as c:
        c.login("mkt", PASSWORD)
        code, reply = c.mail("news@example.com")
    assert code == 550, reply
    assert bulk.messages == [] and primary.messages == []
