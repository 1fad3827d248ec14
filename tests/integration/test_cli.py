"""Command line, configuration errors, signals and the zero-file setup (SPEC §2)."""
import json
import os
import re
import signal
import socket
import subprocess
import time

from conftest import MAILCAR_BIN, SOURCE_DIR, basic_config, free_port, service_yaml


def run(args, env=None, cwd=None):
    full_env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
    full_env.update(env or {})
    return subprocess.run([MAILCAR_BIN] + args, capture_output=True, text=True, timeout=30,
                          env=full_env, cwd=cwd)


def test_version_and_help():
    r = run(["--version"])
    assert r.returncode == 0 and re.match(r"mailcar \d+\.\d+\.\d+", r.stdout)
    r = run(["--help"])
    assert r.returncode == 0 and "--check" in r.stdout and "--config" in r.stdout
    r = run(["--bogus"])
    assert r.returncode != 0 and "unknown argument" in r.stderr


def test_check_accepts_bundled_and_example_configs():
    r = run(["--check", "-c", str(SOURCE_DIR / "conf" / "mailcar.yaml")])
    assert r.returncode == 0, r.stderr
    env = {k: f"value-of-{k}" for k in ["GMAIL_USER", "SMTP_PASSWORD", "WEBAPP_API_KEY", "M365_USER",
                            "SES_SMTP_USERNAME", "SES_SMTP_PASSWORD", "RELAY_PASSWORD",
                            "QA_API_KEY", "LEGACY_PASSWORD",
                            "M365_TENANT_ID", "M365_CLIENT_ID", "GOOGLE_CLIENT_ID"]}
    env["GMAIL_USER"] = "me@gmail.com"
    env["M365_USER"] = "me@contoso.com"
    for example in sorted((SOURCE_DIR / "conf" / "examples").glob("*.yaml")):
        r = run(["--check", "-c", str(example)], env=env)
        # Examples may point at secret files that do not exist here; anything else must pass.
        if r.returncode != 0:
            assert "_file" in r.stderr or "No such file" in r.stderr or "tls_" in r.stderr, \
                f"{example.name}: {r.stderr}"


def test_check_reports_file_line_column_and_key(tmp_path):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("listen:\n  http: 127.0.0.1:2580\nservices:\n  email:\n    host: x\n"
                   "    prot: 25\n")
    r = run(["--check", "-c", str(cfg)])
    assert r.returncode == 1
    assert f"{cfg}:6:5" in r.stderr, r.stderr
    assert "prot" in r.stderr


def test_bad_config_opens_no_port(tmp_path):
    port = free_port()
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(f"listen:\n  http: 127.0.0.1:{port}\nservices:\n  email:\n"
                   "    host: x\n    port: ${NOPE_NOT_SET}\n")
    r = run(["-c", str(cfg)])
    assert r.returncode == 1
    assert "NOPE_NOT_SET" in r.stderr
    with socket.socket() as s:
        assert s.connect_ex(("127.0.0.1", port)) != 0


def test_env_only_config_and_sigterm(tmp_path, upstream_factory):
    up = upstream_factory(mode="plain")
    http_port = free_port()
    env = {"MAIL_HOST": "127.0.0.1", "MAIL_PORT": str(up.port), "MAIL_ENCRYPTION": "null",
           "MAIL_FROM_ADDRESS": "app@example.com", "MAIL_FROM_NAME": "App",
           "MAILCAR_API_KEY": "env-key", "MAILCAR_HTTP_LISTEN": f"127.0.0.1:{http_port}",
           "MAILCAR_SMTP_LISTEN": f"127.0.0.1:{free_port()}",
           "PATH": os.environ.get("PATH", "/usr/bin:/bin")}
    # No config file: run from an empty folder so conf/mailcar.yaml is not found.
    proc = subprocess.Popen([MAILCAR_BIN], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 10
        import http.client
        while True:
            try:
                c = http.client.HTTPConnection("127.0.0.1", http_port, timeout=1)
                c.request("GET", "/ready")
                if c.getresponse().status == 200:
                    break
            except OSError:
                pass
            assert time.time() < deadline and proc.poll() is None, proc.stdout.read().decode()
            time.sleep(0.05)
        c = http.client.HTTPConnection("127.0.0.1", http_port, timeout=30)
        c.request("POST", "/api/v2/email", json.dumps({"to": "x@example.com", "subject": "s",
                                                       "body_text": "b"}),
                  {"Content-Type": "application/json", "X-DreamFactory-API-Key": "env-key"})
        resp = c.getresponse()
        assert resp.status == 200, resp.read()
        [got] = up.wait_for(1)
        assert got["mail_from"] == "app@example.com"
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=20)
    assert proc.returncode == 0, out.decode()
    assert b"env-key" not in out


