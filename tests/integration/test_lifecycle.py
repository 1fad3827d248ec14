"""Process lifecycle and resource limits, end to end with real processes and sockets.

Graceful stop (SIGTERM) with a message in flight, the shutdown grace running out, upstream
rejections after DATA on the SMTP ingress, connection limits on both listeners, the HTTP idle
timeout, and a full run whose log must hold no secret and no message text.
"""
import asyncio
import base64
import signal
import smtplib
import socket
import threading
import time

import pytest

from conftest import RecordingHandler, Upstream, service_yaml

API_KEY = "lifecycle-api-key-7f3a9c"
SMTP_USER = "legacy-app"
SMTP_PASSWORD = "smtp-auth-pw-Qx81zz"


# --------------------------------------------------------------------------- helpers

class SlowHandler(RecordingHandler):
    """Records like RecordingHandler, but waits `delay` seconds before answering DATA."""

    def __init__(self, delay):
        super().__init__()
        self.delay = delay
        self.data_started = threading.Event()

    async def handle_DATA(self, server, session, envelope):
        self.data_started.set()
        await asyncio.sleep(self.delay)
        return await super().handle_DATA(server, session, envelope)


class SlowUpstream(Upstream):
    """A plain aiosmtpd upstream on loopback whose answer to the final dot is slow."""

    def __init__(self, certs, delay):
        super().__init__(certs, mode="plain", handler=SlowHandler(delay))

    def stop(self):
        try:
            super().stop()
        except Exception:  # a handler still sleeping for a vanished client is not our concern
            pass


@pytest.fixture
def slow_upstream(certs):
    started = []

    def make(delay):
        u = SlowUpstream(certs, delay)
        started.append(u)
        return u

    yield make
    for u in started:
        u.stop()


def lifecycle_config(upstream, grace="10s", idle="10s", command_timeout="10s", smtp=True,
                     max_connections=None):
    """HTTP (and optionally SMTP) ingress, one plain service `email`, anonymous SMTP allowed."""
    svc = service_yaml("email", upstream).replace("command_timeout: 10s",
                                                  f"command_timeout: {command_timeout}")
    limits = f"  idle_timeout: {idle}\n  shutdown_grace: {grace}\n"
    if max_connections is not None:
        limits += f"  max_connections: {max_connections}\n"
    cfg = """listen:
  http: 127.0.0.1:{HTTP_PORT}
"""
    if smtp:
        cfg += "  smtp: 127.0.0.1:{SMTP_PORT}\n"
    cfg += f"""services:
{svc}roles:
  app:
    senders: ["*"]
credentials:
  - api_key: test-key
    role: app
"""
    if smtp:
        cfg += """smtp:
  service: email
  hostname: mailcar.test
  anonymous_role: app
"""
    cfg += f"""limits:
{limits}log:
  format: json
  level: debug
"""
    return cfg


def in_background(fn, *args, **kw):
    """Run fn in a thread; returns (thread, result dict with 'value' or 'error', 'at')."""
    result = {}

    def target():
        try:
            result["value"] = fn(*args, **kw)
        except BaseException as e:  # noqa: BLE001 - reported to the test
            result["error"] = e
        result["at"] = time.monotonic()

    t = threading.Thread(target=target, daemon=True)
    t.start()
    return t, result


def payload(text="lifecycle body"):
    return {"to": [{"email": "alice@example.com", "name": "Alice"}],
            "subject": "lifecycle", "body_text": text}


def assert_http_refuses_new_connections(port):
    """After SIGTERM the HTTP listener must not serve: connect refused, or 503, or closed."""
    try:
        s = socket.create_connection(("127.0.0.1", port), timeout=3)
    except OSError:
        return  # refused: the listener is closed
    with s:
        try:
            s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
            data = s.recv(4096)
        except OSError:
            return
        assert data == b"" or data.startswith(b"HTTP/1.1 503"), \
            f"a new HTTP connection was served during shutdown: {data[:200]!r}"


def assert_smtp_refuses_new_connections(port):
    try:
        s = socket.create_connection(("127.0.0.1", port), timeout=3)
    except OSError:
        return
    with s:
        try:
            data = s.recv(4096)
        except OSError:
            return
        assert data == b"" or data.startswith(b"421"), \
            f"a new SMTP connection was greeted during shutdown: {data[:200]!r}"


