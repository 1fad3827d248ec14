"""Spool mode (issue 8, SPEC §7.1) against real aiosmtpd upstreams: acknowledged after fsync,
retried until the upstream takes it, paced to the quota, failures reported by DSN, resumed
after a restart, refused (never acknowledged) when the spool is full."""
import email
import email.policy
import re
import smtplib
import time

import pytest

from conftest import dead_port, metric, Mailcar, RecordingHandler



def spool_config(port, quota="", spool_extra="", retry="[1s]"):
    quota_line = f"    rate_limit: {quota}\n" if quota else ""
    extra = "".join(f"  {line}\n" for line in spool_extra.strip("\n").splitlines())
    return f"""listen:
  http: 127.0.0.1:{{HTTP_PORT}}
  smtp: 127.0.0.1:{{SMTP_PORT}}
services:
  email:
    host: 127.0.0.1
    port: {port}
    encryption: none
    from_email: noreply@example.com
    connect_timeout: 2s
    command_timeout: 5s
{quota_line}roles:
  app:
    senders: ["*@example.com"]
credentials:
  - api_key: test-key
    role: app
smtp:
  service: email
  anonymous_role: app
spool:
  path: ./spool
  retry: {retry}
{extra}limits:
  shutdown_grace: 5s
log:
  format: json
  level: info
"""


def msg(i=0, to="a@example.com", sender="app@example.com"):
    return {"to": to, "subject": f"m{i}", "body_text": f"body {i}", "from_email": sender}


def smtp_submit(mc, i, rcpts=("a@example.com",), sender="app@example.com"):
    data = (f"From: {sender}\r\nTo: {', '.join(rcpts)}\r\nSubject: s{i}\r\n"
            f"Message-ID: <smtp{i}.{time.time_ns()}@test>\r\n\r\nsmtp body {i}\r\n").encode()
    with smtplib.SMTP("127.0.0.1", mc.smtp_port, timeout=30) as c:
        c.ehlo()
        c.mail(sender)
        for r in rcpts:
            c.rcpt(r)
        code, reply = c.data(data)
    return code, reply.decode()


def spooled_files(mc):
    return sorted(p.name for p in (mc.dir / "spool").glob("*.msg"))


def wait_until(predicate, timeout=15, what="condition"):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def subjects(messages):
    return [email.message_from_bytes(m["data"], policy=email.policy.default)["subject"]
            for m in messages]


def test_acknowledged_on_disk_and_delivered_once_the_upstream_is_back(upstream_factory,
                                                                      mailcar_factory):
    port = dead_port()  # nothing listens yet: the upstream is down
    mc = mailcar_factory(spool_config(port))
    ids = []
    for i in range(3):
        status, body, _ = mc.send("email", msg(i))
        assert status == 202 and body["queued"] is True and body["count"] == 1, body
        ids.append(body["id"])
    for i in range(2):
        code, reply = smtp_submit(mc, i)
        assert code == 250
        ids.append(re.search(r"queued as (\S+)", reply).group(1))
    # Every acknowledged message is a file in the spool before the upstream ever saw it.
    assert spooled_files(mc) == sorted(f"{i}.msg" for i in ids)
    wait_until(lambda: (metric(mc, "mailcar_delivery_attempts_total", result="deferred") or 0)
               >= 5, what="failed first attempts")
    up = upstream_factory(mode="plain", port=port)
    up.wait_for(5, timeout=20)
    wait_until(lambda: spooled_files(mc) == [], what="the spool to empty")
    assert sorted(subjects(up.messages)) == ["m0", "m1", "m2", "s0", "s1"]
    assert metric(mc, "mailcar_messages_total", ingress="http", outcome="queued") == 3
    assert metric(mc, "mailcar_messages_total", ingress="smtp", outcome="queued") == 2
    assert metric(mc, "mailcar_delivery_attempts_total", service="email", result="sent") == 5
    time.sleep(1.5)
    assert len(up.messages) == 5, "delivered twice"


