"""Named templates and the DreamFactory fields of issue 10 (SPEC §10.1, §4): precedence,
files relative to the configuration, template_data, ?template=, unknown names, reload on
SIGHUP (a missing file keeps the old configuration), --check, and the 400s for attachment
references and fields mailcar cannot honour. Real aiosmtpd upstream, real mailcar process."""
import signal
import subprocess
import time

from conftest import MAILCAR_BIN, basic_config, parse_message, service_yaml

TEMPLATES = """templates:
  welcome:
    subject: "Welcome, {first_name}!"
    body_text_file: tpl/welcome.txt
    body_html_file: tpl/welcome.html
    from_email: hello@example.com
    from_name: Hello Team
  inline:
    subject: Inline {x}
    body_text: "inline body {x}"
"""


def started(upstream_factory, mailcar_factory, tmp_path, extra=TEMPLATES):
    """mailcar with its template files in place. The configuration is in tmp_path/mc0/, the
    files in tmp_path/tpl/: "../tpl/..." tests that paths are relative to the configuration."""
    up = upstream_factory()
    tpl = tmp_path / "tpl"
    tpl.mkdir(exist_ok=True)
    (tpl / "welcome.txt").write_text("Hi {first_name}, welcome.\n")
    (tpl / "welcome.html").write_text("<p>Hi {first_name}</p>\n")
    mc = mailcar_factory(basic_config(service_yaml("email", up),
                                      extra=extra.replace("tpl/", "../tpl/")))
    return up, mc


def text_of(msg, subtype):
    part = msg.get_body(preferencelist=(subtype,))
    return part.get_content() if part is not None else None


def test_template_fills_what_the_request_leaves_out(upstream_factory, mailcar_factory, tmp_path):
    up, mc = started(upstream_factory, mailcar_factory, tmp_path)
    status, body, _ = mc.send("email", {"template": "welcome", "to": "a@example.org",
                                        "template_data": {"first_name": "Ada"}})
    assert status == 200, body
    msg = parse_message(up.wait_for(1)[0]["data"])
    assert msg["Subject"] == "Welcome, Ada!"
    assert msg["From"].addresses[0].addr_spec == "hello@example.com"
    assert msg["From"].addresses[0].display_name == "Hello Team"
    assert text_of(msg, "plain").strip() == "Hi Ada, welcome."
    assert text_of(msg, "html").strip() == "<p>Hi Ada</p>"
    # The request's own fields win; template_id names a template too; top-level strings fill.
    status, body, _ = mc.send("email", {"template_id": "welcome", "to": "a@example.org",
                                        "subject": "Own subject {first_name}",
                                        "from_email": "own@example.com",
                                        "body_text": "own text", "first_name": "Bob"})
    assert status == 200, body
    msg = parse_message(up.wait_for(2)[1]["data"])
    assert msg["Subject"] == "Own subject Bob"
    assert msg["From"].addresses[0].addr_spec == "own@example.com"
    assert msg["From"].addresses[0].display_name == "Hello Team"  # the template's name stays
    assert text_of(msg, "plain").strip() == "own text"
    assert text_of(msg, "html").strip() == "<p>Hi Bob</p>"


def test_query_template_and_body_precedence(upstream_factory, mailcar_factory, tmp_path):
    up, mc = started(upstream_factory, mailcar_factory, tmp_path)
    status, _, raw = mc.request("POST", "/api/v2/email?template=inline",
                                {"to": "a@example.org", "template_data": {"x": "Q"}},
                                {"X-DreamFactory-API-Key": "test-key"})
    assert status == 200, raw
    msg = parse_message(up.wait_for(1)[0]["data"])
    assert msg["Subject"] == "Inline Q" and text_of(msg, "plain").strip() == "inline body Q"
    # The body's template wins over the query's.
    status, _, raw = mc.request("POST", "/api/v2/email?template=inline",
                                {"to": "a@example.org", "template": "welcome",
                                 "template_data": {"first_name": "Z"}},
                                {"X-DreamFactory-API-Key": "test-key"})
    assert status == 200, raw
    assert parse_message(up.wait_for(2)[1]["data"])["Subject"] == "Welcome, Z!"


def test_unknown_template_is_a_400(upstream_factory, mailcar_factory, tmp_path):
    up, mc = started(upstream_factory, mailcar_factory, tmp_path)
    status, body, _ = mc.send("email", {"template": "nope", "to": "a@example.org"})
    assert status == 400 and body["error"]["message"] == 'Unknown template "nope".'
    status, _, raw = mc.request("POST", "/api/v2/email?template=gone", {"to": "a@example.org",
                                                                        "body_text": "x"},
                                {"X-DreamFactory-API-Key": "test-key"})
    assert status == 400 and b'Unknown template \\"gone\\".' in raw
    time.sleep(0.3)
    assert up.messages == []