def read_until_closed(sock, limit):
    """Read until EOF or reset; returns (bytes, seconds waited). Fails if still open at `limit`."""
    start = time.monotonic()
    data = b""
    sock.settimeout(limit)
    while True:
        try:
            chunk = sock.recv(4096)
        except ConnectionResetError:
            break
        except socket.timeout:
            raise AssertionError(f"connection still open after {limit}s; got {data!r}")
        if not chunk:
            break
        data += chunk
    return data, time.monotonic() - start


# --------------------------------------------------------------------------- 1. graceful stop

def test_sigterm_finishes_http_request_in_flight(slow_upstream, mailcar_factory):
    up = slow_upstream(delay=2.0)
    mc = mailcar_factory(lifecycle_config(up, grace="10s"))
    thread, result = in_background(mc.send, "email", payload(), timeout=30)
    assert up.handler.data_started.wait(10), "the message never reached the upstream's DATA"

    sigterm_at = time.monotonic()
    mc.signal(signal.SIGTERM)
    time.sleep(0.3)
    # Still in flight (the upstream sleeps ~2 s): the listeners are already closed.
    assert "value" not in result and "error" not in result, "answered before the upstream did"
    assert_http_refuses_new_connections(mc.http_port)
    assert_smtp_refuses_new_connections(mc.smtp_port)

    thread.join(15)
    assert "error" not in result, f"in-flight request failed: {result.get('error')!r}\n{mc.log()}"
    status, body, headers = result["value"]
    assert status == 200, (status, body, mc.log())
    assert body["count"] == 1
    [got] = up.wait_for(1)
    assert got["rcpt_tos"] == ["alice@example.com"]
    assert b"lifecycle body" in got["data"]

    code = mc.proc.wait(timeout=10)  # shutdown_grace
    assert code == 0, mc.log()
    assert time.monotonic() - sigterm_at < 10
    # It waited for the upstream's answer rather than cutting it off.
    assert result["at"] - sigterm_at >= 1.0


def test_sigterm_finishes_smtp_message_in_flight(slow_upstream, mailcar_factory):
    up = slow_upstream(delay=2.0)
    mc = mailcar_factory(lifecycle_config(up, grace="10s"))
    client = smtplib.SMTP("127.0.0.1", mc.smtp_port, timeout=30)
    message = (b"From: app@example.com\r\nTo: alice@example.com\r\nSubject: smtp in flight\r\n"
               b"\r\nsmtp lifecycle body\r\n")
    thread, result = in_background(client.sendmail, "app@example.com", ["alice@example.com"],
                                   message)
    try:
        assert up.handler.data_started.wait(10), "the message never reached the upstream's DATA"
        sigterm_at = time.monotonic()
        mc.signal(signal.SIGTERM)
        thread.join(15)
        assert "error" not in result, f"in-flight SMTP message failed: {result.get('error')!r}"
        assert result["value"] == {}, result  # 250 after the upstream accepted
        # Then the session is ended with 421 (or simply closed).
        try:
            code, _ = client.noop()
            assert code == 421, code
        except smtplib.SMTPServerDisconnected:
            pass
    finally:
        client.close()
    [got] = up.wait_for(1)
    assert b"smtp lifecycle body" in got["data"]
    assert mc.proc.wait(timeout=10) == 0, mc.log()
    assert time.monotonic() - sigterm_at < 10


# --------------------------------------------------------------------------- 2. grace runs out

def test_shutdown_grace_runs_out(slow_upstream, mailcar_factory):
    up = slow_upstream(delay=6.0)
    mc = mailcar_factory(lifecycle_config(up, grace="1s", command_timeout="30s"))
    mc.expect_forced_stop = True
    thread, result = in_background(mc.send, "email", payload(), timeout=30)
    assert up.handler.data_started.wait(10), "the message never reached the upstream's DATA"

    sigterm_at = time.monotonic()
    mc.signal(signal.SIGTERM)
    code = mc.proc.wait(timeout=15)
    exited_after = time.monotonic() - sigterm_at
    assert code == 0, mc.log()
    # grace (1 s) plus a small margin; the upstream would only have answered after ~6 s.
    assert exited_after < 5.0, f"mailcar took {exited_after:.1f}s to stop with a 1s grace"

    thread.join(10)
    assert not thread.is_alive()
    if "value" in result:
        status, body, _ = result["value"]
        assert status in (500, 503), (status, body)
        assert isinstance(body, dict) and body["error"]["code"] == status, body
        assert result["at"] - sigterm_at < 5.0
    else:
        # The connection was closed without an answer: acceptable, but it must not hang.
        assert isinstance(result["error"], OSError) or "Disconnected" in type(result["error"]).__name__, \
            repr(result["error"])
    assert up.messages == [], "the upstream cannot have accepted it yet"


