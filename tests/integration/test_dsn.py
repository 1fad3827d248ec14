"""Delivery status notifications (RFC 3461 / RFC 3464) end to end, with real aiosmtpd upstreams.

Spool mode offers the SMTP DSN extension and honours NOTIFY, ORCPT, RET and ENVID; direct mode
reports recipients the upstream refused after the client was told 250 (RFC 5321 §6.1).
"""
import smtplib
import time

import pytest

from conftest import parse_message

SENDER = "app@legacy.example.com"
GOOD = "good@example.org"
BAD = "bad@example.org"
LATER = "later@example.org"
REJECT = {BAD: "550 5.1.1 No such user here", LATER: "450 4.2.0 Mailbox busy, try later"}
# How long "nothing else arrives" is watched: well over a spool attempt plus a DSN round trip.
QUIET_SECONDS = 4


def dsn_config(upstream, spool_dir=None):
    cfg = f"""listen:
  http: 127.0.0.1:{{HTTP_PORT}}
  smtp: 127.0.0.1:{{SMTP_PORT}}
services:
  email:
    host: 127.0.0.1
    port: {upstream.port}
    encryption: none
    from_email: noreply@legacy.example.com
    connect_timeout: 5s
    command_timeout: 10s
roles:
  legacy:
    senders: ["*"]
smtp:
  service: email
  hostname: mailcar.test
  anonymous_role: legacy
limits:
  idle_timeout: 10s
  shutdown_grace: 5s
log:
  format: json
  level: debug
"""
    if spool_dir is not None:
        cfg += f"spool:\n  path: {spool_dir}\n  retry: [1s]\n  max_age: 1h\n"
    return cfg


def message_bytes(subject="DSN test", body="The body line that RET=FULL returns.\r\n"):
    return (f"From: {SENDER}\r\nTo: {GOOD}\r\nSubject: {subject}\r\n\r\n{body}").encode()


def send(mc, sender, rcpts, mail_options=(), rcpt_options=None, subject="DSN test"):
    """One transaction; rcpt_options maps a recipient to its RCPT parameters."""
    with smtplib.SMTP("127.0.0.1", mc.smtp_port, timeout=30) as c:
        c.ehlo("client.test")
        code, reply = c.mail(sender, list(mail_options))
        assert code == 250, reply
        for r in rcpts:
            code, reply = c.rcpt(r, list((rcpt_options or {}).get(r, [])))
            assert code == 250, (r, reply)
        code, reply = c.data(message_bytes(subject))
        assert code == 250, reply
        return c.ehlo_resp.decode(), reply.decode()


def split(upstream):
    """The upstream's messages as (originals, DSNs): a DSN comes from the null sender."""
    msgs = list(upstream.messages)
    dsns = [m for m in msgs if m["mail_from"] in ("", "<>")]
    return [m for m in msgs if m not in dsns], dsns


def report_parts(data):
    msg = parse_message(data)
    assert msg.get_content_type() == "multipart/report"
    assert msg.get_param("report-type") == "delivery-status"
    parts = list(msg.iter_parts())
    assert [p.get_content_type() for p in parts][:2] == ["text/plain", "message/delivery-status"]
    blocks = parts[1].get_payload()  # per-message fields, then one block per recipient
    return msg, parts, blocks[0], blocks[1:]


def assert_quiet(upstream, count):
    time.sleep(QUIET_SECONDS)
    assert len(upstream.messages) == count, [m["mail_from"] for m in upstream.messages]


@pytest.fixture
def spool_mc(upstream_factory, mailcar_factory, tmp_path):
    up = upstream_factory(reject=REJECT)
    mc = mailcar_factory(dsn_config(up, tmp_path / "spool"))
    return up, mc


def test_spool_mode_dsn_carries_envid_orcpt_and_headers(spool_mc):
    up, mc = spool_mc
    ehlo, _ = send(mc, SENDER, [GOOD, BAD], mail_options=["RET=HDRS", "ENVID=env+2B42"],
                   rcpt_options={GOOD: ["NOTIFY=FAILURE"],
                                 BAD: ["NOTIFY=FAILURE,DELAY", "ORCPT=rfc822;orig+2Bbad@example.org"]})
    assert "DSN" in ehlo.splitlines()
    up.wait_for(2, timeout=30)
    originals, dsns = split(up)
    assert len(originals) == 1 and originals[0]["rcpt_tos"] == [GOOD]
    assert len(dsns) == 1 and dsns[0]["rcpt_tos"] == [SENDER]
    msg, parts, per_message, per_rcpt = report_parts(dsns[0]["data"])
    assert msg["Auto-Submitted"] == "auto-replied"
    assert per_message["Original-Envelope-Id"] == "env+42"  # xtext decoded
    assert len(per_rcpt) == 1
    r = per_rcpt[0]
    assert r["Original-Recipient"] == "rfc822;orig+bad@example.org"
    assert r["Final-Recipient"].replace(" ", "") == f"rfc822;{BAD}"
    assert r["Action"] == "failed"
    assert r["Status"] == "5.1.1"
    assert "No such user here" in r["Diagnostic-Code"]
    assert parts[2].get_content_type() == "text/rfc822-headers"
    headers = parts[2].get_content()
    assert "Subject: DSN test" in headers
    assert "RET=FULL returns" not in headers  # only the header block
    assert_quiet(up, 2)