def test_sighup_bad_config_keeps_old_one(mailcar_factory, upstream_factory):
    up = upstream_factory(mode="plain")
    mc = mailcar_factory(basic_config(service_yaml("email", up)))
    assert mc.send("email", {"to": "a@example.com", "subject": "s", "body_text": "b"})[0] == 200
    good = mc.config_path.read_text()
    mc.config_path.write_text(good + "bogus_key: 1\n")
    mc.signal(signal.SIGHUP)
    deadline = time.time() + 5
    while "reload_failed" not in mc.log() and time.time() < deadline:
        time.sleep(0.05)
    assert "reload_failed" in mc.log()
    assert mc.send("email", {"to": "a@example.com", "subject": "s", "body_text": "b"})[0] == 200
    # A valid reload takes effect: the key changes.
    mc.config_path.write_text(good.replace("api_key: test-key", "api_key: new-key"))
    mc.signal(signal.SIGHUP)
    deadline = time.time() + 5
    while '"reloaded"' not in mc.log() and time.time() < deadline:
        time.sleep(0.05)
    assert mc.send("email", {"to": "a@example.com", "subject": "s", "body_text": "b"})[0] == 401
    assert mc.send("email", {"to": "a@example.com", "subject": "s", "body_text": "b"},
                   key="new-key")[0] == 200


def test_check_reports_unreadable_tls_files(tmp_path):
    cfg = tmp_path / "tls.yaml"
    cfg.write_text("listen:\n  smtp: 127.0.0.1:2599\nservices:\n  email:\n    host: x\n"
                   "    ca_file: missing-ca.pem\nsmtp:\n  service: email\n"
                   "  tls_cert: missing.crt\n  tls_key: missing.key\n")
    r = run(["--check", "-c", str(cfg)])
    assert r.returncode == 1
    for key in ("services.email.ca_file", "smtp.tls_cert", "smtp.tls_key"):
        assert key in r.stderr, r.stderr
    assert str(tmp_path / "missing.crt") in r.stderr


# ------------------------------------------------------------------ start failures (issue 7)

def start_config(http_port, smtp_port, smtp_extra=""):
    return (f"listen:\n  http: 127.0.0.1:{http_port}\n  smtp: 127.0.0.1:{smtp_port}\n"
            "services:\n  email:\n    host: 127.0.0.1\n    port: 25\n    encryption: none\n"
            "    from_email: app@example.com\nroles:\n  app:\n    senders: ['*']\n"
            "credentials:\n  - api_key: k\n    role: app\n"
            f"smtp:\n  service: email\n  anonymous_role: app\n{smtp_extra}")


def assert_port_closed(port):
    with socket.socket() as s:
        assert s.connect_ex(("127.0.0.1", port)) != 0, f"port {port} left open"


def error_lines(r):
    return [l for l in (r.stdout + r.stderr).splitlines() if l.strip()]


def test_port_in_use_exits_1_with_one_line_and_no_abort(tmp_path):
    # The SMTP port is taken after the HTTP listener has opened: the path that used to close
    # the HTTP listener twice and die on libuv's assertion (exit 134).
    http_port = free_port()
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        smtp_port = busy.getsockname()[1]
        cfg = tmp_path / "busy.yaml"
        cfg.write_text(start_config(http_port, smtp_port))
        r = run(["-c", str(cfg)])
        assert r.returncode == 1, (r.returncode, r.stdout, r.stderr)
        lines = error_lines(r)
        assert len(lines) == 1, lines
        assert "listen_failed" in lines[0] and f"listen.smtp 127.0.0.1:{smtp_port}" in lines[0]
        assert "address already in use" in lines[0]
        assert_port_closed(http_port)

        # The HTTP port taken: the first listener fails, nothing else opens.
        cfg.write_text(start_config(smtp_port, free_port()))
        r = run(["-c", str(cfg)])
        assert r.returncode == 1, (r.returncode, r.stdout, r.stderr)
        lines = error_lines(r)
        assert len(lines) == 1 and f"listen.http 127.0.0.1:{smtp_port}" in lines[0], lines