def test_reload_reads_templates_and_keeps_old_config_when_a_file_is_missing(
        upstream_factory, mailcar_factory, tmp_path):
    up, mc = started(upstream_factory, mailcar_factory, tmp_path)
    (tmp_path / "tpl" / "welcome.txt").write_text("Version two, {first_name}.\n")
    mc.signal(signal.SIGHUP)
    deadline = time.time() + 10
    while '"reloaded"' not in mc.log() and time.time() < deadline:
        time.sleep(0.05)
    status, body, _ = mc.send("email", {"template": "welcome", "to": "a@example.org",
                                        "template_data": {"first_name": "C"}})
    assert status == 200, body
    assert text_of(parse_message(up.wait_for(1)[0]["data"]), "plain").strip() == "Version two, C."
    # A missing file: the reload fails and the old templates stay in use.
    (tmp_path / "tpl" / "welcome.html").unlink()
    mc.signal(signal.SIGHUP)
    deadline = time.time() + 10
    while '"reload_failed"' not in mc.log() and time.time() < deadline:
        time.sleep(0.05)
    assert '"reload_failed"' in mc.log()
    status, body, _ = mc.send("email", {"template": "welcome", "to": "a@example.org",
                                        "template_data": {"first_name": "D"}})
    assert status == 200, body
    assert text_of(parse_message(up.wait_for(2)[1]["data"]), "html").strip() == "<p>Hi D</p>"


def test_check_reports_a_missing_template_file_at_its_key(tmp_path, upstream_factory):
    up = upstream_factory()
    cfg = tmp_path / "m.yaml"
    text = basic_config(service_yaml("email", up), extra=TEMPLATES).replace("{HTTP_PORT}", "1")
    cfg.write_text(text)
    (tmp_path / "tpl").mkdir()
    (tmp_path / "tpl" / "welcome.txt").write_text("x")
    r = subprocess.run([MAILCAR_BIN, "--check", "-c", str(cfg)], capture_output=True, text=True,
                       timeout=30)
    assert r.returncode == 1
    line = next(i + 1 for i, l in enumerate(text.splitlines()) if "body_html_file" in l)
    assert f"{cfg}:{line}:5: templates.welcome.body_html_file:" in r.stderr, r.stderr
    (tmp_path / "tpl" / "welcome.html").write_text("y")
    r = subprocess.run([MAILCAR_BIN, "--check", "-c", str(cfg)], capture_output=True, text=True,
                       timeout=30)
    assert r.returncode == 0, r.stderr


def test_dreamfactory_fields_mailcar_cannot_honour_are_400s(upstream_factory, mailcar_factory, tmp_path):
    extra = TEMPLATES + 'attachment_fetch:\n  allow: ["https://files.example.com/shared/"]\n'
    up, mc = started(upstream_factory, mailcar_factory, tmp_path, extra=extra)
    base = {"to": "a@example.org", "subject": "s", "body_text": "b"}
    cases = [
        ({"attachment": {"service": "files", "path": "a.pdf"}}, "attachment",
         "storage references"),
        ({"attachment": ["https://files.example.com/shared/a.pdf",
                         "https://files.example.com.evil.test/shared/b"]}, "attachment",
         "URL 2 is not https or not under a prefix"),
        ({"import_url": "http://files.example.com/shared/a.pdf"}, "import_url",
         "URL 1 is not https"),
        ({"template": ["x"]}, "template", "must be a template name"),
    ]
    for extra_fields, field, why in cases:
        status, body, _ = mc.send("email", {**base, **extra_fields})
        assert status == 400, (extra_fields, body)
        assert body["error"]["message"].startswith(field + ":") and why in body["error"]["message"]
        assert body["error"]["context"]["field"] == field, body
    time.sleep(0.3)
    assert up.messages == []


def test_attachment_urls_without_attachment_fetch_are_refused(upstream_factory, mailcar_factory, tmp_path):
    up, mc = started(upstream_factory, mailcar_factory, tmp_path)
    status, body, _ = mc.send("email", {"to": "a@example.org", "subject": "s", "body_text": "b",
                                        "attachment": "https://files.example.com/a.pdf"})
    assert status == 400 and "not enabled" in body["error"]["message"], body