def test_spool_mode_notify_never_sends_no_dsn(spool_mc):
    up, mc = spool_mc
    send(mc, SENDER, [GOOD, BAD], rcpt_options={BAD: ["NOTIFY=NEVER"]})
    up.wait_for(1, timeout=30)
    def refused():
        return any(e.get("event") == "recipient_rejected" and e.get("recipient") == BAD
                   for e in mc.log_events())

    deadline = time.time() + 30
    while time.time() < deadline and not refused():
        time.sleep(0.1)
    assert refused(), "the upstream refused the recipient that opted out"
    assert_quiet(up, 1)
    assert not [e for e in mc.log_events() if e.get("event") == "dsn_queued"]


def test_spool_mode_notify_success_only_sends_no_failure_dsn(spool_mc):
    up, mc = spool_mc
    send(mc, SENDER, [GOOD, BAD], rcpt_options={BAD: ["NOTIFY=SUCCESS"]})
    up.wait_for(1, timeout=30)
    assert_quiet(up, 1)


def test_spool_mode_ret_full_returns_the_whole_message(spool_mc):
    up, mc = spool_mc
    send(mc, SENDER, [GOOD, BAD], mail_options=["RET=FULL"])
    up.wait_for(2, timeout=30)
    _, dsns = split(up)
    assert len(dsns) == 1
    _, parts, per_message, per_rcpt = report_parts(dsns[0]["data"])
    assert per_message["Original-Envelope-Id"] is None
    assert per_rcpt[0]["Original-Recipient"] is None
    assert parts[2].get_content_type() == "message/rfc822"
    returned = parts[2].get_payload()[0]
    assert returned["Subject"] == "DSN test"
    assert "RET=FULL returns" in returned.get_content()


def test_spool_mode_bad_dsn_syntax_is_501(spool_mc):
    _, mc = spool_mc
    with smtplib.SMTP("127.0.0.1", mc.smtp_port, timeout=30) as c:
        c.ehlo("client.test")
        assert c.has_extn("dsn")
        assert c.mail(SENDER, ["RET=PARTIAL"])[0] == 501
        assert c.mail(SENDER, ["ENVID=a+2x"])[0] == 501
        assert c.mail(SENDER, ["RET=HDRS"])[0] == 250
        assert c.rcpt(GOOD, ["NOTIFY=NEVER,FAILURE"])[0] == 501
        assert c.rcpt(GOOD, ["ORCPT=no-type"])[0] == 501
        assert c.rcpt(GOOD, ["NOTIFY=FAILURE", "ORCPT=rfc822;good+40example.org"])[0] == 250


def test_direct_mode_does_not_offer_dsn(upstream_factory, mailcar_factory):
    up = upstream_factory()
    mc = mailcar_factory(dsn_config(up))
    with smtplib.SMTP("127.0.0.1", mc.smtp_port, timeout=30) as c:
        c.ehlo("client.test")
        assert not c.has_extn("dsn")
        assert c.mail(SENDER, ["RET=HDRS"])[0] == 555
        assert c.mail(SENDER)[0] == 250
        assert c.rcpt(GOOD, ["NOTIFY=FAILURE"])[0] == 555


def test_direct_mode_partial_rejection_sends_dsn(upstream_factory, mailcar_factory):
    up = upstream_factory(reject=REJECT)
    mc = mailcar_factory(dsn_config(up))
    _, reply = send(mc, SENDER, [GOOD, BAD, LATER])  # 250: one recipient was taken
    up.wait_for(2, timeout=30)
    originals, dsns = split(up)
    assert len(originals) == 1 and originals[0]["rcpt_tos"] == [GOOD]
    assert len(dsns) == 1 and dsns[0]["rcpt_tos"] == [SENDER]
    msg, parts, _, per_rcpt = report_parts(dsns[0]["data"])
    got = {r["Final-Recipient"].replace(" ", ""): r for r in per_rcpt}
    assert set(got) == {f"rfc822;{BAD}", f"rfc822;{LATER}"}
    assert got[f"rfc822;{BAD}"]["Status"] == "5.1.1"
    assert got[f"rfc822;{LATER}"]["Status"] == "4.2.0"
    assert all(r["Action"] == "failed" for r in per_rcpt)
    human = parts[0].get_content()
    assert "does not retry" in human and "spool mode would retry" in human
    assert parts[2].get_content_type() == "text/rfc822-headers"
    assert "Subject: DSN test" in parts[2].get_content()
    deadline = time.time() + 10
    while time.time() < deadline and not [e for e in mc.log_events()
                                          if e.get("event") == "dsn_sent"]:
        time.sleep(0.05)
    sent = [e for e in mc.log_events() if e.get("event") == "dsn_sent"]
    assert len(sent) == 1 and sent[0]["service"] == "email"
    assert_quiet(up, 2)


@pytest.mark.parametrize("spooled", [True, False])
def test_null_sender_never_gets_a_dsn(upstream_factory, mailcar_factory, tmp_path, spooled):
    up = upstream_factory(reject=REJECT)
    mc = mailcar_factory(dsn_config(up, tmp_path / "spool" if spooled else None))
    send(mc, "", [GOOD, BAD])
    up.wait_for(1, timeout=30)
    originals, _ = split(up)
    assert originals == [] and up.messages[0]["rcpt_tos"] == [GOOD]  # the original is from <>
    assert_quiet(up, 1)
    events = [e.get("event") for e in mc.log_events()]
    assert "recipient_rejected" in events
    assert "dsn_sent" not in events and "dsn_queued" not in events
