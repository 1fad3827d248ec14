"""Slow and idle clients (issue 7): deadlines, not idle timers, on the SMTP door, a junk
command limit, and a per-client connection limit on both doors.

Small limits make the cases quick: HTTP idle_timeout 2s, smtp_idle_timeout 6s,
smtp_command_timeout 3s, smtp_min_data_rate 1KB. Bounds carry a wide margin for a slow machine;
what they separate is "closed within seconds" from "open for as long as the client trickles".
"""
import select
import smtplib
import socket
import time

from conftest import service_yaml

HTTP_IDLE = 2.0
SMTP_IDLE = 6.0
COMMAND_TIMEOUT = 3.0
TRICKLE_INTERVAL = 2.0  # one byte every 2 s: each read used to restart the idle timer
SESSIONS = 20
MESSAGE = (b"From: app@example.com\r\nTo: alice@example.com\r\nSubject: slow\r\n\r\n")


def slow_config(upstream, junk_limit=None, per_client=None, max_connections=None):
    limits = (f"  idle_timeout: {HTTP_IDLE:g}s\n  smtp_idle_timeout: {SMTP_IDLE:g}s\n"
              f"  smtp_command_timeout: {COMMAND_TIMEOUT:g}s\n  smtp_min_data_rate: 1KB\n"
              "  shutdown_grace: 5s\n")
    if junk_limit is not None:
        limits += f"  smtp_junk_command_limit: {junk_limit}\n"
    if per_client is not None:
        limits += f"  max_connections_per_client: {per_client}\n"
    if max_connections is not None:
        limits += f"  max_connections: {max_connections}\n"
    return f"""listen:
  http: 127.0.0.1:{{HTTP_PORT}}
  smtp: 127.0.0.1:{{SMTP_PORT}}
services:
{service_yaml("email", upstream)}roles:
  app:
    senders: ["*"]
credentials:
  - api_key: test-key
    role: app
smtp:
  service: email
  hostname: mailcar.test
  anonymous_role: app
limits:
{limits}log:
  format: json
  level: debug
"""


def smtp_session(port, source="127.0.0.1"):
    """A raw SMTP connection past the greeting: (socket, line reader)."""
    s = socket.create_connection(("127.0.0.1", port), timeout=10, source_address=(source, 0))
    f = s.makefile("rb")
    greeting = f.readline()
    assert greeting.startswith(b"220"), greeting
    return s, f


def command(s, f, line):
    """Send one command; return its (last) reply line."""
    s.sendall(line + b"\r\n")
    while True:
        reply = f.readline()
        if not reply or reply[3:4] != b"-":
            return reply


def into_data(s, f):
    assert command(s, f, b"EHLO slow.example").startswith(b"250")
    assert command(s, f, b"MAIL FROM:<app@example.com>").startswith(b"250")
    assert command(s, f, b"RCPT TO:<alice@example.com>").startswith(b"250")
    assert command(s, f, b"DATA").startswith(b"354")


def trickle(sockets, payload, limit):
    """Send each socket one byte of `payload` every TRICKLE_INTERVAL until mailcar closes it.

    Returns {index: (seconds until closed, bytes received)}; a socket still open after
    `limit` seconds is missing from it.
    """
    start = time.monotonic()
    received = {i: b"" for i in range(len(sockets))}
    closed = {}
    sent = 0
    next_send = start
    while len(closed) < len(sockets) and time.monotonic() - start < limit:
        now = time.monotonic()
        if now >= next_send:
            for i, s in enumerate(sockets):
                if i in closed:
                    continue
                try:
                    s.sendall(payload[sent % len(payload):sent % len(payload) + 1])
                except OSError:
                    closed[i] = (now - start, received[i])
            sent += 1
            next_send += TRICKLE_INTERVAL
        open_ = [s for i, s in enumerate(sockets) if i not in closed]
        ready, _, _ = select.select(open_, [], [], max(0.0, min(0.2, next_send - now)))
        for s in ready:
            i = sockets.index(s)
            try:
                chunk = s.recv(4096)
            except OSError:
                chunk = b""
            received[i] += chunk
            if not chunk:
                closed[i] = (time.monotonic() - start, received[i])
    return closed


def close_all(sockets):
    for s in sockets:
        s.close()


def test_trickled_command_lines_are_cut_off(upstream_factory, mailcar_factory):
    """20 sessions each sending a command line one byte every 2 s are all closed with 421 4.4.2
    about smtp_command_timeout after the line's first byte (before: all 20 open for good)."""
    up = upstream_factory(mode="plain")
    mc = mailcar_factory(slow_config(up))
    sockets = []
    for _ in range(SESSIONS):
        s, f = smtp_session(mc.smtp_port)
        assert command(s, f, b"EHLO slow.example").startswith(b"250")
        sockets.append(s)
    try:
        closed = trickle(sockets, b"MAIL FROM:<" + b"x" * 100, limit=20)
        assert len(closed) == SESSIONS, f"{SESSIONS - len(closed)} sessions still open after 20 s"
        for i, (seconds, data) in closed.items():
            assert b"421 4.4.2 Command line not received in time" in data, (i, data)
            assert COMMAND_TIMEOUT - 0.5 <= seconds <= COMMAND_TIMEOUT + 6, (i, seconds)
    finally:
        close_all(sockets)
    events = [e for e in mc.log_events() if e.get("event") == "smtp_client_too_slow"]
    assert len(events) == SESSIONS and {e["wait"] for e in events} == {"command_line"}


