"""Lines over 998 octets through the SMTP door (issue 13): never relayed as they are. The
upstream here is strict like Postfix or Exchange: it refuses a message with such a line."""
import email
import email.policy
import smtplib

import pytest

from conftest import RecordingHandler
from test_smtp_ingress import smtp_config


class StrictHandler(RecordingHandler):
    """Refuses any message holding a line longer than 998 octets (RFC 5322 2.1.1)."""

    async def handle_DATA(self, server, session, envelope):
        data = envelope.original_content or envelope.content
        if any(len(line) > 998 for line in data.split(b"\r\n")):
            return "554 5.6.0 Line too long"
        return await super().handle_DATA(server, session, envelope)


@pytest.fixture
def strict(upstream_factory, mailcar_factory):
    up = upstream_factory(mode="plain", handler=StrictHandler())
    return up, mailcar_factory(smtp_config(up))


def send(mc, message):
    with smtplib.SMTP("127.0.0.1", mc.smtp_port, timeout=30) as s:
        s.sendmail("app@legacy.example.com", ["alice@example.com"], message)


HEAD = b"From: app@legacy.example.com\r\nTo: alice@example.com\r\nSubject: long\r\n"


def test_long_body_line_goes_quoted_printable(strict):
    up, mc = strict
    body = ("caf\u00e9 " + "x" * 5000 + " = end").encode()
    send(mc, HEAD + b"Content-Type: text/plain; charset=utf-8\r\n\r\nshort line\r\n" + body + b"\r\n")
    got = up.wait_for(1)[0]["data"]
    assert max(len(l) for l in got.split(b"\r\n")) <= 998
    msg = email.message_from_bytes(got, policy=email.policy.default)
    assert msg["Content-Transfer-Encoding"] == "quoted-printable"
    assert msg["MIME-Version"] == "1.0"
    assert msg.get_payload(decode=True) == b"short line\r\n" + body + b"\r\n"


def test_long_header_is_folded(strict):
    up, mc = strict
    words = " ".join(f"word{i}" for i in range(400))
    send(mc, HEAD + b"X-Words: " + words.encode() + b"\r\n\r\nbody\r\n")
    got = up.wait_for(1)[0]["data"]
    assert max(len(l) for l in got.split(b"\r\n")) <= 998
    msg = email.message_from_bytes(got, policy=email.policy.compat32)
    assert msg["X-Words"].replace("\r\n", "") == words
    assert msg.get_payload() == "body\r\n"


def test_only_the_long_part_of_a_multipart_is_reencoded(strict):
    up, mc = strict
    attachment = b"QUJD" * 19 + b"\r\n"
    long_text = b"y" * 3000
    send(mc, HEAD + b"MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=bnd\r\n\r\n"
         b"--bnd\r\nContent-Type: text/plain\r\n\r\n" + long_text + b"\r\n"
         b"--bnd\r\nContent-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64\r\n\r\n"
         + attachment + b"--bnd--\r\n")
    got = up.wait_for(1)[0]["data"]
    assert max(len(l) for l in got.split(b"\r\n")) <= 998
    assert b"Content-Transfer-Encoding: base64\r\n\r\n" + attachment + b"--bnd--\r\n" in got
    msg = email.message_from_bytes(got, policy=email.policy.default)
    text, binary = msg.get_payload()
    assert text.get_payload(decode=True) == long_text
    assert binary.get_payload(decode=True) == b"ABC" * 19


@pytest.mark.parametrize("message,why", [
    (HEAD + b"DKIM-Signature: v=1; a=rsa-sha256; d=example.com; s=s; b=abc\r\n\r\n"
     + b"z" * 2000 + b"\r\n", b"DKIM-signed"),
    (HEAD + b"Content-Type: application/json\r\n\r\n" + b"[" + b"1," * 1000 + b"1]\r\n",
     b"cannot be re-encoded"),
    (HEAD + b"X-Token: " + b"t" * 1200 + b"\r\n\r\nbody\r\n", b"no space to fold"),
])
def test_refused_when_it_cannot_keep_the_meaning(strict, message, why):
    up, mc = strict
    with pytest.raises(smtplib.SMTPDataError) as e:
        send(mc, message)
    assert e.value.smtp_code == 554
    assert e.value.smtp_error.startswith(b"5.6.0 ")
    assert why in e.value.smtp_error and b"998" in e.value.smtp_error
    send(mc, HEAD + b"\r\nfine\r\n")  # the connection and the upstream still work
    assert len(up.wait_for(1)) == 1