def test_shutdown_grace_runs_out_smtp(slow_upstream, mailcar_factory):
    """SPEC 2: what is still open when the grace is over gets SMTP 421 (never a 250)."""
    up = slow_upstream(delay=6.0)
    mc = mailcar_factory(lifecycle_config(up, grace="1s", command_timeout="30s"))
    mc.expect_forced_stop = True
    client = smtplib.SMTP("127.0.0.1", mc.smtp_port, timeout=30)
    message = (b"From: app@example.com\r\nTo: alice@example.com\r\nSubject: cut off\r\n"
               b"\r\nbody\r\n")
    thread, result = in_background(client.sendmail, "app@example.com", ["alice@example.com"],
                                   message)
    try:
        assert up.handler.data_started.wait(10), "the message never reached the upstream's DATA"
        sigterm_at = time.monotonic()
        mc.signal(signal.SIGTERM)
        code = mc.proc.wait(timeout=15)
        exited_after = time.monotonic() - sigterm_at
        thread.join(10)
    finally:
        client.close()
    assert code == 0, mc.log()
    assert exited_after < 5.0, f"mailcar took {exited_after:.1f}s to stop with a 1s grace"
    assert "value" not in result, f"the client was told the message was accepted: {result}"
    err = result["error"]
    if isinstance(err, smtplib.SMTPDataError):
        assert err.smtp_code == 421, (err.smtp_code, err.smtp_error)
    else:
        assert isinstance(err, (smtplib.SMTPServerDisconnected, OSError)), repr(err)
    assert up.messages == []


# --------------------------------------------------------------------------- 3. SMTP rejections

MESSAGE = (b"From: app@example.com\r\nTo: alice@example.com\r\nSubject: reject me\r\n"
           b"\r\nbody\r\n")


@pytest.mark.parametrize("reply, low, high", [
    ("554 5.7.1 Message refused by policy", 500, 600),
    ("451 4.3.0 Try later", 400, 500),
])
def test_smtp_upstream_rejection_after_data(upstream_factory, mailcar_factory, reply, low, high):
    up = upstream_factory(mode="plain", reject_data=reply)
    mc = mailcar_factory(lifecycle_config(up))
    with smtplib.SMTP("127.0.0.1", mc.smtp_port, timeout=30) as c:
        with pytest.raises(smtplib.SMTPDataError) as err:
            c.sendmail("app@example.com", ["alice@example.com"], MESSAGE)
        assert low <= err.value.smtp_code < high, (err.value.smtp_code, err.value.smtp_error)
        # The session survives the failed delivery.
        assert c.noop()[0] == 250
    assert up.messages == []


# --------------------------------------------------------------------------- 4. SMTP conn limit

def smtp_open(port):
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    f = s.makefile("rb")
    return s, f


def test_smtp_connection_limit(upstream_factory, mailcar_factory):
    up = upstream_factory(mode="plain")
    mc = mailcar_factory(lifecycle_config(up, max_connections=2))
    s1, f1 = smtp_open(mc.smtp_port)
    s2, f2 = smtp_open(mc.smtp_port)
    try:
        assert f1.readline().startswith(b"220")
        assert f2.readline().startswith(b"220")

        s3, f3 = smtp_open(mc.smtp_port)
        with s3:
            line = f3.readline()
            assert line.startswith(b"421"), line
            assert f3.read() == b"", "the refused connection must be closed"
            f3.close()

        # Closing one of the two frees a slot.
        s1.sendall(b"QUIT\r\n")
        assert f1.readline().startswith(b"221")
        f1.close()  # the fd stays open while a makefile() object refers to it
        s1.close()
        deadline = time.monotonic() + 5
        while True:
            s4, f4 = smtp_open(mc.smtp_port)
            with s4, f4:
                line = f4.readline()
                if line.startswith(b"220"):
                    s4.sendall(b"QUIT\r\n")
                    break
            assert time.monotonic() < deadline, f"no slot freed after closing one: {line!r}"
            time.sleep(0.2)
        # The untouched session still works.
        s2.sendall(b"NOOP\r\n")
        assert f2.readline().startswith(b"250")
    finally:
        for x in (f1, s1, f2, s2):
            x.close()


# --------------------------------------------------------------------------- 5. HTTP conn limit

def http_get_keepalive(sock, f):
    sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
    status = f.readline()
    length = 0
    while True:
        line = f.readline()
        if line in (b"\r\n", b""):
            break
        name, _, value = line.decode().partition(":")
        if name.lower() == "content-length":
            length = int(value.strip())
    f.read(length)
    return status


