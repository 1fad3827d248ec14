"""DKIM signing (issue 10, SPEC §10.2): every signed message that reaches a real aiosmtpd
upstream, through either door, is verified by Debian's python3-dkim with the public key handed
to it in place of DNS. Keys are made with openssl at test time."""
import base64
import os
import smtplib
import subprocess

import pytest

from conftest import MAILCAR_BIN, parse_message

dkim = pytest.importorskip("dkim", reason="python3-dkim is not installed")


class Key:
    def __init__(self, folder, bits=2048):
        self.path = folder / f"dkim-{bits}.key"
        subprocess.run(["openssl", "genrsa", "-out", str(self.path), str(bits)], check=True,
                       capture_output=True)
        der = subprocess.run(["openssl", "rsa", "-in", str(self.path), "-pubout", "-outform",
                              "DER"], check=True, capture_output=True).stdout
        self.txt = b"v=DKIM1; k=rsa; p=" + base64.b64encode(der)


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    if subprocess.run(["which", "openssl"], capture_output=True).returncode != 0:
        pytest.skip("openssl is not installed")
    folder = tmp_path_factory.mktemp("dkim")
    return {"example": Key(folder), "parent": Key(folder, 1024)}


def dns_for(keys):
    records = {b"sel._domainkey.example.com.": keys["example"].txt,
               b"p1._domainkey.parent.test.": keys["parent"].txt}

    def lookup(name, timeout=5):
        return records.get(name if name.endswith(b".") else name + b".")
    return lookup


def verify(data, keys):
    return dkim.verify(data, dnsfunc=dns_for(keys))


def config(upstream, keys):
    return f"""listen:
  http: 127.0.0.1:{{HTTP_PORT}}
  smtp: 127.0.0.1:{{SMTP_PORT}}
services:
  email:
    host: 127.0.0.1
    port: {upstream.port}
    encryption: none
    from_email: noreply@example.com
    from_name: Example App
roles:
  app:
    senders: ["*"]
credentials:
  - api_key: test-key
    role: app
smtp:
  service: email
  hostname: mailcar.test
  anonymous_role: app
dkim:
  - domain: example.com
    selector: sel
    key_file: {keys["example"].path}
  - domain: parent.test
    selector: p1
    key_file: {keys["parent"].path}
    subdomains: true
limits:
  idle_timeout: 5s
  shutdown_grace: 5s
log:
  format: json
  level: debug
"""


def signature_fields(data):
    msg = parse_message(data)
    return msg.get_all("DKIM-Signature") or []


def tags(field):
    flat = "".join(str(field).split())
    return dict(t.split("=", 1) for t in flat.split(";") if "=" in t)


@pytest.fixture
def setup(upstream_factory, mailcar_factory, keys):
    up = upstream_factory()
    mc = mailcar_factory(config(up, keys))
    return up, mc


def test_http_messages_are_signed_and_verify(setup, keys):
    up, mc = setup
    long_subject = "A subject long enough to be folded " + "word " * 30
    payloads = [
        {"to": "a@example.org", "subject": "plain", "body_text": "Hello\n"},
        {"to": ["a@example.org", "b@example.org"], "cc": "c@example.org",
         "subject": long_subject, "body_text": "Grüße, ça va? ünïcödé " * 40,
         "body_html": "<p>Grüße</p>", "reply_to_email": "help@example.com"},
        {"to": "a@example.org", "subject": "trailing", "body_text": "x\n\n\n\n  \n\n"},
        {"to": "a@example.org", "subject": "dots", "body_text": ".\n..two\n.three\nend\n."},
        {"to": "a@example.org", "subject": "attachment", "body_text": "see attached",
         "attachments": [{"name": "r.bin", "content": base64.b64encode(os.urandom(3000)).decode(),
                          "content_type": "application/octet-stream"}]},
    ]
    for i, p in enumerate(payloads):
        status, body, _ = mc.send("email", p)
        assert status == 200, body
        data = up.wait_for(i + 1)[i]["data"]
        fields = signature_fields(data)
        assert len(fields) == 1, data[:400]
        t = tags(fields[0])
        assert t["a"] == "rsa-sha256" and t["c"] == "relaxed/relaxed" and t["d"] == "example.com"
        assert t["s"] == "sel" and "t" in t and "l" not in t
        h = t["h"].lower().split(":")
        assert h.count("from") == 2 and "subject" in h and "date" in h and "message-id" in h
        assert verify(data, keys), f"payload {i} does not verify:\n{data[:600]!r}"


