"""Slow upstreams (issue 7, "deadlines, not idle timers"), end to end.

The upstream here is a real SMTP server on loopback written with asyncio, because aiosmtpd
cannot send a reply slowly: it greets at once and then either trickles every reply one byte
per second, or answers each command whole but only after a delay. mailcar must hold each
reply to `command_timeout` as a whole, each delivery to `limits.delivery_timeout`, answer
the client with its temporary error (HTTP 500 "Connection timed out", retryable; SMTP 451)
and drop the upstream connection, so that the next message gets a fresh, working one.
"""
import asyncio
import smtplib
import threading
import time

from conftest import free_port, service_yaml

EHLO_REPLY = "250-trickle.test\r\n250-SIZE 10000000\r\n250 8BITMIME\r\n"
# Generous for a slow machine, and far below how long the trickle would keep a client
# waiting if every byte restarted the timer: the EHLO reply alone takes len(EHLO_REPLY) s.
BOUND = 10.0
assert len(EHLO_REPLY) > 3 * BOUND


class SlowUpstream:
    """SMTP on 127.0.0.1 in its own thread. Each connection takes the mode in force when it
    was accepted: `trickle` seconds per byte, or `delay` seconds before each reply, or none.
    With `trickle_greeting` the (long) greeting is trickled too; otherwise it comes at once."""

    mode = "plain"  # for conftest.service_yaml

    def __init__(self, trickle=None, delay=None, trickle_greeting=False):
        self.port = free_port()
        self.trickle = trickle
        self.delay = delay
        self.trickle_greeting = trickle_greeting
        self.connections = 0
        self.ended = []  # time.monotonic() when each connection ended
        self.messages = []
        self.lock = threading.Lock()
        self.loop = asyncio.new_event_loop()
        started = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(started,), daemon=True)
        self.thread.start()
        assert started.wait(10), "the slow upstream did not start"

    def _run(self, started):
        asyncio.set_event_loop(self.loop)
        self.server = self.loop.run_until_complete(
            asyncio.start_server(self._session, "127.0.0.1", self.port))
        started.set()
        self.loop.run_forever()

    async def _reply(self, writer, text, trickle, delay):
        data = text.encode()
        if trickle:
            for i in range(len(data)):
                if writer.is_closing():
                    return
                writer.write(data[i:i + 1])
                await writer.drain()
                await asyncio.sleep(trickle)
            return
        if delay:
            await asyncio.sleep(delay)
        writer.write(data)
        await writer.drain()

    async def _session(self, reader, writer):
        with self.lock:
            self.connections += 1
            trickle, delay = self.trickle, self.delay
        try:
            if self.trickle_greeting:
                await self._reply(writer, "220-" + "x" * 40 + "\r\n220 trickle.test\r\n",
                                  trickle, None)
            else:
                writer.write(b"220 trickle.test ESMTP\r\n")
                await writer.drain()
            await self._commands(reader, writer, trickle, delay)
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            with self.lock:
                self.ended.append(time.monotonic())
            writer.close()

    async def _commands(self, reader, writer, trickle, delay):
        body = None
        while True:
            line = await reader.readline()
            if not line:
                return
            if body is not None:
                if line in (b".\r\n", b".\n"):
                    with self.lock:
                        self.messages.append(b"".join(body))
                    body = None
                    await self._reply(writer, "250 2.0.0 queued\r\n", trickle, delay)
                else:
                    body.append(line)
                continue
            verb = line[:4].upper()
            if verb == b"QUIT":
                writer.write(b"221 2.0.0 bye\r\n")
                await writer.drain()
                return
            reply = {b"EHLO": EHLO_REPLY, b"MAIL": "250 2.1.0 ok\r\n", b"RCPT": "250 2.1.5 ok\r\n",
                     b"DATA": "354 go ahead\r\n", b"RSET": "250 ok\r\n", b"NOOP": "250 ok\r\n"}
            await self._reply(writer, reply.get(verb, "502 5.5.2 unknown\r\n"), trickle, delay)
            if verb == b"DATA":
                body = []

    def connection_ended(self, index, timeout):
        """Wait until connection `index` (0-based) has ended; returns when (monotonic)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                if len(self.ended) > index:
                    return self.ended[index]
            time.sleep(0.05)
        raise AssertionError(f"upstream connection {index} still open after {timeout}s")

    def stop(self):
        async def close():
            self.server.close()
            for task in asyncio.all_tasks():
                if task is not asyncio.current_task():
                    task.cancel()
        asyncio.run_coroutine_threadsafe(close(), self.loop).result(5)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


def make_upstream(request, **kw):
    up = SlowUpstream(**kw)
    request.addfinalizer(up.stop)
    return up


def slow_config(upstream, command_timeout, delivery_timeout=None, connect_timeout="2s"):
    # These tests count upstream connections: no background probe (issue 9) adds one.
    svc = (service_yaml("email", upstream, extra="probe_interval: 0")
           .replace("command_timeout: 10s", f"command_timeout: {command_timeout}")
           .replace("connect_timeout: 5s", f"connect_timeout: {connect_timeout}"))
    limits = "  idle_timeout: 30s\n  shutdown_grace: 5s\n"
    if delivery_timeout:
        limits += f"  delivery_timeout: {delivery_timeout}\n"
    return f"""listen:
  http: 127.0.0.1:{{HTTP_PORT}}
  smtp: 127.0.0.1:{{SMTP_PORT}}
