"""`mailcar --health-check [-c FILE]` (SPEC §13): GET /health on the configured HTTP
listener, exit 0 or 1, no curl needed; the container image's HEALTHCHECK."""
import os
import socket
import subprocess
import threading
import time

from conftest import dead_port, MAILCAR_BIN, basic_config, free_port, service_yaml


def health(args, env=None, cwd=None, timeout=20):
    full_env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
    full_env.update(env or {})
    started = time.monotonic()
    proc = subprocess.run([MAILCAR_BIN, "--health-check", *args], capture_output=True, text=True,
                          env=full_env, cwd=cwd, timeout=timeout)
    return proc, time.monotonic() - started


def test_healthy_daemon_and_wildcard_listener(upstream_factory, mailcar_factory, tmp_path):
    up = upstream_factory(mode="plain")
    mc = mailcar_factory(basic_config(service_yaml("email", up)))
    proc, _ = health(["-c", str(mc.config_path)])
    assert proc.returncode == 0, proc
    assert proc.stdout == "" and proc.stderr == ""
    # A wildcard listen address is checked through loopback; only `listen` is read, so the
    # rest of the file may use variables the checking process does not have.
    conf = tmp_path / "wild.yaml"
    conf.write_text(f"listen:\n  http: 0.0.0.0:{mc.http_port}\nservices:\n  x:\n"
                    "    host: ${{NOT_SET_HERE}}\n")
    proc, _ = health(["-c", str(conf)])
    assert proc.returncode == 0, proc


def test_unhealthy_cases_exit_1(tmp_path):
    dead = dead_port()
    conf = tmp_path / "dead.yaml"
    conf.write_text(f"listen:\n  http: 127.0.0.1:{dead}\n")
    proc, _ = health(["-c", str(conf)])
    assert proc.returncode == 1
    assert f"127.0.0.1:{dead}" in proc.stderr and "health check failed" in proc.stderr

    proc, _ = health(["-c", str(tmp_path / "missing.yaml")])
    assert proc.returncode == 1 and "missing.yaml" in proc.stderr

    smtp_only = tmp_path / "smtp-only.yaml"
    smtp_only.write_text("listen:\n  smtp: 127.0.0.1:2525\n")
    proc, _ = health(["-c", str(smtp_only)])
    assert proc.returncode == 1 and "no HTTP listener" in proc.stderr


def serve_once(reply):
    """A listener that answers every connection with `reply` (None: never answers)."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(4)
    held = []

    def loop():
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            held.append(conn)
            if reply is not None:
                conn.recv(4096)
                conn.sendall(reply)
    threading.Thread(target=loop, daemon=True).start()
    return server, held


def test_wrong_answers_and_silence_exit_1(tmp_path):
    for reply, why in [(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n",
                        "answered 503"),
                       (b"220 mail.example.com ESMTP\r\n", "not an HTTP answer"),
                       (None, "no answer within 3 s")]:
        server, held = serve_once(reply)
        try:
            conf = tmp_path / "c.yaml"
            conf.write_text(f"listen:\n  http: 127.0.0.1:{server.getsockname()[1]}\n")
            proc, seconds = health(["-c", str(conf)])
            assert proc.returncode == 1, proc
            assert why in proc.stderr, proc
            assert seconds < 10  # the 3 s timeout, with a margin for a slow machine
        finally:
            server.close()
            for c in held:
                c.close()


def test_zero_file_setup_from_the_environment(upstream_factory, mailcar_factory, tmp_path):
    up = upstream_factory(mode="plain")
    mc = mailcar_factory(basic_config(service_yaml("email", up)))
    if os.path.exists("/etc/mailcar/mailcar.yaml"):
        import pytest
        pytest.skip("/etc/mailcar/mailcar.yaml exists and would be used instead")
    env = {"MAIL_HOST": "127.0.0.1", "MAIL_PORT": str(up.port), "MAIL_ENCRYPTION": "null",
           "MAIL_FROM_ADDRESS": "app@example.com", "MAILCAR_API_KEY": "k",
           "MAILCAR_HTTP_LISTEN": f"127.0.0.1:{mc.http_port}"}
    proc, _ = health([], env=env, cwd=tmp_path)  # no conf/mailcar.yaml in an empty folder
    assert proc.returncode == 0, proc
    env["MAILCAR_HTTP_LISTEN"] = f"127.0.0.1:{free_port()}"
    proc, _ = health([], env=env, cwd=tmp_path)
    assert proc.returncode == 1, proc
