"""Upstream probes (issue 9, SPEC §9.3 and §2): `mailcar --check --probe` says what works and
what does not, per service, in words a user can act on; GET /ready/upstream follows the
upstreams' health with a short probe_interval."""
import json
import subprocess
import time

from conftest import dead_port, MAILCAR_BIN, Upstream, free_port


def run_probe(tmp_path, services):
    cfg = tmp_path / "mailcar.yaml"
    cfg.write_text("listen:\n  http: 127.0.0.1:1\nservices:\n" + services)
    r = subprocess.run([MAILCAR_BIN, "--check", "--probe", "-c", str(cfg)], capture_output=True,
                       text=True, timeout=60)
    return r.returncode, r.stdout, r.stderr


def section(stdout, name):
    """The lines printed for one service."""
    lines = stdout.splitlines()
    start = lines.index(next(l for l in lines if l.startswith(f"service {name}:")))
    out = []
    for line in lines[start + 1:]:
        if not line.startswith("  "):
            break
        out.append(line.strip())
    return out


def entry(name, host, port, encryption, ca=None, extra=""):
    text = (f"  {name}:\n    host: {host}\n    port: {port}\n    encryption: {encryption}\n"
            "    connect_timeout: 2s\n    command_timeout: 5s\n")
    if ca:
        text += f"    ca_file: {ca}\n"
    return text + extra


def test_all_good_exits_0_with_one_line_per_step(certs, upstream_factory, tmp_path):
    plain = upstream_factory()
    tls = upstream_factory(mode="starttls", auth=("user", "secret-pw"))
    implicit = upstream_factory(mode="implicit")
    services = (entry("plain", "127.0.0.1", plain.port, "none")
                + entry("tls", "localhost", tls.port, "tls", certs.ca,
                        "    username: user\n    password: secret-pw\n")
                + entry("ssl", "localhost", implicit.port, "ssl", certs.ca)
                + "  outbox:\n    driver: file\n    path: ./outbox\n")
    code, out, err = run_probe(tmp_path, services)
    assert code == 0, out + err
    p = section(out, "plain")
    assert p[0] == "ok   DNS: 127.0.0.1 -> 127.0.0.1"
    assert p[1] == f"ok   connect: 127.0.0.1:{plain.port}"
    assert p[2].startswith("ok   EHLO: ") and "8BITMIME" in p[2]
    assert p[3] == "ok   AUTH: none configured"
    assert p[4].startswith("ok   ready in ")
    t = section(out, "tls")
    tls_line = next(l for l in t if l.startswith("ok   TLS (STARTTLS): TLSv1."))
    assert "certificate CN=localhost (names: localhost); verified" in tls_line
    assert "ok   AUTH PLAIN as user" in t
    assert "secret-pw" not in out + err  # never a password
    s = section(out, "ssl")
    assert any(l.startswith("ok   TLS (implicit): TLSv1.") for l in s), s
    assert "service outbox: driver file" in out
    assert out.rstrip().endswith("all services passed")


def test_each_failure_has_its_own_line_and_exit_1(certs, upstream_factory, tmp_path):
    plain = upstream_factory()
    tls = upstream_factory(mode="starttls", auth=("user", "secret-pw"))
    wrong = upstream_factory(mode="starttls", wrong_cert=True)
    implicit = upstream_factory(mode="implicit")
    services = (
        entry("refused", "127.0.0.1", dead_port(), "none")
        + entry("nostarttls", "127.0.0.1", plain.port, "tls")
        + entry("wrongname", "localhost", wrong.port, "tls", certs.ca)
        + entry("untrusted", "localhost", tls.port, "tls")  # the system CAs: not ours
        + entry("starttls465", "localhost", implicit.port, "tls", certs.ca)
        + entry("sslonplain", "localhost", plain.port, "ssl", certs.ca)
        + entry("badpassword", "localhost", tls.port, "tls", certs.ca,
                "    username: user\n    password: wrong-pw\n")
        + entry("nodns", "no-such-host.invalid", 25, "none")
        + entry("good", "127.0.0.1", plain.port, "none"))
    code, out, err = run_probe(tmp_path, services)
    assert code == 1, out + err
    assert out.rstrip().endswith("some services failed")

    def fail_line(name):
        lines = section(out, name)
        fails = [l for l in lines if l.startswith("FAIL ")]
        assert len(fails) == 1 and lines[-1] == fails[0], lines
        return fails[0]

    assert "refused" in fail_line("refused")
    assert "127.0.0.1:" in fail_line("refused")
    assert "server offers no STARTTLS" in fail_line("nostarttls")
    assert fail_line("wrongname") == (
        "FAIL certificate for CN=wrong does not match localhost (it names: wrong.example): "
        "set host to one of those names, or ask the provider which host name to use")
    assert "is not trusted" in fail_line("untrusted")
    assert "set ca_file" in fail_line("untrusted")
    assert "implicit TLS expected on this port?" in fail_line("starttls465")
    assert "no SMTP greeting" in fail_line("starttls465")
    sslonplain = fail_line("sslonplain")
    assert "TLS handshake got an SMTP banner (\"220 " in sslonplain, sslonplain
    assert "speaks plain SMTP" in sslonplain
    assert "535" in fail_line("badpassword") and "authentication" in fail_line("badpassword").lower()
    assert "wrong-pw" not in out + err
    assert "does not resolve" in fail_line("nodns")
    # Steps before the failure are listed as working.
    assert section(out, "badpassword")[2].startswith("ok   TLS (STARTTLS)")
    assert section(out, "good")[-1].startswith("ok   ready in ")