class FlakyHandler(RecordingHandler):
    """Answers 451 to the first `failures` DATA commands, then accepts."""

    def __init__(self, failures):
        super().__init__()
        self.failures = failures

    async def handle_DATA(self, server, session, envelope):
        if self.failures > 0:
            self.failures -= 1
            return "451 4.3.0 Try again later"
        return await super().handle_DATA(server, session, envelope)


def test_a_4xx_is_retried_until_250(upstream_factory, mailcar_factory):
    up = upstream_factory(mode="plain", handler=FlakyHandler(2))
    mc = mailcar_factory(spool_config(up.port))
    status, body, _ = mc.send("email", msg(1))
    assert status == 202
    up.wait_for(1, timeout=15)
    wait_until(lambda: spooled_files(mc) == [], what="the spool to empty")
    assert metric(mc, "mailcar_delivery_attempts_total", result="deferred") == 2
    assert metric(mc, "mailcar_delivery_attempts_total", result="sent") == 1
    attempts = [e for e in mc.log_events() if e.get("event") == "delivery"]
    assert [e["result"] for e in attempts] == ["deferred", "deferred", "sent"]
    assert attempts[0]["upstream_code"] == 451


class RefuseNonBounces(RecordingHandler):
    """Refuses every message with 554 except delivery status notifications (from <>)."""

    async def handle_DATA(self, server, session, envelope):
        if envelope.mail_from not in ("", "<>"):
            return "554 5.7.1 Message refused by policy"
        return await super().handle_DATA(server, session, envelope)


def parse_dsn(data):
    report = email.message_from_bytes(data, policy=email.policy.default)
    assert not report.defects, report.defects
    assert report.get_content_type() == "multipart/report"
    assert report.get_param("report-type") == "delivery-status"
    parts = list(report.iter_parts())
    assert [p.get_content_type() for p in parts][:2] == ["text/plain", "message/delivery-status"]
    for part in report.walk():
        assert not part.defects, part.defects
    return report, parts


def test_a_5xx_fails_for_good_and_the_sender_gets_a_dsn(upstream_factory, mailcar_factory):
    up = upstream_factory(mode="plain", handler=RefuseNonBounces())
    mc = mailcar_factory(spool_config(up.port))
    status, body, _ = mc.send("email", msg(7, sender="app@example.com"))
    assert status == 202
    dsn = up.wait_for(1, timeout=15)[0]
    assert dsn["mail_from"] in ("", "<>") and dsn["rcpt_tos"] == ["app@example.com"]
    report, parts = parse_dsn(dsn["data"])
    status_text = parts[1].as_string()
    assert "Action: failed" in status_text and "Status: 5.7.1" in status_text
    assert "a@example.com" in status_text
    assert "Subject: m7" in parts[2].as_string()  # the original's headers come back
    assert "body 7" not in dsn["data"].decode()   # ... and only the headers (RET default)
    # The failed message stays visible (keep_failed) and is not tried again.
    wait_until(lambda: (metric(mc, "mailcar_spool_messages", state="failed") or 0) == 1,
               what="failed gauge")
    assert metric(mc, "mailcar_delivery_attempts_total", result="failed") == 1
    assert spooled_files(mc) == [f"{body['id']}.msg"]


def test_mixed_recipients_the_good_ones_get_it_the_bad_one_is_reported(upstream_factory,
                                                                         mailcar_factory):
    up = upstream_factory(mode="plain", reject={"bad@example.com": "550 5.1.1 No such user"})
    mc = mailcar_factory(spool_config(up.port))
    code, _ = smtp_submit(mc, 3, rcpts=("a@example.com", "bad@example.com", "b@example.com"))
    assert code == 250
    got = up.wait_for(2, timeout=15)
    original = [m for m in got if m["mail_from"] == "app@example.com"][0]
    assert sorted(original["rcpt_tos"]) == ["a@example.com", "b@example.com"]
    dsn = [m for m in got if m["mail_from"] in ("", "<>")][0]
    _, parts = parse_dsn(dsn["data"])
    status_text = parts[1].as_string()
    assert "Final-Recipient: rfc822; bad@example.com" in status_text
    assert "Status: 5.1.1" in status_text and "a@example.com" not in status_text


