"""HTTP JSON → mailcar → real upstream SMTP (issue 2), end to end."""
import base64
import json
import re
import subprocess
import time

from conftest import dead_port, basic_config, parse_message, service_yaml

SECRET = "s3cr3t-upstream-pw"


def simple(to="alice@example.com", **extra):
    recipients = [{"email": to, "name": "Alice"}] if isinstance(to, str) else to
    payload = {"to": recipients, "subject": "Hello", "body_text": "Hi there"}
    payload.update(extra)
    return payload


def assert_no_secrets(mc, *secrets):
    log = mc.log()
    for s in secrets:
        assert s not in log, f"secret {s!r} leaked into the log"


def test_plain_upstream_full_message(upstream_factory, mailcar_factory):
    up = upstream_factory(mode="plain")
    mc = mailcar_factory(basic_config(service_yaml("email", up)))
    attachment = bytes(range(256)) * 10
    status, body, _ = mc.send("email", {
        "to": [{"email": "alice@example.com", "name": "Alice Ä"}, "bob@example.com"],
        "cc": {"email": "carol@example.com"},
        "bcc": ["dave@example.com"],
        "subject": "Grüße, {first_name}!",
        "body_text": "Hello {first_name}\n.\nA line with a dot above",
        "body_html": "<p>Hello {first_name}</p>",
        "from_name": "Support Team", "from_email": "support@example.com",
        "reply_to_email": "help@example.com",
        "attachments": [{"name": "données.bin", "content": base64.b64encode(attachment).decode(),
                         "content_type": "application/octet-stream"}],
        "template_data": {"first_name": "John"},
    })
    assert status == 200, body
    assert body["count"] == 4
    assert set(body["id"]) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789.@_-")

    [got] = up.wait_for(1)
    assert got["mail_from"] == "support@example.com"
    assert sorted(got["rcpt_tos"]) == sorted(["alice@example.com", "bob@example.com",
                                              "carol@example.com", "dave@example.com"])
    raw = got["data"]
    assert b"\r\n" in raw
    for line in raw.split(b"\r\n"):
        assert len(line) <= 998
    msg = parse_message(raw)
    assert msg["Subject"] == "Grüße, John!"
    assert msg["From"].addresses[0].addr_spec == "support@example.com"
    assert msg["From"].addresses[0].display_name == "Support Team"
    assert msg["Reply-To"].addresses[0].addr_spec == "help@example.com"
    assert msg["Reply-To"].addresses[0].display_name == ""
    assert {a.addr_spec for a in msg["To"].addresses} == {"alice@example.com", "bob@example.com"}
    assert msg["To"].addresses[0].display_name == "Alice Ä"
    assert msg["Cc"].addresses[0].addr_spec == "carol@example.com"
    assert msg["Bcc"] is None and b"dave@example.com" not in raw
    assert msg["Message-ID"] == f"<{body['id']}>"
    assert msg["Date"] is not None and msg["MIME-Version"] == "1.0"
    assert msg.get_content_type() == "multipart/mixed"
    text = msg.get_body(("plain",)).get_content()
    html = msg.get_body(("html",)).get_content()
    assert text.replace("\r\n", "\n").rstrip("\n") == "Hello John\n.\nA line with a dot above"
    assert "<p>Hello John</p>" in html
    [att] = list(msg.iter_attachments())
    assert att.get_filename() == "données.bin"
    assert att.get_content() == attachment
    assert_no_secrets(mc, "Hello John", "test-key")


def test_starttls_with_auth(upstream_factory, mailcar_factory, certs):
    up = upstream_factory(mode="starttls", auth=("relay-user", SECRET))
    mc = mailcar_factory(basic_config(service_yaml("email", up, certs, "relay-user", SECRET)))
    status, body, _ = mc.send("email", simple())
    assert status == 200, body
    assert body["count"] == 1
    [got] = up.wait_for(1)
    assert got["tls"] and got["auth"]
    # The sender default pair rule: no from_* given → service from_email and from_name.
    msg = parse_message(got["data"])
    assert msg["From"].addresses[0].addr_spec == "noreply@example.com"
    assert msg["From"].addresses[0].display_name == "Example App"
    assert_no_secrets(mc, SECRET, "test-key")