def test_probe_needs_check(tmp_path):
    r = subprocess.run([MAILCAR_BIN, "--probe"], capture_output=True, text=True, timeout=30)
    assert r.returncode == 2 and "--probe goes with --check" in r.stderr


def ready_upstream(mc):
    status, _, raw = mc.request("GET", "/ready/upstream")
    return status, json.loads(raw)


def wait_for_status(mc, want, timeout=20):
    deadline = time.time() + timeout
    while time.time() < deadline:
        status, body = ready_upstream(mc)
        if status == want:
            return body
        time.sleep(0.1)
    raise AssertionError(f"/ready/upstream never answered {want}: {ready_upstream(mc)}")


def test_ready_upstream_follows_the_upstream(certs, mailcar_factory):
    port = free_port()
    up = Upstream(certs, port=port)
    try:
        mc = mailcar_factory(f"""listen:
  http: 127.0.0.1:{{HTTP_PORT}}
services:
  email:
    host: 127.0.0.1
    port: {port}
    encryption: none
    probe_interval: 500ms
    connect_timeout: 2s
  outbox:
    driver: file
    path: ./outbox
log:
  level: debug
""")
        body = wait_for_status(mc, 200)
        email = body["services"]["email"]
        assert email["ok"] is True and email["error"] is None
        assert email["checked_at"].endswith("Z") and isinstance(email["latency_ms"], int)
        assert "outbox" not in body["services"]  # only relayed services
        assert body["status"] == "ready"
        up.stop()
        body = wait_for_status(mc, 503)
        assert body["services"]["email"]["ok"] is False
        assert "refused" in body["services"]["email"]["error"]
        assert mc.request("GET", "/ready")[0] == 200  # /ready stays (SPEC §9.3)
        up = Upstream(certs, port=port)
        body = wait_for_status(mc, 200)
        assert body["services"]["email"]["ok"] is True
    finally:
        up.stop()


def test_delivery_counts_as_probe_and_interval_0_never_probes(certs, upstream_factory,
                                                              mailcar_factory):
    up = upstream_factory()
    mc = mailcar_factory(f"""listen:
  http: 127.0.0.1:{{HTTP_PORT}}
services:
  email:
    host: 127.0.0.1
    port: {up.port}
    encryption: none
    probe_interval: 0
    from_email: noreply@example.com
roles:
  app:
    senders: ["*"]
credentials:
  - api_key: test-key
    role: app
log:
  level: debug
""")
    status, body = ready_upstream(mc)
    assert status == 503 and body["services"]["email"]["error"] == "not checked yet", body
    time.sleep(0.5)
    assert ready_upstream(mc)[0] == 503  # interval 0: no background probe
    assert not [e for e in mc.log_events() if e.get("event") == "upstream_probe"]
    status, _, _ = mc.send("email", {"to": "a@example.com", "subject": "s", "body_text": "b"})
    assert status == 200
    status, body = ready_upstream(mc)
    assert status == 200 and body["services"]["email"]["ok"] is True, body