def test_quota_paces_a_burst_without_refusing_or_losing(upstream_factory, mailcar_factory):
    up = upstream_factory(mode="plain")
    mc = mailcar_factory(spool_config(up.port, quota="5/second"))
    start = time.time()
    for i in range(20):
        status, _, _ = mc.send("email", msg(i))
        assert status == 202, "the quota holds messages; it never refuses them in spool mode"
    accepted_in = time.time() - start
    got = up.wait_for(20, timeout=30)
    span = time.time() - start
    # 5/second with a burst of 5: the last of 20 cannot leave before ~3 s.
    assert span >= 2.5, f"20 messages went out in {span:.2f}s despite 5/second"
    assert accepted_in < span
    assert subjects(got) == [f"m{i}" for i in range(20)], "arrival order per service"
    assert metric(mc, "mailcar_messages_total", outcome="rate_limited") is None


def test_restart_resumes_the_spool(upstream_factory, tmp_path):
    port = dead_port()
    folder = tmp_path / "mc"
    folder.mkdir()
    cfg = spool_config(port)
    mc = Mailcar(folder, cfg)
    try:
        for i in range(4):
            assert mc.send("email", msg(i))[0] == 202
        assert smtp_submit(mc, 9)[0] == 250
    finally:
        assert mc.stop() == 0
    assert len(list((folder / "spool").glob("*.msg"))) == 5
    up = upstream_factory(mode="plain", port=port)
    mc = Mailcar(folder, cfg)
    try:
        up.wait_for(5, timeout=20)
        wait_until(lambda: not list((folder / "spool").glob("*.msg")), what="empty spool")
        time.sleep(1)
        assert sorted(subjects(up.messages)) == ["m0", "m1", "m2", "m3", "s9"]
    finally:
        assert mc.stop() == 0


def test_full_spool_refuses_and_recovers_by_itself(upstream_factory, mailcar_factory):
    port = dead_port()
    mc = mailcar_factory(spool_config(port, spool_extra="max_bytes: 3KB"))
    accepted, refused = [], None
    for i in range(20):
        status, body, headers = mc.send("email", msg(i))
        if status == 202:
            accepted.append(body["id"])
            continue
        refused = (status, body, headers)
        break
    assert refused is not None, "max_bytes never refused"
    status, body, headers = refused
    assert status == 503 and int(headers["retry-after"]) > 0, body
    code, reply = smtp_submit(mc, 1)
    assert code == 452 and reply.startswith("4.3.1"), reply
    assert len(spooled_files(mc)) == len(accepted) > 0
    # Space returns when the upstream takes what was acknowledged; then new mail is accepted.
    up = upstream_factory(mode="plain", port=port)
    up.wait_for(len(accepted), timeout=20)
    wait_until(lambda: spooled_files(mc) == [], what="the spool to empty")
    status, body, _ = mc.send("email", msg(99))
    assert status == 202, body
    up.wait_for(len(accepted) + 1, timeout=20)


@pytest.fixture
def small_filesystem(tmp_path):
    """A 128 KiB tmpfs (root only): a real disk-full, not a simulated one."""
    import os
    import subprocess
    mount_point = tmp_path / "smallfs"
    mount_point.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=128k", "tmpfs", str(mount_point)],
                       capture_output=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.decode().strip()}")
    yield mount_point
    subprocess.run(["umount", "-l", str(mount_point)], check=False)