def test_trickled_message_data_is_cut_off(upstream_factory, mailcar_factory):
    """20 sessions each sending message data one byte every 2 s (far below smtp_min_data_rate)
    are all closed with 421 4.4.2 (before: all 20 open for good); nothing is relayed."""
    up = upstream_factory(mode="plain")
    mc = mailcar_factory(slow_config(up))
    sockets = []
    for _ in range(SESSIONS):
        s, f = smtp_session(mc.smtp_port)
        into_data(s, f)
        sockets.append(s)
    try:
        closed = trickle(sockets, MESSAGE + b"body " * 100, limit=20)
        assert len(closed) == SESSIONS, f"{SESSIONS - len(closed)} sessions still open after 20 s"
        for i, (seconds, data) in closed.items():
            assert b"421 4.4.2 Message data too slow" in data, (i, data)
            # The budget started at each 354, a little before the first byte.
            assert 1.0 <= seconds <= COMMAND_TIMEOUT + 6, (i, seconds)
    finally:
        close_all(sockets)
    assert up.messages == []


def test_message_data_at_a_fair_rate_may_outlast_the_command_timeout(upstream_factory,
                                                                     mailcar_factory):
    """The data deadline is a rate, not a fixed time: 4 KB/s for 6 s (twice
    smtp_command_timeout) is accepted and relayed intact."""
    up = upstream_factory(mode="plain")
    mc = mailcar_factory(slow_config(up))
    s, f = smtp_session(mc.smtp_port)
    with s, f:
        into_data(s, f)
        s.sendall(MESSAGE)
        start = time.monotonic()
        line = b"x" * 510 + b"\r\n"  # 512 bytes every 1/8 s
        chunks = 0
        while time.monotonic() - start < 2 * COMMAND_TIMEOUT:
            s.sendall(line)
            chunks += 1
            time.sleep(0.125)
        s.sendall(b".\r\n")
        reply = f.readline()
        assert reply.startswith(b"250"), reply
        assert command(s, f, b"QUIT").startswith(b"221")
    [got] = up.wait_for(1)
    assert got["data"].count(line) == chunks


def test_idle_session_outlives_http_idle_timeout_then_closes(upstream_factory, mailcar_factory):
    """smtp_idle_timeout, not the HTTP idle_timeout, applies to SMTP sessions; it runs from
    the last reply, and a partial line does not extend it."""
    up = upstream_factory(mode="plain")
    mc = mailcar_factory(slow_config(up))
    s, f = smtp_session(mc.smtp_port)
    with s, f:
        time.sleep(HTTP_IDLE + 1.5)  # past the HTTP idle timeout
        assert command(s, f, b"EHLO idle.example").startswith(b"250")
        start = time.monotonic()
        s.settimeout(SMTP_IDLE + 10)
        line = f.readline()
        waited = time.monotonic() - start
        assert line.startswith(b"421 4.4.2 Idle timeout"), line
        assert SMTP_IDLE - 0.5 <= waited <= SMTP_IDLE + 6, waited
        assert f.read() == b""

    # Bytes of a line that started late do not buy more than smtp_idle_timeout from the reply.
    s, f = smtp_session(mc.smtp_port)
    with s, f:
        start = time.monotonic()
        time.sleep(SMTP_IDLE - 2)
        s.sendall(b"NO")
        s.settimeout(SMTP_IDLE + 10)
        line = f.readline()
        waited = time.monotonic() - start
        assert line.startswith(b"421 4.4.2 Idle timeout"), line
        assert SMTP_IDLE - 0.5 <= waited <= SMTP_IDLE + 5, waited


