"""The rough edges a new user hits on the SMTP door (issue 13), with real clients:
implicit TLS (listen.smtps) beside STARTTLS, a TLS ClientHello on a plaintext listener,
refusals that are logged and counted (552, 530, 413), the AUTH user name in the log,
Postfix-style addresses without angle brackets, the UTF8SMTP Received protocol, CHUNKING
(BDAT) with pipelining over raw sockets, and certificate rotation on SIGHUP.
"""
import json
import shutil
import signal
import smtplib
import socket
import ssl
import subprocess
import time

import pytest

from conftest import Certs, Upstream, free_port, parse_message, run

PASSWORD = "edge-pa55word-Zq"


def edge_config(upstream, certs=None, smtps_port=None, anonymous=True, max_bytes=None):
    cfg = """listen:
  http: 127.0.0.1:{HTTP_PORT}
  smtp: 127.0.0.1:{SMTP_PORT}
"""
    if smtps_port:
        cfg += f"  smtps: 127.0.0.1:{smtps_port}\n"
    cfg += f"""services:
  email:
    host: 127.0.0.1
    port: {upstream.port}
    encryption: none
    from_email: noreply@example.com
roles:
  app:
    senders: ["*"]
credentials:
  - api_key: test-key
    role: app
  - smtp_username: legacy-app
    smtp_password: {PASSWORD}
    role: app
smtp:
  service: email
  hostname: mailcar.test
"""
    if anonymous:
        cfg += "  anonymous_role: app\n"
    if certs is not None:
        cfg += f"  tls_cert: {certs['cert']}\n  tls_key: {certs['key']}\n"
    cfg += "limits:\n  shutdown_grace: 5s\n"
    if max_bytes:
        cfg += f"  max_message_bytes: {max_bytes}\n"
    cfg += "log:\n  format: json\n  level: debug\n"
    return cfg


@pytest.fixture
def tls_files(certs, tmp_path):
    """Copies of the test certificate that a test may replace (rotation)."""
    cert = tmp_path / "ingress.crt"
    key = tmp_path / "ingress.key"
    shutil.copy(certs.cert, cert)
    shutil.copy(certs.key, key)
    return {"cert": cert, "key": key}


MESSAGE = b"From: app@example.com\r\nTo: alice@example.com\r\nSubject: edge\r\n\r\nedge body\r\n"


def events(mc, name):
    return [e for e in mc.log_events() if e.get("event") == name]


def metric(mc, line_prefix):
    status, _, raw = mc.request("GET", "/metrics")
    assert status == 200
    for line in raw.decode().splitlines():
        if line.startswith(line_prefix):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


# --------------------------------------------------------------------------- listen.smtps

def test_smtps_implicit_tls_beside_starttls(upstream_factory, mailcar_factory, certs, tls_files):
    up = upstream_factory(mode="plain")
    port = free_port()
    mc = mailcar_factory(edge_config(up, tls_files, smtps_port=port, anonymous=False))
    ctx = certs.client_context()
    with smtplib.SMTP_SSL("localhost", port, context=ctx, timeout=15) as c:
        code, _ = c.ehlo()
        assert code == 250
        assert not c.has_extn("starttls")  # already TLS
        assert c.has_extn("auth")
        c.login("legacy-app", PASSWORD)
        assert c.sendmail("app@example.com", ["alice@example.com"], MESSAGE) == {}
    # The STARTTLS listener works beside it, with the same certificate.
    with smtplib.SMTP("127.0.0.1", mc.smtp_port, timeout=15) as c:
        c.starttls(context=ctx)
        c.login("legacy-app", PASSWORD)
        assert c.sendmail("app@example.com", ["bob@example.com"], MESSAGE) == {}
    got = up.wait_for(2)
    received = [parse_message(m["data"])["Received"] for m in got]
    assert any("with ESMTPSA" in r for r in received), received
    listening = events(mc, "smtp_listening")
    assert {e["listener"]: e["tls"] for e in listening} == {"smtp": "starttls", "smtps": "implicit"}