def test_implicit_tls_with_auth(upstream_factory, mailcar_factory, certs):
    up = upstream_factory(mode="implicit", auth=("relay-user", SECRET))
    mc = mailcar_factory(basic_config(service_yaml("email", up, certs, "relay-user", SECRET)))
    status, body, _ = mc.send("email", simple())
    assert status == 200, body
    [got] = up.wait_for(1)
    assert got["tls"] and got["auth"]


def test_connections_are_reused(upstream_factory, mailcar_factory, certs):
    up = upstream_factory(mode="starttls", auth=("relay-user", SECRET))
    mc = mailcar_factory(basic_config(service_yaml("email", up, certs, "relay-user", SECRET,
                                                   extra="connections: 1")))
    for i in range(5):
        status, body, _ = mc.send("email", simple(subject=f"n{i}"))
        assert status == 200, body
    msgs = up.wait_for(5)
    # One upstream connection (same client port) carried all five messages.
    assert len({m["peer"] for m in msgs}) == 1


def test_wrong_certificate_name_is_refused(upstream_factory, mailcar_factory, certs):
    up = upstream_factory(mode="starttls", auth=("relay-user", SECRET), wrong_cert=True)
    mc = mailcar_factory(basic_config(service_yaml("email", up, certs, "relay-user", SECRET)))
    status, body, _ = mc.send("email", simple())
    assert status == 500, body
    err = body["error"]
    assert err["code"] == 500 and err["status_code"] == 500
    assert err["message"] == "Certificate error"
    assert err["context"]["retryable"] is False
    assert up.messages == []
    assert_no_secrets(mc, SECRET)


def test_wrong_password(upstream_factory, mailcar_factory, certs):
    up = upstream_factory(mode="starttls", auth=("relay-user", SECRET))
    mc = mailcar_factory(basic_config(service_yaml("email", up, certs, "relay-user", "wrong-pw")))
    status, body, _ = mc.send("email", simple())
    assert status == 500, body
    assert body["error"]["message"] == "Authentication failed"
    assert body["error"]["context"]["retryable"] is False
    assert body["error"]["context"]["smtp_code"] == 535
    assert_no_secrets(mc, "wrong-pw")


def test_refused_port(mailcar_factory):
    class Closed:
        mode = "plain"
        port = dead_port()

    mc = mailcar_factory(basic_config(service_yaml("email", Closed)))
    status, body, _ = mc.send("email", simple())
    assert status == 500, body
    assert body["error"]["message"] == "Connection refused"
    assert body["error"]["context"]["retryable"] is True
    assert body["error"]["context"]["smtp_code"] is None


def test_starttls_required_but_not_offered(upstream_factory, mailcar_factory, certs):
    up = upstream_factory(mode="plain")
    mc = mailcar_factory(basic_config(service_yaml("email", up, certs, encryption="tls")))
    status, body, _ = mc.send("email", simple())
    assert status == 500, body
    assert up.messages == [], "mail must never go out in clear when STARTTLS is required"


def test_one_recipient_rejected(upstream_factory, mailcar_factory):
    up = upstream_factory(mode="plain", reject={"nobody@example.com": "550 5.1.1 No such user"})
    mc = mailcar_factory(basic_config(service_yaml("email", up)))
    status, body, _ = mc.send("email", simple(to=["alice@example.com", "nobody@example.com"]))
    assert status == 200, body
    assert body["count"] == 1
    [rej] = body["rejected"]
    assert rej["email"] == "nobody@example.com" and rej["smtp_code"] == 550
    assert "No such user" in rej["smtp_reply"]
    assert rej["retryable"] is False  # 5xx (issue 13)
    [got] = up.wait_for(1)
    assert got["rcpt_tos"] == ["alice@example.com"]


def test_all_recipients_rejected(upstream_factory, mailcar_factory):
    up = upstream_factory(mode="plain", reject={"nobody@example.com": "550 5.1.1 No such user"})
    mc = mailcar_factory(basic_config(service_yaml("email", up)))
    status, body, _ = mc.send("email", simple(to="nobody@example.com"))
    assert status == 500, body
    assert body["error"]["context"]["smtp_code"] == 550
    assert body["error"]["context"]["retryable"] is False