def test_noop_loop_gets_421_and_a_message_resets_the_count(upstream_factory, mailcar_factory):
    """NOOP every 0.2 s (each within every deadline) ends with 421 4.7.0 after
    smtp_junk_command_limit of them; a relayed message starts the count afresh."""
    up = upstream_factory(mode="plain")
    mc = mailcar_factory(slow_config(up, junk_limit=10))
    with smtplib.SMTP("127.0.0.1", mc.smtp_port, timeout=10) as c:
        c.ehlo("keepalive.example")  # junk 1
        for _ in range(8):  # junk 2..9
            assert c.noop()[0] == 250
            time.sleep(0.2)
        c.sendmail("app@example.com", ["alice@example.com"], MESSAGE + b"one\r\n")
        for _ in range(10):  # junk 1..10 again: still within the limit
            assert c.noop()[0] == 250
            time.sleep(0.2)

    s, f = smtp_session(mc.smtp_port)
    with s, f:
        start = time.monotonic()
        received = b""
        while time.monotonic() - start < 15:
            try:
                s.sendall(b"NOOP\r\n")
            except OSError:
                pass
            time.sleep(0.2)
            if select.select([s], [], [], 0)[0]:
                try:
                    chunk = s.recv(4096)
                except OSError:  # reset: a NOOP arrived after the close
                    chunk = b""
                received += chunk
                if not chunk:
                    break
        lines = received.split(b"\r\n")
        assert lines[:11] == [b"250 2.0.0 Ok"] * 11, lines
        assert lines[11].startswith(b"421 4.7.0 Too many commands without a message"), lines
        assert lines[12:] == [b""], lines
    assert len(up.wait_for(1)) == 1


def refused_smtp(port, source="127.0.0.1"):
    s = socket.create_connection(("127.0.0.1", port), timeout=10, source_address=(source, 0))
    with s, s.makefile("rb") as f:
        return f.readline(), f.read()


def test_smtp_connections_per_client(upstream_factory, mailcar_factory):
    """With max_connections_per_client 3, the 4th session from 127.0.0.1 gets 421 4.7.0 while
    the three work on; another address (127.0.0.2) still gets in; closing one frees a slot."""
    up = upstream_factory(mode="plain")
    mc = mailcar_factory(slow_config(up, per_client=3, max_connections=10))
    sessions = [smtp_session(mc.smtp_port) for _ in range(3)]
    try:
        line, rest = refused_smtp(mc.smtp_port)
        assert line == b"421 4.7.0 mailcar.test Too many connections from your address\r\n", line
        assert rest == b""
        for s, f in sessions:
            assert command(s, f, b"NOOP") == b"250 2.0.0 Ok\r\n"
        other, of = smtp_session(mc.smtp_port, source="127.0.0.2")
        with other, of:
            assert command(other, of, b"NOOP") == b"250 2.0.0 Ok\r\n"
        s, f = sessions.pop()
        assert command(s, f, b"QUIT").startswith(b"221")
        f.close()
        s.close()
        deadline = time.monotonic() + 5
        while True:
            s = socket.create_connection(("127.0.0.1", mc.smtp_port), timeout=10)
            with s, s.makefile("rb") as f:
                line = f.readline()
                if line.startswith(b"220"):
                    break
            assert time.monotonic() < deadline, f"no slot freed after a QUIT: {line!r}"
            time.sleep(0.2)
    finally:
        for s, f in sessions:
            f.close()
            s.close()
    refusals = [e for e in mc.log_events() if e.get("event") == "smtp_connection_refused"]
    assert refusals and all(e["reason"] == "max_connections_per_client" for e in refusals)


def http_get(s, f):
    s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
    status = f.readline()
    headers = {}
    while True:
        line = f.readline()
        if line in (b"\r\n", b""):
            break
        name, _, value = line.decode().partition(":")
        headers[name.strip().lower()] = value.strip()
    body = f.read(int(headers.get("content-length", "0")))
    return status, headers, body


def http_open(port, source="127.0.0.1"):
    s = socket.create_connection(("127.0.0.1", port), timeout=10, source_address=(source, 0))
    return s, s.makefile("rb")


def test_http_connections_per_client(upstream_factory, mailcar_factory):
    """With max_connections_per_client 3, a 4th keep-alive connection from 127.0.0.1 gets 503
    with Connection: close while the three work on; 127.0.0.2 still gets in."""
    up = upstream_factory(mode="plain")
    mc = mailcar_factory(slow_config(up, per_client=3, max_connections=10))
    conns = []
    try:
        # The readiness probe's own connection may still count for a moment after it closed.
        deadline = time.monotonic() + 5
        while len(conns) < 3:
            s, f = http_open(mc.http_port)
            status = http_get(s, f)[0]
            if status.startswith(b"HTTP/1.1 200"):
                conns.append((s, f))
                continue
            f.close()
            s.close()
            assert time.monotonic() < deadline, status
            time.sleep(0.1)
        s4, f4 = http_open(mc.http_port)
        with s4, f4:
            status, headers, body = http_get(s4, f4)
            assert status.startswith(b"HTTP/1.1 503"), status
            assert headers.get("connection") == "close"
            assert b"Too many connections from your address" in body
            assert f4.read() == b""
        for s, f in conns:
            assert http_get(s, f)[0].startswith(b"HTTP/1.1 200")
        other = http_open(mc.http_port, source="127.0.0.2")
        with other[0], other[1]:
            assert http_get(*other)[0].startswith(b"HTTP/1.1 200")
    finally:
        for s, f in conns:
            f.close()
            s.close()
    refusals = [e for e in mc.log_events() if e.get("event") == "http_connection_refused"]
    assert refusals and all(e["reason"] == "max_connections_per_client" for e in refusals)