def test_http_connection_limit(upstream_factory, mailcar_factory):
    up = upstream_factory(mode="plain")
    mc = mailcar_factory(lifecycle_config(up, smtp=False, max_connections=2))
    conns = []
    try:
        for _ in range(2):
            s = socket.create_connection(("127.0.0.1", mc.http_port), timeout=10)
            f = s.makefile("rb")
            conns.append((s, f))
            assert http_get_keepalive(s, f).startswith(b"HTTP/1.1 200")

        with socket.create_connection(("127.0.0.1", mc.http_port), timeout=10) as s3:
            data, _ = read_until_closed(s3, 10)
            assert data.startswith(b"HTTP/1.1 503"), data

        # Both kept-alive connections still work.
        for s, f in conns:
            assert http_get_keepalive(s, f).startswith(b"HTTP/1.1 200")

        conns[0][1].close()  # the fd stays open while a makefile() object refers to it
        conns[0][0].close()
        deadline = time.monotonic() + 5
        while True:
            status, _, _ = mc.request("GET", "/health", timeout=10)
            if status == 200:
                break
            assert time.monotonic() < deadline, f"no slot freed after closing one: {status}"
            time.sleep(0.2)
    finally:
        for s, f in conns:
            f.close()
            s.close()


# --------------------------------------------------------------------------- 6. HTTP idle timeout

def test_http_idle_keepalive_connection_is_closed(upstream_factory, mailcar_factory):
    up = upstream_factory(mode="plain")
    mc = mailcar_factory(lifecycle_config(up, smtp=False, idle="2s"))
    # A connection that never sends anything.
    with socket.create_connection(("127.0.0.1", mc.http_port), timeout=10) as s:
        data, waited = read_until_closed(s, 10)
        assert data == b"", data
        assert 1.5 <= waited <= 6, waited
    # A kept-alive connection that went quiet after one request.
    with socket.create_connection(("127.0.0.1", mc.http_port), timeout=10) as s:
        f = s.makefile("rb")
        assert http_get_keepalive(s, f).startswith(b"HTTP/1.1 200")
        data, waited = read_until_closed(s, 10)
        assert data == b"", data
        assert 1.5 <= waited <= 6, waited


