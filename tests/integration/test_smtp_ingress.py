"""SMTP ingress (issue 3): real clients (smtplib, swaks, raw sockets) → mailcar → aiosmtpd."""
import smtplib
import socket
import subprocess
import time

import pytest

from conftest import dead_port, parse_message

PASSWORD = "legacy-pa55word"


def smtp_config(upstream, anonymous=True, tls=None, extra_limits="", senders='["*@legacy.example.com"]'):
    cfg = f"""listen:
  http: 127.0.0.1:{{HTTP_PORT}}
  smtp: 127.0.0.1:{{SMTP_PORT}}
services:
  email:
    host: 127.0.0.1
    port: {upstream.port}
    encryption: none
    from_email: noreply@legacy.example.com
    from_name: Legacy Default
roles:
  legacy:
    senders: {senders}
    max_recipients: 3
credentials:
  - smtp_username: legacy-app
    smtp_password: {PASSWORD}
    role: legacy
smtp:
  service: email
  hostname: mailcar.test
"""
    if anonymous:
        cfg += "  anonymous_role: legacy\n"
    if tls:
        cfg += f"  tls_cert: {tls.cert}\n  tls_key: {tls.key}\n"
    cfg += f"""limits:
  idle_timeout: 3s
  smtp_idle_timeout: 3s
  shutdown_grace: 5s
{extra_limits}log:
  format: json
  level: debug
"""
    return cfg


def connect(mc, timeout=30):
    return smtplib.SMTP("127.0.0.1", mc.smtp_port, timeout=timeout)


MESSAGE = (b"From: Someone <app@legacy.example.com>\r\n"
           b"To: alice@example.com\r\n"
           b"Bcc: secret-bcc@example.com\r\n"
           b"Subject: legacy hello\r\n"
           b"\r\n"
           b"line one\r\n"
           b".leading dot line\r\n"
           b"last line\r\n")


def raw_session(mc):
    """A raw socket past the greeting and EHLO: (socket, its line reader)."""
    s = socket.create_connection(("127.0.0.1", mc.smtp_port), timeout=10)
    f = s.makefile("rb")
    assert f.readline().startswith(b"220")
    s.sendall(b"EHLO x\r\n")
    while not f.readline().startswith(b"250 "):
        pass
    return s, f


def test_anonymous_submission_is_normalized(upstream_factory, mailcar_factory):
    up = upstream_factory(mode="plain")
    mc = mailcar_factory(smtp_config(up))
    with connect(mc) as c:
        code, msg = c.ehlo("client.test")
        assert code == 250
        for ext in ("pipelining", "size", "8bitmime", "smtputf8", "enhancedstatuscodes"):
            assert c.has_extn(ext), ext
        assert c.has_extn("auth"), "AUTH is offered in clear on a loopback listener"
        refused = c.sendmail("app@legacy.example.com",
                             ["alice@example.com", "secret-bcc@example.com"], MESSAGE)
        assert refused == {}
    [got] = up.wait_for(1)
    assert got["mail_from"] == "app@legacy.example.com"
    assert got["rcpt_tos"] == ["alice@example.com", "secret-bcc@example.com"]
    msg = parse_message(got["data"])
    assert msg["Bcc"] is None and b"secret-bcc" not in got["data"]
    assert msg["Date"] is not None and msg["Message-ID"] is not None
    assert got["data"].startswith(b"Received:")
    assert msg["Subject"] == "legacy hello"
    body = msg.get_content()
    assert ".leading dot line" in body and "..leading" not in body


def test_from_added_when_missing(upstream_factory, mailcar_factory):
    up = upstream_factory(mode="plain")
    mc = mailcar_factory(smtp_config(up))
    with connect(mc) as c:
        c.sendmail("noreply@legacy.example.com", ["bob@example.com"],
                   b"Subject: no from\r\n\r\nbody\r\n")
    [got] = up.wait_for(1)
    msg = parse_message(got["data"])
    assert msg["From"].addresses[0].addr_spec == "noreply@legacy.example.com"


def test_auth_required_without_anonymous_role(upstream_factory, mailcar_factory):
    up = upstream_factory(mode="plain")
    mc = mailcar_factory(smtp_config(up, anonymous=False))
    with connect(mc) as c:
        c.ehlo()
        code, resp = c.mail("app@legacy.example.com")
        assert code == 530 and b"5.7.0" in resp
        with pytest.raises(smtplib.SMTPAuthenticationError) as err:
            c.login("legacy-app", "wrong-password")
        assert err.value.smtp_code == 535
    with connect(mc) as c:
        c.login("legacy-app", PASSWORD)
        assert c.sendmail("app@legacy.example.com", ["alice@example.com"], MESSAGE) == {}
    [got] = up.wait_for(1)
    assert PASSWORD not in mc.log() and "wrong-password" not in mc.log()