def test_smtp_messages_are_signed_and_verify(setup, keys):
    up, mc = setup
    folded = "X" * 60
    messages = [
        # Long folded headers, an 8-bit body, trailing blank lines, lines starting with dots
        # (smtplib dot-stuffs them on the wire; mailcar must sign what the upstream gets).
        (b"From: App <app@example.com>\r\nTo: r@example.org\r\n"
         b"Subject: folded\r\n " + folded.encode() + b"\r\n\t" + folded.encode() + b"\r\n"
         b"Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n"
         b"MIME-Version: 1.0\r\n\r\n"
         b"Gr\xc3\xbc\xc3\x9fe  aus   K\xc3\xb6ln \t\r\n.leading dot\r\n..two dots\r\n.\r\n"
         b"\r\n\r\n\r\n"),
        # A subdomain of a domain that allows subdomains: signed with d=parent.test.
        (b"From: x@mail.parent.test\r\nTo: r@example.org\r\nSubject: sub\r\n\r\nbody\r\n"),
    ]
    with smtplib.SMTP("127.0.0.1", mc.smtp_port, timeout=30) as s:
        s.ehlo("client.test")
        s.sendmail("app@example.com", ["r@example.org"], messages[0],
                   mail_options=["BODY=8BITMIME"])
        s.sendmail("x@mail.parent.test", ["r@example.org"], messages[1])
    got = up.wait_for(2)
    first, second = got[0]["data"], got[1]["data"]
    assert b"\r\n.leading dot\r\n..two dots\r\n.\r\n" in first
    assert verify(first, keys), first[:800]
    assert tags(signature_fields(first)[0])["d"] == "example.com"
    assert verify(second, keys), second[:800]
    assert tags(signature_fields(second)[0])["d"] == "parent.test"


def test_client_signature_is_kept_below_ours(setup, keys):
    up, mc = setup
    client_sig = (b"DKIM-Signature: v=1; a=rsa-sha256; c=relaxed/relaxed; d=client.test;\r\n"
                  b" s=k; h=from; bh=AAAA; b=BBBB\r\n")
    msg = (client_sig + b"From: app@example.com\r\nTo: r@example.org\r\nSubject: pre-signed\r\n"
           b"\r\nbody\r\n")
    with smtplib.SMTP("127.0.0.1", mc.smtp_port, timeout=30) as s:
        s.sendmail("app@example.com", ["r@example.org"], msg)
    data = up.wait_for(1)[0]["data"]
    fields = signature_fields(data)
    assert len(fields) == 2
    assert tags(fields[0])["d"] == "example.com" and tags(fields[1])["d"] == "client.test"
    assert data.index(b"d=example.com") < data.index(b"d=client.test")
    assert verify(data, keys)  # dkimpy checks the first (topmost) signature


def test_added_from_breaks_the_signature_and_unknown_domains_are_not_signed(setup, keys):
    up, mc = setup
    status, body, _ = mc.send("email", {"to": "a@example.org", "subject": "s", "body_text": "b"})
    assert status == 200, body
    data = up.wait_for(1)[0]["data"]
    assert verify(data, keys)
    # Oversigned From: a second From put on afterwards makes verification fail.
    assert not verify(b"From: evil@attacker.test\r\n" + data, keys)
    # A changed body fails too (the test is able to fail).
    assert not verify(data.replace(b"\r\n\r\n", b"\r\n\r\nX", 1), keys)
    # example.com does not allow subdomains; other.test has no key.
    with smtplib.SMTP("127.0.0.1", mc.smtp_port, timeout=30) as s:
        for sender in ("a@sub.example.com", "a@other.test"):
            s.sendmail(sender, ["r@example.org"],
                       f"From: {sender}\r\nTo: r@example.org\r\nSubject: n\r\n\r\nb\r\n".encode())
    got = up.wait_for(3)
    assert signature_fields(got[1]["data"]) == [] and signature_fields(got[2]["data"]) == []


def test_bad_key_is_a_configuration_error(tmp_path, upstream_factory, keys):
    up = upstream_factory()
    bad = tmp_path / "bad.key"
    bad.write_text("-----BEGIN PRIVATE KEY-----\nnot a key\n-----END PRIVATE KEY-----\n")
    cfg = tmp_path / "m.yaml"
    text = config(up, keys).replace(str(keys["parent"].path), str(bad))
    cfg.write_text(text.replace("{HTTP_PORT}", "1").replace("{SMTP_PORT}", "2"))
    r = subprocess.run([MAILCAR_BIN, "--check", "-c", str(cfg)], capture_output=True, text=True,
                       timeout=30)
    assert r.returncode == 1
    line = next(i + 1 for i, l in enumerate(text.splitlines()) if str(bad) in l)
    assert f"{cfg}:{line}:5: dkim[1].key_file:" in r.stderr, r.stderr
    assert "not a key" not in r.stderr
    small = tmp_path / "small.key"
    subprocess.run(["openssl", "genrsa", "-out", str(small), "512"], check=True,
                   capture_output=True)
    cfg.write_text(text.replace(str(bad), str(small)).replace("{HTTP_PORT}", "1")
                   .replace("{SMTP_PORT}", "2"))
    r = subprocess.run([MAILCAR_BIN, "--check", "-c", str(cfg)], capture_output=True, text=True,
                       timeout=30)
    assert r.returncode == 1 and "512 bits" in r.stderr, r.stderr


def test_spool_mode_signs_before_spooling(upstream_factory, mailcar_factory, keys):
    up = upstream_factory()
    mc = mailcar_factory(config(up, keys) + "spool:\n  path: ./spool\n  retry: [1s]\n")
    status, body, _ = mc.send("email", {"to": "a@example.org", "subject": "queued",
                                        "body_text": "through the spool\n"})
    assert status == 202, body
    with smtplib.SMTP("127.0.0.1", mc.smtp_port, timeout=30) as s:
        s.sendmail("app@example.com", ["r@example.org"],
                   b"From: app@example.com\r\nTo: r@example.org\r\nSubject: q2\r\n\r\nx\r\n")
    got = up.wait_for(2, timeout=20)
    for m in got:
        assert len(signature_fields(m["data"])) == 1
        assert verify(m["data"], keys), m["data"][:600]
