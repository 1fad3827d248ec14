"""The container image (SPEC §13), built and run for real without a registry: a Debian 12
base bootstrapped with mmdebstrap (cached between runs), packaging/container/Dockerfile built
with podman (chroot isolation), run with runc and a mounted configuration against an aiosmtpd
upstream on the host network. Both doors, the sendmail link, the health command, non-root,
and a clean `podman stop` within 2 s with idle connections open.

Slow the first time (the build compiles mailcar inside the image); podman's layer cache makes
later runs, such as CI's sanitizer pass over the same sources, take seconds."""
import json
import os
import re
import shutil
import smtplib
import socket
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from conftest import SOURCE_DIR, free_port, parse_message
from mailcar_cache import cache_dir

BASE_IMAGE = "localhost/mailcar-test-base:bookworm"
IMAGE = "localhost/mailcar:test"
MAX_IMAGE_GROWTH = 40 * 1000 * 1000  # bytes on top of the base image (the aim)

pytestmark = pytest.mark.skipif(
    not all(shutil.which(tool) for tool in ("podman", "runc", "mmdebstrap")),
    reason="podman, runc and mmdebstrap are needed (scripts/install-deps.sh installs them)")


def host_debian_mirror():
    """The Debian mirror the host's apt uses, so the image build reaches the same one."""
    texts = []
    for path in [Path("/etc/apt/sources.list"), *Path("/etc/apt/sources.list.d").glob("*.sources"),
                 *Path("/etc/apt/sources.list.d").glob("*.list")]:
        try:
            texts.append(path.read_text())
        except OSError:
            pass
    for text in texts:
        for stanza in re.split(r"\n\s*\n", text):  # deb822
            uris = re.search(r"^URIs:\s*(\S+)", stanza, re.M)
            suites = re.search(r"^Suites:\s*(.+)$", stanza, re.M)
            if uris and suites and "bookworm" in suites[1].split():
                return uris[1]
        for m in re.finditer(r"^deb\s+(?:\[[^\]]*\]\s+)?(\S+)\s+bookworm\s", text, re.M):
            return m[1]
    return "http://deb.debian.org/debian"