@pytest.mark.parametrize("mechanism", ["PLAIN", "LOGIN"])
def test_auth_mechanisms(upstream_factory, mailcar_factory, mechanism):
    up = upstream_factory(mode="plain")
    mc = mailcar_factory(smtp_config(up, anonymous=False))
    with connect(mc) as c:
        c.ehlo()
        c.user, c.password = "legacy-app", PASSWORD
        code, _ = c.auth(mechanism, getattr(c, "auth_" + mechanism.lower()),
                         initial_response_ok=(mechanism == "PLAIN"))
        assert code == 235
        assert c.sendmail("app@legacy.example.com", ["alice@example.com"], MESSAGE) == {}
    up.wait_for(1)


def test_starttls_then_auth(upstream_factory, mailcar_factory, certs):
    up = upstream_factory(mode="plain")
    mc = mailcar_factory(smtp_config(up, anonymous=False, tls=certs))
    with connect(mc) as c:
        c.ehlo()
        assert c.has_extn("starttls")
        c.starttls(context=certs.client_context())
        c.ehlo()
        assert not c.has_extn("starttls")
        c.login("legacy-app", PASSWORD)
        assert c.sendmail("app@legacy.example.com", ["alice@example.com"], MESSAGE) == {}
    [got] = up.wait_for(1)
    assert b"ESMTPSA" in got["data"].split(b"\r\n\r\n")[0] or b"ESMTPS" in got["data"]


def test_starttls_injection_is_not_executed(upstream_factory, mailcar_factory, certs):
    up = upstream_factory(mode="plain")
    mc = mailcar_factory(smtp_config(up, tls=certs))
    s, f = raw_session(mc)
    with s:
        # The MAIL command rides in the same packet as STARTTLS: it must be discarded.
        s.sendall(b"STARTTLS\r\nMAIL FROM:<app@legacy.example.com>\r\n")
        assert f.readline().startswith(b"220")
        ctx = certs.client_context()
        tls = ctx.wrap_socket(s, server_hostname="localhost")
        tf = tls.makefile("rb")
        tls.sendall(b"EHLO x\r\n")
        while not tf.readline().startswith(b"250 "):
            pass
        tls.sendall(b"RCPT TO:<alice@example.com>\r\n")
        reply = tf.readline()
        assert reply.startswith(b"503"), f"injected MAIL FROM was executed: {reply!r}"
        tls.sendall(b"QUIT\r\n")
        tls.close()


def test_sender_not_allowed(upstream_factory, mailcar_factory):
    up = upstream_factory(mode="plain")
    mc = mailcar_factory(smtp_config(up))
    with connect(mc) as c:
        c.ehlo()
        code, resp = c.mail("someone@evil.example.com")
        assert code == 550 and b"5.7.1" in resp
        c.rset()
        # Envelope allowed, header From not: refused after DATA.
        with pytest.raises(smtplib.SMTPDataError) as err:
            c.sendmail("app@legacy.example.com", ["alice@example.com"],
                       MESSAGE.replace(b"app@legacy.example.com", b"ceo@evil.example.com"))
        assert err.value.smtp_code == 550
    assert up.messages == []


def test_too_many_recipients(upstream_factory, mailcar_factory):
    up = upstream_factory(mode="plain")
    mc = mailcar_factory(smtp_config(up))
    with connect(mc) as c:
        c.ehlo()
        c.mail("app@legacy.example.com")
        for i in range(3):
            assert c.rcpt(f"r{i}@example.com")[0] == 250
        code, resp = c.rcpt("r4@example.com")
        assert code == 452 and b"4.5.3" in resp


def test_size_limit_while_streaming_keeps_session(upstream_factory, mailcar_factory):
    up = upstream_factory(mode="plain")
    mc = mailcar_factory(smtp_config(up, extra_limits="  max_message_bytes: 20000\n"))
    with connect(mc) as c:
        c.ehlo()
        assert c.has_extn("size") and c.esmtp_features["size"] == "20000"
        big = MESSAGE + b"x" * 100 + (b"y" * 70 + b"\r\n") * 1000
        # smtplib would send SIZE= and be refused at MAIL; go the hard way without it.
        c.esmtp_features.pop("size")
        with pytest.raises(smtplib.SMTPDataError) as err:
            c.sendmail("app@legacy.example.com", ["alice@example.com"], big)
        assert err.value.smtp_code == 552
        assert c.noop()[0] == 250
        assert c.sendmail("app@legacy.example.com", ["alice@example.com"], MESSAGE) == {}
    assert len(up.wait_for(1)) == 1


def test_several_messages_with_rset(upstream_factory, mailcar_factory):
    up = upstream_factory(mode="plain")
    mc = mailcar_factory(smtp_config(up))
    with connect(mc) as c:
        for i in range(5):
            c.rset()
            c.sendmail("app@legacy.example.com", [f"user{i}@example.com"],
                       MESSAGE.replace(b"legacy hello", f"msg {i}".encode()))
    msgs = up.wait_for(5)
    assert [parse_message(m["data"])["Subject"] for m in msgs] == [f"msg {i}" for i in range(5)]