def test_smtps_with_swaks_tls_on_connect(upstream_factory, mailcar_factory, tls_files):
    if shutil.which("swaks") is None:
        pytest.skip("swaks not installed")
    up = upstream_factory(mode="plain")
    port = free_port()
    mc = mailcar_factory(edge_config(up, tls_files, smtps_port=port))
    out = subprocess.run(["swaks", "--server", "127.0.0.1", "--port", str(port),
                          "--tls-on-connect", "--from", "app@example.com", "--to",
                          "carol@example.com", "--body", "swaks smtps body"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    [got] = up.wait_for(1)
    assert b"swaks smtps body" in got["data"]
    assert mc.proc.poll() is None


def test_smtps_needs_a_certificate(upstream_factory, mailcar_factory, tmp_path):
    up = upstream_factory(mode="plain")
    cfg_path = tmp_path / "nocert.yaml"
    cfg_path.write_text(edge_config(up, smtps_port=free_port()).replace("{HTTP_PORT}", "1")
                        .replace("{SMTP_PORT}", "2"))
    from conftest import MAILCAR_BIN
    out = subprocess.run([MAILCAR_BIN, "--check", "-c", str(cfg_path)], capture_output=True,
                         text=True, timeout=30)
    assert out.returncode == 1
    assert "smtp.tls_cert" in out.stderr and "listen.smtps" in out.stderr, out.stderr


@pytest.mark.parametrize("door", ["smtp", "http"])
def test_tls_client_hello_on_plaintext_listener_is_logged(door, upstream_factory,
                                                          mailcar_factory, tls_files):
    up = upstream_factory(mode="plain")
    mc = mailcar_factory(edge_config(up, tls_files))
    port = mc.smtp_port if door == "smtp" else mc.http_port
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        with pytest.raises((ssl.SSLError, OSError)):
            # What Nodemailer secure: true / PHPMailer ssl does against the plaintext port.
            with ctx.wrap_socket(raw, server_hostname="localhost") as tls:
                tls.recv(10)
    deadline = time.time() + 5
    name = f"{door}_tls_on_plaintext"
    while time.time() < deadline and not events(mc, name):
        time.sleep(0.05)
    [event] = events(mc, name)
    assert event["reason"].startswith("TLS ClientHello on a plaintext listener; ")
    assert "listen.smtps" in event["reason"] or door == "http"


# --------------------------------------------------------------------------- refusals

def test_refusals_are_logged_and_counted(upstream_factory, mailcar_factory):
    up = upstream_factory(mode="plain")
    mc = mailcar_factory(edge_config(up, max_bytes=2000))
    counted = 'mailcar_messages_total{ingress="smtp",role="app",service="email",outcome="rejected"}'
    before = metric(mc, counted)
    with smtplib.SMTP("127.0.0.1", mc.smtp_port, timeout=15) as c:
        c.ehlo()
        code, text = c.mail("app@example.com", ["SIZE=5000"])
        assert code == 552 and b"the limit is 2000 bytes" in text, text
        c.rset()
        c.esmtp_features.pop("size")  # no SIZE=: refused after the data
        with pytest.raises(smtplib.SMTPDataError) as err:
            c.sendmail("app@example.com", ["alice@example.com"], MESSAGE + b"x" * 3000)
        assert err.value.smtp_code == 552
        assert b"the limit is 2000 bytes" in err.value.smtp_error
    refusals = events(mc, "message_refused")
    assert len(refusals) == 2, refusals
    for e in refusals:
        assert e["ingress"] == "smtp" and e["outcome"] == "rejected"
        assert "2000" in e["reason"]
    assert metric(mc, counted) == before + 2
    # HTTP 413: the same line and label.
    payload = {"to": [{"email": "a@example.com"}], "subject": "s", "body_text": "y" * 5000}
    status, body, _ = mc.send("email", payload)
    assert status == 413, body
    http_refusals = [e for e in events(mc, "message_refused") if e["ingress"] == "http"]
    assert len(http_refusals) == 1 and http_refusals[0]["outcome"] == "rejected"
    assert metric(mc, counted.replace('"smtp"', '"http"')) == 1


def test_530_is_logged_and_failed_auth_names_the_user(upstream_factory, mailcar_factory):
    up = upstream_factory(mode="plain")
    mc = mailcar_factory(edge_config(up, anonymous=False))
    with smtplib.SMTP("127.0.0.1", mc.smtp_port, timeout=15) as c:
        c.ehlo()
        assert c.mail("app@example.com")[0] == 530
        with pytest.raises(smtplib.SMTPAuthenticationError):
            c.login("who-am-i", "not-the-password-9x")
    [refusal] = events(mc, "message_refused")
    assert refusal["outcome"] == "rejected" and "530" in refusal["reason"]
    failed = events(mc, "smtp_auth_failed")  # smtplib tries each mechanism offered
    assert failed and all(e["user"] == "who-am-i" for e in failed), failed
    assert "not-the-password-9x" not in mc.log()


# --------------------------------------------------------------------------- leniency

def test_addresses_without_angle_brackets(upstream_factory, mailcar_factory):
    up = upstream_factory(mode="plain")
    mc = mailcar_factory(edge_config(up))
    s = socket.create_connection(("127.0.0.1", mc.smtp_port), timeout=10)
    f = s.makefile("rb")
    assert f.readline().startswith(b"220")
    s.sendall(b"HELO x\r\nMAIL FROM:app@example.com\r\nRCPT TO:alice@example.com\r\nDATA\r\n")
    replies = [f.readline() for _ in range(4)]
    assert [r[:3] for r in replies] == [b"250", b"250", b"250", b"354"], replies
    s.sendall(MESSAGE + b".\r\nQUIT\r\n")
    assert f.readline().startswith(b"250")
    s.close()
    [got] = up.wait_for(1)
    assert got["mail_from"] == "app@example.com"
    assert got["rcpt_tos"] == ["alice@example.com"]


@pytest.mark.parametrize("tls,auth,expected", [(False, False, "UTF8SMTP"),
                                               (False, True, "UTF8SMTPA"),
                                               (True, False, "UTF8SMTPS"),
                                               (True, True, "UTF8SMTPSA")])
def test_received_says_utf8smtp(tls, auth, expected, upstream_factory, mailcar_factory, certs,
                                tls_files):
    up = upstream_factory(mode="plain")
    mc = mailcar_factory(edge_config(up, tls_files))
    with smtplib.SMTP("127.0.0.1", mc.smtp_port, timeout=15) as c:
        if tls:
            c.starttls(context=certs.client_context())
        if auth:
            c.login("legacy-app", PASSWORD)
        assert c.sendmail("app@example.com", ["alice@example.com"], MESSAGE,
                          mail_options=["SMTPUTF8"]) == {}
    [got] = up.wait_for(1)
    received = parse_message(got["data"])["Received"]
    assert f"with {expected} " in received, received


# --------------------------------------------------------------------------- CHUNKING

def bdat_session(mc):
    s = socket.create_connection(("127.0.0.1", mc.smtp_port), timeout=15)
    f = s.makefile("rb")
    assert f.readline().startswith(b"220")
    s.sendall(b"EHLO x\r\n")
    caps = []
    while True:
        line = f.readline()
        caps.append(line[4:].strip())
        if line.startswith(b"250 "):
            break
    assert b"CHUNKING" in caps and b"PIPELINING" in caps, caps
    return s, f


def test_bdat_pipelined_binary_safe(upstream_factory, mailcar_factory):
    up = upstream_factory(mode="plain")
    mc = mailcar_factory(edge_config(up))
    s, f = bdat_session(mc)
    head = b"From: app@example.com\r\nTo: alice@example.com\r\nSubject: bdat\r\n\r\n"
    body = b"first line\r\n.\r\nafter a lone dot\r\nQUIT\r\n"
    # The whole transaction in one write, as Exchange clients send it.
    s.sendall(b"MAIL FROM:<app@example.com>\r\nRCPT TO:<alice@example.com>\r\n"
              b"BDAT %d\r\n%sBDAT %d LAST\r\n%sQUIT\r\n" % (len(head), head, len(body), body))
    replies = [f.readline() for _ in range(5)]
    assert replies[0].startswith(b"250 2.1.0") and replies[1].startswith(b"250 2.1.5"), replies
    assert replies[2] == b"250 2.0.0 %d octets received\r\n" % len(head)
    assert replies[3].startswith(b"250 "), replies  # the upstream's acceptance
    assert replies[4].startswith(b"221"), replies
    s.close()
    [got] = up.wait_for(1)
    msg = parse_message(got["data"])
    assert msg["Subject"] == "bdat"
    assert body.replace(b"\r\n", b"\n") in got["data"].replace(b"\r\n", b"\n")


def test_bdat_limits_and_refused_chunks(upstream_factory, mailcar_factory):
    up = upstream_factory(mode="plain")
    mc = mailcar_factory(edge_config(up, max_bytes=1000))
    s, f = bdat_session(mc)
    # A refused recipient, then BDAT: consumed (its octets look like commands) and refused.
    s.sendall(b"MAIL FROM:<app@example.com>\r\nRCPT TO:<>\r\nBDAT 6 LAST\r\nQUIT\r\n")
    replies = [f.readline() for _ in range(3)]
    assert [r[:3] for r in replies] == [b"250", b"501", b"503"], replies
    # Over the limit across chunks: 552 stating it, then the next chunk finds no transaction.
    s.sendall(b"RSET\r\nMAIL FROM:<app@example.com>\r\nRCPT TO:<alice@example.com>\r\n"
              b"BDAT 800\r\n" + b"x" * 800 + b"BDAT 300\r\n" + b"y" * 300 +
              b"BDAT 4 LAST\r\nNOOPNOOP\r\n")
    replies = [f.readline() for _ in range(7)]
    assert [r[:3] for r in replies] == [b"250", b"250", b"250", b"250", b"552", b"503",
                                        b"250"], replies
    assert b"the limit is 1000 bytes" in replies[4]
    s.close()
    assert up.messages == []
    assert len(events(mc, "message_refused")) == 1


# --------------------------------------------------------------------------- rotation

def served_certificate(port):
    """The certificate a new STARTTLS connection is given, as PEM."""
    c = smtplib.SMTP("127.0.0.1", port, timeout=15)
    try:
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        c.starttls(context=ctx)
        return ssl.DER_cert_to_PEM_cert(c.sock.getpeercert(binary_form=True))
    finally:
        c.close()


def fingerprint(pem):
    out = subprocess.run(["openssl", "x509", "-noout", "-fingerprint", "-sha256"],
                         input=pem.encode(), capture_output=True, check=True)
    return out.stdout.strip()


def wait_for_event(mc, name, count, timeout=10):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if len(events(mc, name)) >= count:
            return
        time.sleep(0.05)
    raise AssertionError(f"no {name} #{count}:\n{mc.log()}")


def test_sighup_rotates_the_ingress_certificate(upstream_factory, mailcar_factory, certs,
                                                tls_files, tmp_path):
    up = upstream_factory(mode="plain")
    mc = mailcar_factory(edge_config(up, tls_files))
    first = fingerprint(served_certificate(mc.smtp_port))
    assert first == fingerprint(certs.cert.read_text())
    # An open session keeps its certificate across the rotation.
    kept = smtplib.SMTP("127.0.0.1", mc.smtp_port, timeout=15)
    kept.starttls(context=certs.client_context())

    # Renewed: a new key and certificate (as cert-manager or certbot write them).
    new_key, new_cert = tmp_path / "new.key", tmp_path / "new.crt"
    run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
         "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
         "-keyout", str(new_key), "-out", str(new_cert)])
    shutil.copy(new_cert, tls_files["cert"])
    shutil.copy(new_key, tls_files["key"])
    mc.signal(signal.SIGHUP)
    wait_for_event(mc, "reloaded", 1)
    second = fingerprint(served_certificate(mc.smtp_port))
    assert second == fingerprint(new_cert.read_text()) and second != first
    assert kept.noop()[0] == 250
    kept.quit()

    # A broken certificate: the reload fails, says why, and the new-old one stays in use.
    tls_files["cert"].write_text("-----BEGIN CERTIFICATE-----\nnot base64\n")
    mc.signal(signal.SIGHUP)
    wait_for_event(mc, "reload_failed", 1)
    [failed] = events(mc, "reload_failed")
    assert "tls_cert" in failed["error"], failed
    assert fingerprint(served_certificate(mc.smtp_port)) == second