services:
{svc}roles:
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


def payload(text="slow upstream body"):
    return {"to": [{"email": "alice@example.com"}], "subject": "slow", "body_text": text}


MESSAGE = (b"From: app@example.com\r\nTo: alice@example.com\r\nSubject: slow\r\n"
           b"\r\nslow upstream body\r\n")


def send_http(mc):
    start = time.monotonic()
    status, body, _ = mc.send("email", payload(), timeout=60)
    return status, body, time.monotonic() - start


def send_smtp(mc):
    """Returns (SMTP code, text, seconds) of the reply to the message."""
    start = time.monotonic()
    with smtplib.SMTP("127.0.0.1", mc.smtp_port, timeout=60) as client:
        try:
            client.sendmail("app@example.com", ["alice@example.com"], MESSAGE)
            code, text = 250, b""
        except smtplib.SMTPDataError as err:
            code, text = err.smtp_code, err.smtp_error
    return code, text, time.monotonic() - start


def assert_http_timed_out(status, body, took, mc):
    assert status == 500, (status, body, mc.log())
    assert body["error"]["message"] == "Connection timed out", body
    assert body["error"]["context"]["retryable"] is True, body
    assert body["error"]["context"]["smtp_code"] is None, body
    assert took < BOUND, f"the client waited {took:.1f}s"


def test_trickled_replies_http_and_smtp_time_out_then_a_healthy_upstream_works(
        request, mailcar_factory):
    up = make_upstream(request, trickle=1.0)
    mc = mailcar_factory(slow_config(up, command_timeout="2s"))

    start = time.monotonic()
    status, body, took = send_http(mc)
    assert_http_timed_out(status, body, took, mc)
    assert took >= 1.5, f"gave up after {took:.1f}s, before command_timeout (2s)"
    # The connection that carried it was dropped, long before the trickle would have ended.
    assert up.connection_ended(0, timeout=5) - start < BOUND

    code, text, took = send_smtp(mc)
    assert code == 451, (code, text, mc.log())
    assert b"timed out" in text, text
    assert 1.5 <= took < BOUND, f"the SMTP client waited {took:.1f}s"
    up.connection_ended(1, timeout=5)
    assert up.messages == []

    # The upstream recovers: the next message gets a fresh connection and goes through.
    up.trickle = None
    status, body, took = send_http(mc)
    assert status == 200, (status, body, mc.log())
    assert up.connections == 3
    assert len(up.messages) == 1 and b"slow upstream body" in up.messages[0]

    timeouts = [e for e in mc.log_events() if e.get("event") == "upstream_timeout"]
    assert [e["timeout"] for e in timeouts] == ["command_timeout", "command_timeout"], timeouts


def test_upstream_answering_just_in_time_is_stopped_by_delivery_timeout(request,
                                                                        mailcar_factory):
    # Each reply comes after 1.5 s, within command_timeout (2 s); the five replies of one
    # message (EHLO, MAIL, RCPT, DATA, final dot) would take 7.5 s. delivery_timeout: 4s
    # ends it at about 4 s.
    up = make_upstream(request, delay=1.5)
    mc = mailcar_factory(slow_config(up, command_timeout="2s", delivery_timeout="4s"))

    status, body, took = send_http(mc)
    assert_http_timed_out(status, body, took, mc)
    assert 3.5 <= took < 7.0, f"answered after {took:.1f}s, not at the 4 s delivery deadline"
    up.connection_ended(0, timeout=5)

    code, text, took = send_smtp(mc)
    assert code == 451, (code, text, mc.log())
    assert 3.5 <= took < 7.0, f"the SMTP client waited {took:.1f}s"
    up.connection_ended(1, timeout=5)
    assert up.messages == [], "the upstream never got to accept it"

    timeouts = [e for e in mc.log_events() if e.get("event") == "upstream_timeout"]
    assert [e["timeout"] for e in timeouts] == ["delivery_timeout", "delivery_timeout"], timeouts


def test_greeting_is_bound_by_connect_timeout(request, mailcar_factory):
    """connect_timeout covers connect + greeting; a greeting trickled byte by byte gets no
    more, even with a long command_timeout."""
    up = make_upstream(request, trickle=1.0, trickle_greeting=True)
    mc = mailcar_factory(slow_config(up, command_timeout="30s", delivery_timeout="1m"))
    status, body, took = send_http(mc)
    assert_http_timed_out(status, body, took, mc)
    up.connection_ended(0, timeout=5)
    timeouts = [e for e in mc.log_events() if e.get("event") == "upstream_timeout"]
    assert [e["timeout"] for e in timeouts] == ["connect_timeout"], timeouts