def test_closing_reply_to_one_recipient_ends_the_transaction(upstream_factory, mailcar_factory):
    # 421 means the server is closing the channel (RFC 5321 3.8), even from a server that then
    # keeps it open, as aiosmtpd does: nothing more is sent on it, no partial delivery to the
    # other recipient, and the whole message is a retryable failure the app can send again.
    up = upstream_factory(mode="plain", reject={"busy@example.com": "421 4.3.2 Shutting down"})
    mc = mailcar_factory(basic_config(service_yaml("email", up)))
    status, body, _ = mc.send("email", simple(to=["alice@example.com", "busy@example.com"]))
    assert status == 500, body
    assert body["error"]["context"]["smtp_code"] == 421
    assert body["error"]["context"]["retryable"] is True
    time.sleep(0.3)
    assert up.messages == []
    # The next message gets a fresh connection and goes through.
    status, body, _ = mc.send("email", simple(to="alice@example.com"))
    assert status == 200, body
    assert [m["rcpt_tos"] for m in up.wait_for(1)] == [["alice@example.com"]]


def test_temporary_upstream_failure_is_retryable(upstream_factory, mailcar_factory):
    up = upstream_factory(mode="plain", reject_data="451 4.3.0 Try later")
    mc = mailcar_factory(basic_config(service_yaml("email", up)))
    status, body, _ = mc.send("email", simple())
    assert status == 500, body
    assert body["error"]["context"]["smtp_code"] == 451
    assert body["error"]["context"]["retryable"] is True


def test_client_errors(upstream_factory, mailcar_factory):
    up = upstream_factory(mode="plain")
    mc = mailcar_factory(basic_config(service_yaml("email", up)))
    # 404: unknown service, even without a key (404 comes before 401).
    assert mc.send("nosuch", simple(), key=None)[0] == 404
    # 401: no key, wrong key.
    assert mc.send("email", simple(), key=None)[0] == 401
    assert mc.send("email", simple(), key="wrong")[0] == 401
    failures = [e for e in mc.log_events() if e.get("event") == "http_auth_failed"]
    assert [e["reason"] for e in failures] == ["no API key", "unknown API key"]
    # Key by query string, by Bearer and in the body also work.
    assert mc.request("POST", "/api/v2/email?api_key=test-key", json.dumps(simple()),
                      {"Content-Type": "application/json"})[0] == 200
    assert mc.send("email", simple(), key=None,
                   headers={"Authorization": "Bearer test-key"})[0] == 200
    assert mc.send("email", dict(simple(), api_key="test-key"), key=None)[0] == 200
    # 415: not JSON.
    assert mc.request("POST", "/api/v2/email", "to=a", {
        "Content-Type": "application/x-www-form-urlencoded",
        "X-DreamFactory-API-Key": "test-key"})[0] == 415
    # 400s.
    status, body, _ = mc.send("email", "{not json", headers={"Content-Type": "application/json"})
    assert status == 400 and body["error"]["code"] == 400
    assert mc.send("email", {"subject": "x", "body_text": "y"})[0] == 400  # no recipient
    assert mc.send("email", {"to": "a@example.com", "subject": "x"})[0] == 400  # no body
    assert mc.send("email", simple(to="not-an-address"))[0] == 400
    assert mc.send("email", simple(subject="a\r\nBcc: evil@example.com"))[0] == 400
    assert mc.send("email", simple(from_name="x\nBcc: evil@example.com"))[0] == 400
    assert mc.send("email", simple(attachments=[{"name": "a", "content": "!!!"}]))[0] == 400
    # Template value that smuggles a line break into the subject.
    assert mc.send("email", simple(subject="Hi {n}", template_data={"n": "x\r\nBcc: e@x.com"}))[0] == 400
    # 405 and 404 on other paths.
    assert mc.request("GET", "/api/v2/email")[0] == 405
    assert mc.request("GET", "/nope")[0] == 404
    assert mc.request("GET", "/health")[0] == 200
    for m in up.messages:
        assert b"evil@example.com" not in m["data"]
    assert_no_secrets(mc, "test-key")


def test_body_over_limit_is_413(upstream_factory, mailcar_factory):
    up = upstream_factory(mode="plain")
    cfg = basic_config(service_yaml("email", up)).replace(
        "limits:\n", "limits:\n  max_message_bytes: 10000\n")
    mc = mailcar_factory(cfg)
    assert mc.send("email", simple(body_text="x" * 50_000))[0] == 413
    # A body claimed far over the limit is refused from the header alone.
    status, _, _ = mc.request("POST", "/api/v2/email", b"{", {
        "Content-Type": "application/json", "X-DreamFactory-API-Key": "test-key",
        "Content-Length": "100000000"})
    assert status == 413
    # Errors that rank above 413 still win where the head decides them.
    status, _, _ = mc.request("POST", "/api/v2/email", b"{", {
        "Content-Type": "application/json", "X-DreamFactory-API-Key": "wrong-key",
        "Content-Length": "100000000"})
    assert status == 401
    status, _, _ = mc.request("POST", "/api/v2/nosuch", b"{", {
        "Content-Type": "application/json", "Content-Length": "100000000"})
    assert status == 404
    assert mc.send("email", simple())[0] == 200
    assert up.wait_for(1)