def test_sighup_rereads_the_ca_file(mailcar_factory, certs, tmp_path):
    """An upstream whose certificate now comes from another CA: the service's ca_file is
    replaced and SIGHUP makes new upstream connections trust it (it was read once before)."""
    (tmp_path / "other-ca").mkdir()
    other = Certs(tmp_path / "other-ca")
    up = Upstream(other, mode="starttls")
    try:
        ca_file = tmp_path / "upstream-ca.crt"
        shutil.copy(certs.ca, ca_file)  # the wrong CA for this upstream
        cfg = f"""listen:
  http: 127.0.0.1:{{HTTP_PORT}}
services:
  email:
    host: localhost
    port: {up.port}
    encryption: tls
    ca_file: {ca_file}
    from_email: noreply@example.com
    connect_timeout: 5s
    command_timeout: 10s
roles:
  app:
    senders: ["*"]
credentials:
  - api_key: test-key
    role: app
log:
  format: json
  level: debug
"""
        mc = mailcar_factory(cfg)
        payload = {"to": [{"email": "a@example.com"}], "subject": "ca", "body_text": "ca body"}
        status, body, _ = mc.send("email", payload)
        assert status == 500 and "Certificate" in json.dumps(body), body
        shutil.copy(other.ca, ca_file)
        mc.signal(signal.SIGHUP)
        wait_for_event(mc, "reloaded", 1)
        status, body, _ = mc.send("email", payload)
        assert status == 200, (body, mc.log())
        [got] = up.wait_for(1)
        assert got["tls"]
    finally:
        up.stop()
