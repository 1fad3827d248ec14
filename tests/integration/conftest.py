"""Shared fixtures for mailcar's integration tests.

Everything here is real: mailcar runs as a process, upstream SMTP servers are aiosmtpd
(Debian's python3-aiosmtpd) with certificates made at test time by openssl, and clients are
curl, smtplib and swaks. Nothing is mocked.
"""
import email
import email.policy
import http.client
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

sys.path.insert(0, "/usr/lib/python3/dist-packages")
from aiosmtpd.controller import Controller  # noqa: E402
from aiosmtpd.smtp import AuthResult, LoginPassword  # noqa: E402

SOURCE_DIR = Path(os.environ.get("MAILCAR_SOURCE_DIR", Path(__file__).resolve().parents[2]))
MAILCAR_BIN = os.environ.get("MAILCAR_BIN", str(SOURCE_DIR / "build" / "mailcar"))


def _sanitized(binary):
    """True for an ASan build (CI's second pass): its allocator and shadow memory make RSS
    figures meaningless and it cannot run under an address-space limit."""
    try:
        out = subprocess.run(["ldd", binary], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return False
    return "libasan" in out


SANITIZED = _sanitized(MAILCAR_BIN)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


_held_ports = {}


def metric(mc, sample_name, **labels):
    """The value of one sample on mc's /metrics (labels must match those given), or None. A test
    that calls it is skipped where prometheus_client is not installed."""
    parser = pytest.importorskip("prometheus_client.parser")
    _, _, raw = mc.request("GET", "/metrics")
    for family in parser.text_string_to_metric_families(raw.decode()):
        for s in family.samples:
            if s.name == sample_name and all(s.labels.get(k) == v for k, v in labels.items()):
                return s.value
    return None


def dead_port():
    """A loopback port where nothing listens, for an upstream that is down.

    The port stays bound (never listening) until release_port(): a connection to it is
    refused, and no other test running beside this one can be handed it by free_port()
    and start answering there. A port from free_port() alone could be taken by a parallel
    test's server and then take this test's mail."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    _held_ports[port] = s
    return port


def release_port(port):
    """Frees a port from dead_port() so that a server of this test may bind it."""
    s = _held_ports.pop(port, None)
    if s is not None:
        s.close()


def run(cmd, **kw):
    return subprocess.run(cmd, check=True, capture_output=True, **kw)


# --------------------------------------------------------------------------- certificates

class Certs:
    """A private CA, a server certificate for localhost/127.0.0.1 and one for a wrong name."""

    def __init__(self, folder: Path):
        self.dir = folder
        self.ca = folder / "ca.crt"
        ca_key = folder / "ca.key"
        run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
             "-subj", "/CN=mailcar test CA", "-keyout", str(ca_key), "-out", str(self.ca)])
        self.cert, self.key = self._issue("localhost", "DNS:localhost,IP:127.0.0.1", ca_key)
        self.wrong_cert, self.wrong_key = self._issue("wrong", "DNS:wrong.example", ca_key)

    def _issue(self, name, san, ca_key):
        key = self.dir / f"{name}.key"
        csr = self.dir / f"{name}.csr"
        crt = self.dir / f"{name}.crt"
        ext = self.dir / f"{name}.ext"
        ext.write_text(f"subjectAltName={san}\n")
        run(["openssl", "req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}",
             "-keyout", str(key), "-out", str(csr)])
        run(["openssl", "x509", "-req", "-in", str(csr), "-CA", str(self.ca), "-CAkey", str(ca_key),
             "-CAcreateserial", "-days", "2", "-extfile", str(ext), "-out", str(crt)])
        return crt, key

    def server_context(self, wrong=False):
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        if wrong:
            ctx.load_cert_chain(self.wrong_cert, self.wrong_key)
        else:
            ctx.load_cert_chain(self.cert, self.key)
        return ctx

    def client_context(self):
        ctx = ssl.create_default_context(cafile=str(self.ca))
        return ctx


@pytest.fixture(scope="session")
def certs(tmp_path_factory):
    return Certs(tmp_path_factory.mktemp("certs"))


# --------------------------------------------------------------------------- upstream SMTP

class RecordingHandler:
    """aiosmtpd handler that keeps every message and can refuse chosen recipients."""

    def __init__(self, reject=None, reject_data=None):
        self.messages = []
        self.reject = {a.lower(): reply for a, reply in (reject or {}).items()}
        self.reject_data = reject_data
        self.cond = threading.Condition()

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        reply = self.reject.get(address.lower())
        if reply:
            return reply
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server, session, envelope):
        if self.reject_data:
            return self.reject_data
        with self.cond:
            self.messages.append({
                "mail_from": envelope.mail_from,
                "rcpt_tos": list(envelope.rcpt_tos),
                "data": envelope.original_content or envelope.content,
                "mail_options": list(envelope.mail_options),
                "tls": (session.ssl is not None
                        or server.transport.get_extra_info("ssl_object") is not None),
                "auth": session.authenticated,
                "peer": session.peer,
            })
            self.cond.notify_all()
        return "250 2.0.0 Message accepted for delivery"

    def wait_for(self, count, timeout=10):
        deadline = time.time() + timeout
        with self.cond:
            while len(self.messages) < count:
                left = deadline - time.time()
                if left <= 0:
                    raise AssertionError(f"upstream got {len(self.messages)} messages, wanted {count}")
                self.cond.wait(left)
        return self.messages


class Upstream:
    """A real SMTP server on loopback: plain, STARTTLS (+AUTH) or implicit TLS."""

    def __init__(self, certs, mode="plain", auth=None, reject=None, reject_data=None,
                 wrong_cert=False, smtputf8=True, handler=None, port=None):
        self.handler = handler or RecordingHandler(reject, reject_data)
        self.port = port or free_port()
        release_port(self.port)  # an upstream that was down (dead_port) comes up
        self.mode = mode
        self.auth = auth
        kwargs = {}
        if auth:
            user, password = auth

            def authenticator(server, session, envelope, mechanism, auth_data):
                ok = (isinstance(auth_data, LoginPassword)
                      and auth_data.login == user.encode() and auth_data.password == password.encode())
                return AuthResult(success=ok, handled=False)

            kwargs.update(authenticator=authenticator, auth_required=True)
            # aiosmtpd only counts STARTTLS as TLS for AUTH; on implicit TLS the whole
            # connection is encrypted anyway, so let it offer AUTH there too.
            kwargs["auth_require_tls"] = mode == "starttls"
        if mode == "starttls":
            kwargs.update(tls_context=certs.server_context(wrong_cert), require_starttls=True)
        kwargs["enable_SMTPUTF8"] = smtputf8
        ssl_context = certs.server_context(wrong_cert) if mode == "implicit" else None
        self.controller = Controller(self.handler, hostname="127.0.0.1", port=self.port,
                                     ssl_context=ssl_context, server_hostname="upstream.test",
                                     ready_timeout=10, **kwargs)
        self.controller.start()

    @property
    def messages(self):
        return self.handler.messages

    def wait_for(self, count, timeout=10):
        return self.handler.wait_for(count, timeout)

    def stop(self):
        self.controller.stop()


@pytest.fixture
def upstream_factory(certs):
    started = []

    def make(**kw):
        u = Upstream(certs, **kw)
        started.append(u)
        return u

    yield make
    for u in started:
        u.stop()


def parse_message(data: bytes):
    """Parse what arrived upstream with the strict modern policy; it must have no defects."""
    msg = email.message_from_bytes(data, policy=email.policy.default)
    defects = list(msg.defects)
    for part in msg.walk():
        defects.extend(part.defects)
    assert not defects, f"message has defects: {defects}"
    return msg


# --------------------------------------------------------------------------- mailcar

class Mailcar:
    """mailcar as a child process with a configuration written for the test."""

    def __init__(self, folder: Path, config: str, env=None, args=None, wait_ready=True):
        self.dir = folder
        self.http_port = free_port()
        self.smtp_port = free_port()
        self.config_path = folder / "mailcar.yaml"
        self.config_path.write_text(config.replace("{HTTP_PORT}", str(self.http_port))
                                    .replace("{SMTP_PORT}", str(self.smtp_port)))
        self.expect_forced_stop = False  # set by tests that let the shutdown grace run out
        self.log_path = folder / "mailcar.log"
        self.log_file = open(self.log_path, "wb")
        full_env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
        full_env.update(env or {})
        cmd = [MAILCAR_BIN, "-c", str(self.config_path)] + (args or [])
        self.proc = subprocess.Popen(cmd, stdout=self.log_file, stderr=subprocess.STDOUT,
                                     env=full_env, cwd=folder)
        if wait_ready:
            self.wait_ready()

    def wait_ready(self, timeout=15):
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"mailcar exited {self.proc.returncode}:\n{self.log()}")
            try:
                status, _, _ = self.request("GET", "/ready", timeout=1)
                if status == 200:
                    return
            except OSError:
                pass
            time.sleep(0.05)
        raise AssertionError(f"mailcar not ready:\n{self.log()}")

    def request(self, method, path, body=None, headers=None, timeout=30):
        conn = http.client.HTTPConnection("127.0.0.1", self.http_port, timeout=timeout)
        try:
            if isinstance(body, (dict, list)):
                body = json.dumps(body)
                headers = {"Content-Type": "application/json", **(headers or {})}
            conn.request(method, path, body=body, headers=headers or {})
            resp = conn.getresponse()
            raw = resp.read()
            return resp.status, dict((k.lower(), v) for k, v in resp.getheaders()), raw
        finally:
            conn.close()

    def send(self, service, payload, key="test-key", headers=None, timeout=30):
        """POST JSON to /api/v2/<service>; returns (status, parsed JSON body, headers)."""
        hdrs = dict(headers or {})
        if key is not None:
            hdrs.setdefault("X-DreamFactory-API-Key", key)
        status, rh, raw = self.request("POST", f"/api/v2/{service}", payload, hdrs, timeout)
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = raw
        return status, body, rh

    def log(self):
        if not self.log_file.closed:
            self.log_file.flush()
        return self.log_path.read_text(errors="replace")

    def log_events(self):
        events = []
        for line in self.log().splitlines():
            try:
                events.append(json.loads(line))
            except ValueError:
                pass
        return events

    def signal(self, sig):
        self.proc.send_signal(sig)

    def stop(self, timeout=20):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                raise AssertionError(f"mailcar did not stop on SIGTERM:\n{self.log()}")
        self.log_file.close()
        return self.proc.returncode


@pytest.fixture
def mailcar_factory(tmp_path):
    started = []

    def make(config, **kw):
        folder = tmp_path / f"mc{len(started)}"
        folder.mkdir()
        m = Mailcar(folder, config, **kw)
        started.append(m)
        return m

    yield make
    for m in started:
        code = m.stop()
        assert code == 0, f"mailcar exited {code} on SIGTERM:\n{m.log()}"
        # A clean stop finishes its work; only a test that let the grace run out may see this.
        if not m.expect_forced_stop:
            assert '"shutdown_forced"' not in m.log(), f"mailcar needed a forced stop:\n{m.log()}"


def service_yaml(name, upstream, certs=None, username=None, password=None, encryption=None,
                 extra=""):
    """One `services:` entry pointing at an Upstream."""
    enc = encryption or {"plain": "none", "starttls": "tls", "implicit": "ssl"}[upstream.mode]
    lines = [f"  {name}:", "    host: 127.0.0.1" if upstream.mode == "plain" else "    host: localhost",
             f"    port: {upstream.port}", f"    encryption: {enc}",
             "    from_email: noreply@example.com", "    from_name: Example App",
             "    connect_timeout: 5s", "    command_timeout: 10s"]
    if certs is not None:
        lines.append(f"    ca_file: {certs.ca}")
    if username:
        lines.append(f"    username: {username}")
    if password:
        lines.append(f"    password: {password}")
    text = "\n".join(lines) + "\n"
    if extra:
        text += "".join(f"    {l}\n" for l in extra.strip("\n").splitlines())
    return text


def basic_config(services_yaml, roles=None, extra=""):
    """A configuration with one role `app` allowed every sender and key `test-key`."""
    return f"""listen:
  http: 127.0.0.1:{{HTTP_PORT}}
services:
{services_yaml}roles:
  app:
    senders: ["*"]
{roles or ''}credentials:
  - api_key: test-key
    role: app
limits:
  idle_timeout: 10s
  shutdown_grace: 5s
log:
  format: json
  level: debug
{extra}"""