def test_bad_certificate_refused_at_start_and_check(tmp_path, certs):
    http_port, smtp_port = free_port(), free_port()
    not_cert = tmp_path / "not-a-cert.pem"
    not_cert.write_text("this is not a certificate\n")
    cfg = tmp_path / "badcert.yaml"
    cfg.write_text(start_config(http_port, smtp_port,
                                f"  tls_cert: {not_cert}\n  tls_key: {certs.key}\n"))
    for args in (["-c", str(cfg)], ["--check", "-c", str(cfg)]):
        r = run(args)
        assert r.returncode == 1, (args, r.returncode, r.stdout, r.stderr)
        lines = error_lines(r)
        assert len(lines) == 1, lines
        assert f"smtp.tls_cert {not_cert}: cannot load certificate chain" in lines[0], lines
    assert_port_closed(http_port)
    assert_port_closed(smtp_port)


def test_check_refuses_certificate_and_key_that_do_not_match(tmp_path, certs):
    http_port, smtp_port = free_port(), free_port()
    cfg = tmp_path / "mismatch.yaml"
    cfg.write_text(start_config(http_port, smtp_port,
                                f"  tls_cert: {certs.cert}\n  tls_key: {certs.wrong_key}\n"))
    for args in (["--check", "-c", str(cfg)], ["-c", str(cfg)]):
        r = run(args)
        assert r.returncode == 1, (args, r.returncode, r.stdout, r.stderr)
        assert f"smtp.tls_key {certs.wrong_key}: does not match the certificate" in r.stderr
        assert str(certs.cert) in r.stderr
    assert_port_closed(smtp_port)
    # The matching pair passes.
    cfg.write_text(start_config(http_port, smtp_port,
                                f"  tls_cert: {certs.cert}\n  tls_key: {certs.key}\n"))
    r = run(["--check", "-c", str(cfg)])
    assert r.returncode == 0, r.stderr


def test_unterminated_quote_is_an_error_at_the_quote(tmp_path):
    cfg = tmp_path / "quote.yaml"
    cfg.write_text("listen:\n  http: 127.0.0.1:2580\nservices:\n  email:\n    host: x\n"
                   "    from_name: \"Example App\n    rate_limit: 1/day\n")
    for args in (["--check", "-c", str(cfg)], ["-c", str(cfg)]):
        r = run(args)
        assert r.returncode == 1, (args, r.stdout, r.stderr)
        assert f"{cfg}:6:16: unterminated quote" in r.stderr, r.stderr
    # The same value with its closing quote passes, and so does a quoted value over two lines.
    cfg.write_text("listen:\n  http: 127.0.0.1:2580\nservices:\n  email:\n    host: x\n"
                   "    from_name: \"Example\n      App\"\n    rate_limit: 1/day\n")
    r = run(["--check", "-c", str(cfg)])
    assert r.returncode == 0, r.stderr


def test_invalid_utf8_and_oversized_config_are_refused(tmp_path):
    cfg = tmp_path / "latin1.yaml"
    cfg.write_bytes(b"listen:\n  http: 127.0.0.1:2580\nservices:\n  email:\n    host: x\n"
                    b"    from_name: Caf\xe9\n")
    r = run(["--check", "-c", str(cfg)])
    assert r.returncode == 1
    assert f"{cfg}:6:19: invalid UTF-8" in r.stderr, r.stderr
    big = tmp_path / "big.yaml"
    big.write_text("services:\n  email:\n    host: x\n#" + "x" * (1024 * 1024) + "\n")
    r = run(["--check", "-c", str(big)])
    assert r.returncode == 1
    assert r.stderr.strip() == f"cannot read {big}: larger than the limit of 1048576 bytes"