def test_swaks_pipelining_and_auth(upstream_factory, mailcar_factory):
    up = upstream_factory(mode="plain")
    mc = mailcar_factory(smtp_config(up, anonymous=False))
    out = subprocess.run(["swaks", "--server", f"127.0.0.1:{mc.smtp_port}", "--pipeline",
                          "--auth", "PLAIN", "--auth-user", "legacy-app",
                          "--auth-password", PASSWORD,
                          "--from", "app@legacy.example.com", "--to", "alice@example.com",
                          "--header", "Subject: via swaks", "--body", "pipelined"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    [got] = up.wait_for(1)
    assert parse_message(got["data"])["Subject"] == "via swaks"


def test_upstream_down_is_temporary(mailcar_factory):
    class Closed:
        port = dead_port()

    mc = mailcar_factory(smtp_config(Closed))
    with connect(mc) as c:
        with pytest.raises(smtplib.SMTPDataError) as err:
            c.sendmail("app@legacy.example.com", ["alice@example.com"], MESSAGE)
        assert 400 <= err.value.smtp_code < 500, "the client must retry later"


def test_end_of_data_is_only_crlf_dot_crlf(upstream_factory, mailcar_factory):
    up = upstream_factory(mode="plain")
    mc = mailcar_factory(smtp_config(up))
    s, f = raw_session(mc)
    with s:
        s.sendall(b"MAIL FROM:<app@legacy.example.com>\r\nRCPT TO:<alice@example.com>\r\nDATA\r\n")
        assert f.readline().startswith(b"250")
        assert f.readline().startswith(b"250")
        assert f.readline().startswith(b"354")
        # "\n.\n" is not the end of data: the smuggled MAIL FROM stays message text.
        s.sendall(b"Subject: smuggle\r\n\r\nhello\n.\nMAIL FROM:<x@evil.example.com>\r\n.\r\n")
        reply = f.readline()
        # Either normalized and delivered (250), or refused for bare LF (5xx); never split.
        assert reply[:1] in (b"2", b"5"), reply
        s.sendall(b"QUIT\r\n")
        assert f.readline().startswith(b"221")
    if reply.startswith(b"250"):
        [got] = up.wait_for(1)
        assert b"MAIL FROM:<x@evil.example.com>" in got["data"]
    time.sleep(0.2)
    assert len(up.messages) <= 1


def test_idle_timeout(upstream_factory, mailcar_factory):
    up = upstream_factory(mode="plain")
    mc = mailcar_factory(smtp_config(up))
    with socket.create_connection(("127.0.0.1", mc.smtp_port), timeout=10) as s:
        f = s.makefile("rb")
        assert f.readline().startswith(b"220")
        start = time.time()
        line = f.readline()
        assert line.startswith(b"421") and b"4.4.2" in line
        assert 2 <= time.time() - start <= 8


def test_partial_upstream_rejection_is_250_and_logged(upstream_factory, mailcar_factory):
    up = upstream_factory(mode="plain", reject={"nobody@example.com": "550 5.1.1 No such user"})
    mc = mailcar_factory(smtp_config(up))
    with connect(mc) as c:
        refused = c.sendmail("app@legacy.example.com", ["alice@example.com", "nobody@example.com"],
                             MESSAGE)
        assert refused == {}, "mailcar took both recipients; the upstream decides after DATA"
    msgs = list(up.wait_for(2))  # after the 250 the sender also gets a DSN (test_dsn.py)
    [got] = [m for m in msgs if m["mail_from"] not in ("", "<>")]
    assert got["rcpt_tos"] == ["alice@example.com"]
    [dsn] = [m for m in msgs if m["mail_from"] in ("", "<>")]
    assert dsn["rcpt_tos"] == ["app@legacy.example.com"]
    rejected = [e for e in mc.log_events() if e.get("event") == "recipient_rejected"]
    assert [(e["recipient"], e["upstream_code"]) for e in rejected] == [("nobody@example.com", 550)]
    status, _, raw = mc.request("GET", "/metrics")
    assert status == 200
    assert 'mailcar_recipients_total{service="email",outcome="rejected"} 1' in raw.decode()


def test_large_message_over_starttls(upstream_factory, mailcar_factory, certs):
    up = upstream_factory(mode="plain")
    mc = mailcar_factory(smtp_config(up, anonymous=False, tls=certs))
    lines = b"".join(b"%07d " % i + b"z" * 60 + b"\r\n" for i in range(100_000))  # ~6.8 MB
    body = MESSAGE + b".starts with a dot\r\n" + lines
    with connect(mc, timeout=120) as c:
        c.starttls(context=certs.client_context())
        c.login("legacy-app", PASSWORD)
        assert c.sendmail("app@legacy.example.com", ["alice@example.com"], body) == {}
    [got] = up.wait_for(1, timeout=60)
    data = got["data"]
    assert data.endswith(lines), "message data must arrive byte for byte"
    assert b"\r\n.starts with a dot\r\n" in data