def test_curl_keepalive_and_pipelining(upstream_factory, mailcar_factory):
    up = upstream_factory(mode="plain")
    mc = mailcar_factory(basic_config(service_yaml("email", up)))
    url = f"http://127.0.0.1:{mc.http_port}/api/v2/email"
    payload = json.dumps(simple())
    args = ["curl", "-sS"]
    for _ in range(3):
        args += ["-o", "/dev/null", "-w", "%{http_code} %{num_connects}\\n", "-H", "Content-Type: application/json", "-H", "X-DreamFactory-API-Key: test-key",
                 "--data", payload, url, "--next"]
    args = args[:-1]
    out = subprocess.run(args, capture_output=True, text=True, timeout=60, check=True).stdout
    lines = out.split()
    assert lines[0::2] == ["200", "200", "200"]
    assert lines[1::2] == ["1", "0", "0"], "curl should reuse one keep-alive connection"
    up.wait_for(3)

    # Two requests written back to back on one socket get two responses in order.
    import socket
    body = json.dumps(simple()).encode()
    req = (b"POST /api/v2/email HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
           b"X-DreamFactory-API-Key: test-key\r\nContent-Length: " + str(len(body)).encode() +
           b"\r\n\r\n" + body)
    with socket.create_connection(("127.0.0.1", mc.http_port), timeout=30) as s:
        s.sendall(req + req.replace(b"/api/v2/email", b"/api/v2/nosuch") + b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        data = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    statuses = re.findall(rb"HTTP/1\.1 (\d{3}) ", data)
    assert statuses == [b"200", b"404", b"200"]


def test_file_driver_writes_outbox(mailcar_factory, tmp_path):
    cfg = """listen:
  http: 127.0.0.1:{HTTP_PORT}
services:
  outbox:
    driver: file
    path: ./outbox
    from_email: noreply@example.com
roles:
  app:
    senders: ["*@example.com"]
credentials:
  - api_key: test-key
    role: app
"""
    mc = mailcar_factory(cfg)
    status, body, _ = mc.send("outbox", simple(bcc="hidden@example.com"))
    assert status == 200, body
    assert body["count"] == 2
    eml = mc.dir / "outbox" / f"{body['id']}.eml"
    assert eml.exists(), list((mc.dir / "outbox").iterdir())
    msg = parse_message(eml.read_bytes())
    assert msg["Subject"] == "Hello"
    assert msg["Bcc"] is None
    leftovers = [p.name for p in (mc.dir / "outbox").iterdir() if not p.name.endswith(".eml")]
    assert leftovers == []
    # Sender outside the role's patterns: 403.
    status, body, _ = mc.send("outbox", simple(from_email="x@other.org"))
    assert status == 403, body


def test_non_ascii_address_needs_smtputf8_end_to_end(upstream_factory, mailcar_factory):
    up = upstream_factory(mode="plain")
    mc = mailcar_factory(basic_config(service_yaml("email", up)))
    status, body, _ = mc.send("email", simple(to="用户@例子.example"))
    assert status == 200, body
    [got] = up.wait_for(1)
    assert got["rcpt_tos"] == ["用户@例子.example"]
    assert "SMTPUTF8" in [o.upper() for o in got["mail_options"]]

    plain = upstream_factory(mode="plain", smtputf8=False)
    mc2 = mailcar_factory(basic_config(service_yaml("email", plain)))
    status, body, _ = mc2.send("email", simple(to="用户@例子.example"))
    assert status == 500, body
    assert "SMTPUTF8" in body["error"]["message"]
    assert body["error"]["context"]["retryable"] is False
    assert plain.messages == []


def test_large_attachment_over_starttls(upstream_factory, mailcar_factory, certs):
    up = upstream_factory(mode="starttls", auth=("relay-user", SECRET))
    mc = mailcar_factory(basic_config(service_yaml("email", up, certs, "relay-user", SECRET)))
    blob = bytes(range(256)) * (6 * 1024 * 1024 // 256)  # 6 MiB: many body write rounds
    status, body, _ = mc.send("email", simple(attachments=[{
        "name": "big.bin", "content": base64.b64encode(blob).decode()}]), timeout=120)
    assert status == 200, body
    [got] = up.wait_for(1, timeout=60)
    [att] = list(parse_message(got["data"]).iter_attachments())
    assert att.get_content() == blob


def raw_header_lines(raw, name):
    """The physical lines of header `name` (the first line and its continuations)."""
    head = raw.split(b"\r\n\r\n", 1)[0].split(b"\r\n")
    out = []
    for line in head:
        if out and line[:1] in (b" ", b"\t"):
            out.append(line)
        elif out:
            break
        elif line.lower().startswith(name.lower().encode() + b":"):
            out.append(line)
    return out


def rfc2047_display_name(raw, name):
    """The display name of header `name`, decoded by RFC 2047's rule (white space between
    adjacent encoded words is dropped). policy.default's address parser adds a space there
    instead (CPython gh-128110, open), so the raw phrase is decoded with email.header."""
    import email.header
    value = b"".join(raw_header_lines(raw, name)).decode("ascii").split(":", 1)[1]
    phrase = value[:value.rindex("<")].strip()
    return str(email.header.make_header(email.header.decode_header(phrase)))


def test_long_header_values_are_folded_and_round_trip(upstream_factory, mailcar_factory):
    # Issue 7: a 5,000-letter from_name went out as one 5,006-octet From line.
    up = upstream_factory(mode="plain")
    mc = mailcar_factory(basic_config(service_yaml("email", up)))
    from_name = "F" * 5000
    to_name = "Tö " + "t" * 3000 + " end"
    reply_name = "R" * 2000
    subject = "S" * 4000 + " ✓"
    filename = "résumé-" + "ü" * 400 + ".pdf"
    status, body, _ = mc.send("email", {
        "to": [{"email": "alice@example.com", "name": to_name}],
        "subject": subject, "body_text": "hi",
        "from_name": from_name, "from_email": "support@example.com",
        "reply_to_email": "help@example.com", "reply_to_name": reply_name,
        "attachments": [{"name": filename, "content": base64.b64encode(b"%PDF").decode(),
                         "content_type": "application/pdf"}],
    })
    assert status == 200, body
    [got] = up.wait_for(1)
    raw = got["data"]
    lengths = [len(line) for line in raw.split(b"\r\n")]
    assert max(lengths) <= 998, max(lengths)
    from_lines = raw_header_lines(raw, "From")
    assert max(len(l) for l in from_lines) <= 78 and len(from_lines) > 5000 // 75, from_lines[:3]

    msg = parse_message(raw)  # policy=email.policy.default, asserts no defects
    assert str(msg["Subject"]) == subject
    assert msg["From"].addresses[0].addr_spec == "support@example.com"
    assert rfc2047_display_name(raw, "From") == from_name
    assert msg["To"].addresses[0].addr_spec == "alice@example.com"
    assert rfc2047_display_name(raw, "To") == to_name
    assert msg["Reply-To"].addresses[0].addr_spec == "help@example.com"
    assert rfc2047_display_name(raw, "Reply-To") == reply_name
    [att] = list(msg.iter_attachments())
    assert att.get_filename() == filename
    assert att.get_content_type() == "application/pdf"
    assert att.get_param("name") == filename
    # RFC 2047 §5: no encoded word in a parameter (name= used to hold one); RFC 2231 instead.
    assert b"=?" not in raw.split(b"\r\n\r\n", 1)[1]
    assert b"filename*0*=utf-8''r%C3%A9sum%C3%A9-" in raw
    assert att.get_content() == b"%PDF"


def test_content_type_that_cannot_fit_a_line_is_400(upstream_factory, mailcar_factory):
    up = upstream_factory(mode="plain")
    mc = mailcar_factory(basic_config(service_yaml("email", up)))
    status, body, _ = mc.send("email", simple(attachments=[{
        "name": "a.txt", "content": base64.b64encode(b"x").decode(),
        "content_type": "text/plain; charset=" + "x" * 1200}]))
    assert status == 400, body
    assert body["error"]["context"] == {"field": "attachments[0].content_type"}
    assert "too long for a header line" in body["error"]["message"]
    assert up.messages == []