def test_a_full_disk_is_refused_never_acknowledged(upstream_factory, mailcar_factory,
                                                   small_filesystem):
    port = dead_port()
    cfg = spool_config(port).replace("path: ./spool", f"path: {small_filesystem}/spool")
    mc = mailcar_factory(cfg)
    big = "x" * 3000
    accepted, status = [], 202
    for i in range(200):
        payload = msg(i)
        payload["body_text"] = f"{big} {i}"
        status, body, headers = mc.send("email", payload)
        if status != 202:
            break
        accepted.append(body["id"])
    assert status == 503 and int(headers["retry-after"]) > 0, (status, body)
    assert len(accepted) > 3
    code, reply = smtp_submit(mc, 5)
    assert code == 452 and reply.startswith("4.3.1"), reply
    status, _, _ = mc.request("GET", "/ready")
    assert status == 200, "a full spool must not take the pod out of service"
    # Nothing half-written stays behind, and everything acknowledged is whole on disk.
    names = sorted(p.name for p in (small_filesystem / "spool").iterdir() if p.is_file())
    assert not [n for n in names if n.endswith(".tmp")], names
    up = upstream_factory(mode="plain", port=port)
    got = up.wait_for(len(accepted), timeout=30)
    ids = {str(email.message_from_bytes(m["data"], policy=email.policy.default)["message-id"])
           .strip("<>") for m in got}
    assert ids == set(accepted)
    wait_until(lambda: not list((small_filesystem / "spool").glob("*.msg")), what="empty spool")
    # Space is back: mail is accepted again without a restart.
    status, body, _ = mc.send("email", msg(1000))
    assert status == 202, body


class DeferNonBounces(RecordingHandler):
    """451 for every message except delivery status notifications (from <>)."""

    async def handle_DATA(self, server, session, envelope):
        if envelope.mail_from not in ("", "<>"):
            return "451 4.3.0 Try again later"
        return await super().handle_DATA(server, session, envelope)


def test_max_age_fails_the_message_and_reports_it(upstream_factory, mailcar_factory):
    up = upstream_factory(mode="plain", handler=DeferNonBounces())
    mc = mailcar_factory(spool_config(up.port, retry="[500ms]", spool_extra="max_age: 2s"))
    start = time.time()
    status, body, _ = mc.send("email", msg(4))
    assert status == 202
    dsn = up.wait_for(1, timeout=15)[0]
    assert time.time() - start >= 1.8, "failed before max_age"
    _, parts = parse_dsn(dsn["data"])
    status_text = parts[1].as_string()
    assert "Action: failed" in status_text and "Status: 4." in status_text, status_text
    attempts = [e for e in mc.log_events() if e.get("event") == "delivery"
                and e["id"] == body["id"]]
    assert len(attempts) >= 2 and all(e["upstream_code"] == 451 for e in attempts)
    wait_until(lambda: (metric(mc, "mailcar_spool_messages", state="failed") or 0) == 1,
               what="the message to be failed")


@pytest.mark.parametrize("drain", [True, False])
def test_sigterm_drains_only_when_asked(upstream_factory, mailcar_factory, drain):
    port = dead_port()
    mc = mailcar_factory(spool_config(port, retry="[1h]",
                                      spool_extra=f"drain: {'true' if drain else 'false'}"))
    for i in range(3):
        assert mc.send("email", msg(i))[0] == 202
    wait_until(lambda: (metric(mc, "mailcar_delivery_attempts_total", result="deferred") or 0)
               >= 3, what="first attempts")
    up = upstream_factory(mode="plain", port=port)  # back, but the next retry is an hour away
    assert mc.stop() == 0
    if drain:
        assert len(up.messages) == 3, "drain delivers what it can before exiting"
        assert spooled_files(mc) == []
    else:
        time.sleep(0.5)
        assert len(up.messages) == 0
        assert len(spooled_files(mc)) == 3
        assert '"spool_left"' in mc.log()