def test_http_half_request_is_closed(upstream_factory, mailcar_factory):
    up = upstream_factory(mode="plain")
    mc = mailcar_factory(lifecycle_config(up, smtp=False, idle="2s"))
    with socket.create_connection(("127.0.0.1", mc.http_port), timeout=10) as s:
        s.sendall(b"POST /api/v2/email HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n")
        data, waited = read_until_closed(s, 10)
        assert data == b"" or data.startswith(b"HTTP/1.1 408"), data
        assert 1.5 <= waited <= 6, waited
    # Half a body, then silence.
    with socket.create_connection(("127.0.0.1", mc.http_port), timeout=10) as s:
        s.sendall(b"POST /api/v2/email HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  b"Content-Length: 100\r\n\r\n{\"to\": ")
        data, waited = read_until_closed(s, 10)
        assert data == b"" or data.startswith(b"HTTP/1.1 408"), data
        assert 1.5 <= waited <= 6, waited


def test_http_slowloris_trickle_is_closed(upstream_factory, mailcar_factory):
    """Reads do not extend a request's time: one header byte every 0.5 s is still cut off."""
    up = upstream_factory(mode="plain")
    mc = mailcar_factory(lifecycle_config(up, smtp=False, idle="2s"))
    with socket.create_connection(("127.0.0.1", mc.http_port), timeout=10) as s:
        s.sendall(b"GET /health HTTP/1.1\r\nX-Slow: ")
        start = time.monotonic()
        closed = False
        while time.monotonic() - start < 10:
            try:
                s.sendall(b"a")
            except OSError:
                closed = True
                break
            s.settimeout(0.5)
            try:
                chunk = s.recv(4096)
                if not chunk or chunk.startswith(b"HTTP/1.1 408"):
                    closed = True
                    break
                raise AssertionError(f"unexpected answer to a trickled request: {chunk!r}")
            except socket.timeout:
                pass
            except ConnectionResetError:
                closed = True
                break
        waited = time.monotonic() - start
        assert closed, "a trickling client kept its connection for 10 s with idle_timeout 2s"
        assert waited <= 6, waited


# --------------------------------------------------------------------------- 7. no secrets in log

def test_no_secret_or_body_in_log(upstream_factory, mailcar_factory, certs):
    upstream_password = "upstream-pw-Zk29qq"
    wrong_upstream_password = "wrong-upstream-pw-Lm55"
    wrong_api_key = "wrong-api-key-Pp07"
    wrong_smtp_password = "wrong-smtp-pw-Vv63"
    http_body = "http-body-text-Hq51 please do not log me"
    smtp_body = "smtp-body-text-Sb77 please do not log me"

    up = upstream_factory(mode="starttls", auth=("relay-user", upstream_password))
    services = (service_yaml("email", up, certs, "relay-user", upstream_password)
                + service_yaml("badauth", up, certs, "relay-user", wrong_upstream_password))
    cfg = f"""listen:
  http: 127.0.0.1:{{HTTP_PORT}}
  smtp: 127.0.0.1:{{SMTP_PORT}}
services:
{services}roles:
  app:
    senders: ["*"]
credentials:
  - api_key: {API_KEY}
    role: app
  - smtp_username: {SMTP_USER}
    smtp_password: {SMTP_PASSWORD}
    role: app
smtp:
  service: email
  hostname: mailcar.test
limits:
  idle_timeout: 10s
  shutdown_grace: 5s
log:
  format: json
  level: debug
"""
    mc = mailcar_factory(cfg)

    # HTTP: success (key in header, then in query), wrong key, failed upstream AUTH.
    status, body, _ = mc.send("email", payload(http_body), key=API_KEY)
    assert status == 200, body
    sent_id = body["id"]
    status, body, _ = mc.send("email", payload(http_body), key=None,
                              headers={"Authorization": f"Bearer {API_KEY}"})
    assert status == 200, body
    status, body, _ = mc.send("email", payload(http_body), key=wrong_api_key)
    assert status == 401, body
    status, raw, _ = mc.request("POST", f"/api/v2/email?api_key={wrong_api_key}", payload(http_body))
    assert status == 401
    status, body, _ = mc.send("badauth", payload(http_body), key=API_KEY)
    assert status == 500 and body["error"]["message"] == "Authentication failed", body

    # SMTP: AUTH failure, then AUTH success (PLAIN and LOGIN) and a message.
    message = (f"From: app@example.com\r\nTo: alice@example.com\r\nSubject: s\r\n\r\n"
               f"{smtp_body}\r\n").encode()
    with smtplib.SMTP("127.0.0.1", mc.smtp_port, timeout=30) as c:
        with pytest.raises(smtplib.SMTPAuthenticationError) as err:
            c.login(SMTP_USER, wrong_smtp_password)
        assert err.value.smtp_code == 535
        c.login(SMTP_USER, SMTP_PASSWORD)
        assert c.sendmail("app@example.com", ["alice@example.com"], message) == {}
    with smtplib.SMTP("127.0.0.1", mc.smtp_port, timeout=30) as c:
        c.ehlo()
        c.user, c.password = SMTP_USER, SMTP_PASSWORD
        assert c.auth("LOGIN", c.auth_login, initial_response_ok=False)[0] == 235

    got = up.wait_for(3)
    assert any(http_body.encode() in m["data"] for m in got)
    assert any(smtp_body.encode() in m["data"] for m in got)

    assert mc.stop() == 0
    log = mc.log_path.read_text(errors="replace")
    # Positive control: the scan below reads a real log (SPEC 8: accepted messages log their id).
    assert sent_id in log, f"the accepted message's id is not in the log:\n{log}"
    b64 = lambda s: base64.b64encode(s.encode()).decode()  # noqa: E731
    forbidden = {
        "API key": API_KEY,
        "wrong API key": wrong_api_key,
        "upstream password": upstream_password,
        "wrong upstream password": wrong_upstream_password,
        "SMTP AUTH password": SMTP_PASSWORD,
        "wrong SMTP AUTH password": wrong_smtp_password,
        "HTTP body text": "http-body-text-Hq51",
        "SMTP body text": "smtp-body-text-Sb77",
        "base64 upstream password": b64(upstream_password),
        "base64 AUTH PLAIN upstream": b64(f"\0relay-user\0{upstream_password}"),
        "base64 SMTP AUTH password": b64(SMTP_PASSWORD),
        "base64 AUTH PLAIN ingress": b64(f"\0{SMTP_USER}\0{SMTP_PASSWORD}"),
        "base64 wrong AUTH PLAIN ingress": b64(f"\0{SMTP_USER}\0{wrong_smtp_password}"),
    }
    leaks = [what for what, text in forbidden.items() if text in log]
    assert not leaks, f"leaked into the log: {leaks}\n{log}"