@pytest.fixture(scope="module")
def podman(tmp_path_factory):
    """`podman` with runc, cgroupfs and no ulimit/pids settings (crun cannot run here)."""
    conf = tmp_path_factory.mktemp("podman") / "containers.conf"
    conf.write_text('[engine]\ncgroup_manager = "cgroupfs"\nevents_logger = "file"\n'
                    '[containers]\ndefault_ulimits = []\npids_limit = 0\n')
    env = dict(os.environ, CONTAINERS_CONF=str(conf))

    def run(*args, check=True, timeout=120, **kw):
        proc = subprocess.run(["podman", "--runtime", "runc", *args], env=env, timeout=timeout,
                              capture_output=True, text=True, **kw)
        if check and proc.returncode != 0:
            raise AssertionError(f"podman {' '.join(args)} exited {proc.returncode}:\n"
                                 f"{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
        return proc
    return run


@pytest.fixture(scope="module")
def base_image(podman):
    tarball = cache_dir("container") / "debian-bookworm-minbase.tar"
    if not tarball.exists():
        partial = tarball.with_suffix(".partial.tar")
        subprocess.run(["mmdebstrap", "--variant=minbase", "--format=tar", "bookworm",
                        str(partial), host_debian_mirror()],
                       check=True, capture_output=True, stdin=subprocess.DEVNULL, timeout=900)
        partial.rename(tarball)
    if podman("image", "exists", BASE_IMAGE, check=False).returncode != 0:
        podman("import", str(tarball), BASE_IMAGE, timeout=300)
    return BASE_IMAGE


@pytest.fixture(scope="module")
def image(podman, base_image):
    started = time.monotonic()
    # Docker format: the OCI format has no HEALTHCHECK.
    podman("build", "--format", "docker", "--isolation", "chroot", "--build-arg",
           f"BASE={base_image}", "-f", str(SOURCE_DIR / "packaging/container/Dockerfile"),
           "-t", IMAGE, str(SOURCE_DIR), timeout=1800)
    seconds = time.monotonic() - started
    size = int(podman("image", "inspect", IMAGE, "--format", "{{.Size}}").stdout)
    base = int(podman("image", "inspect", base_image, "--format", "{{.Size}}").stdout)
    print(f"\nimage build {seconds:.0f} s; image {size / 1e6:.1f} MB, "
          f"{(size - base) / 1e6:.1f} MB on top of the base")
    return {"name": IMAGE, "size": size, "base_size": base}


def test_image_is_small_non_root_and_needs_no_shell(podman, image):
    assert image["size"] - image["base_size"] < MAX_IMAGE_GROWTH, image
    inspected = json.loads(podman("image", "inspect", IMAGE).stdout)[0]
    config = inspected["Config"]
    assert config["User"] == "10001:10001"
    assert config["StopSignal"] == "SIGTERM"
    assert config["Entrypoint"] == ["/usr/bin/mailcar"]
    assert inspected["Healthcheck"]["Test"] == ["CMD", "/usr/bin/mailcar", "--health-check"]
    assert "/var/lib/mailcar" in config["Volumes"]


CONFIG = """listen:
  http: 127.0.0.1:{http}
  smtp: 127.0.0.1:{smtp}
services:
  email:
    host: 127.0.0.1
    port: {upstream}
    encryption: none
    from_email: noreply@example.com
roles:
  app:
    senders: ["*@example.com"]
credentials:
  - api_key_file: /run/secrets/mailcar/api-key
    role: app
smtp:
  service: email
  anonymous_role: app
spool:
  path: /var/lib/mailcar/spool
limits:
  shutdown_grace: 10s
log:
  format: json
  level: info
"""


def wait_ready(port, container_log, timeout=30):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                s.sendall(b"GET /ready HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                if s.recv(100).startswith(b"HTTP/1.1 200"):
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"mailcar in the container never became ready:\n{container_log()}")


def http_send(port, payload, key):
    import http.client
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("POST", "/api/v2/email", body=json.dumps(payload),
                     headers={"Content-Type": "application/json", "X-DreamFactory-API-Key": key})
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def test_container_relays_both_doors_is_healthy_and_stops_fast(podman, image, upstream_factory,
                                                                tmp_path):
    up = upstream_factory(mode="plain")
    http_port, smtp_port = free_port(), free_port()
    conf = tmp_path / "mailcar.yaml"
    conf.write_text(CONFIG.format(http=http_port, smtp=smtp_port, upstream=up.port))
    key = tmp_path / "api-key"
    key.write_text("container-key\n")
    for f in (conf, key):  # mounted files are read by uid 10001
        f.chmod(0o644)
    name = f"mailcar-test-{uuid.uuid4().hex[:8]}"
    volume = f"{name}-spool"
    podman("volume", "create", volume)
    try:
        podman("run", "-d", "--name", name, "--network", "host",
               "-v", f"{conf}:/etc/mailcar/mailcar.yaml:ro",
               "-v", f"{key}:/run/secrets/mailcar/api-key:ro",
               "-v", f"{volume}:/var/lib/mailcar", image["name"])
        log = lambda: podman("logs", name, check=False).stdout + podman("logs", name, check=False).stderr  # noqa: E731
        wait_ready(http_port, log)

        # HTTP door, with the key from the mounted secret file.
        status, body = http_send(http_port, {"to": [{"email": "web@example.org"}],
                                             "from": {"email": "app@example.com"},
                                             "subject": "via HTTP", "body_text": "one"},
                                 "container-key")
        assert status in (200, 202), body  # 202: accepted into the spool
        # SMTP door.
        with smtplib.SMTP("127.0.0.1", smtp_port, timeout=30) as s:
            s.sendmail("app@example.com", ["smtp@example.org"],
                       b"From: app@example.com\r\nTo: smtp@example.org\r\nSubject: via SMTP\r\n"
                       b"\r\ntwo\r\n")
        # The sendmail link inside the image, as an application built on it would use it.
        proc = podman("exec", "-i", "-e", f"MAILCAR_SMTP=127.0.0.1:{smtp_port}", name,
                      "/usr/libexec/mailcar/sendmail", "-t",
                      input="From: app@example.com\nTo: cron@example.org\nSubject: via sendmail"
                            "\n\nthree\n", check=False)
        assert proc.returncode == 0, proc
        got = up.wait_for(3, timeout=30)
        assert {m["rcpt_tos"][0] for m in got} == {"web@example.org", "smtp@example.org",
                                                   "cron@example.org"}
        for m in got:
            parse_message(m["data"])

        # The health command, alone and as the image's HEALTHCHECK.
        assert podman("exec", name, "/usr/bin/mailcar", "--health-check",
                      check=False).returncode == 0
        assert podman("healthcheck", "run", name, check=False).returncode == 0
        # Not root.
        assert podman("top", name, "user", "huser").stdout.split()[2:4] == ["mailcar", "10001"]

        # `podman stop` sends SIGTERM; with an idle SMTP session and an idle keep-alive HTTP
        # connection open, mailcar must still exit cleanly at once (not after its grace).
        idle_smtp = smtplib.SMTP("127.0.0.1", smtp_port, timeout=30)
        idle_smtp.ehlo("idle")
        idle_http = socket.create_connection(("127.0.0.1", http_port), timeout=30)
        idle_http.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        assert idle_http.recv(100).startswith(b"HTTP/1.1 200")
        started = time.monotonic()
        podman("stop", "-t", "10", name, timeout=60)
        elapsed = time.monotonic() - started
        state = json.loads(podman("inspect", name).stdout)[0]["State"]
        idle_smtp.close()
        idle_http.close()
        assert state["ExitCode"] == 0, log()
        assert elapsed < 2.0, f"podman stop took {elapsed:.2f} s\n{log()}"
    finally:
        podman("rm", "-f", name, check=False)
        podman("volume", "rm", "-f", volume, check=False)
