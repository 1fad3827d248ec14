"""OAuth2 for upstream AUTH (issue 9, SPEC §9.1).

A fake token endpoint over HTTPS (http.server + ssl, the test CA's certificate), aiosmtpd
upstreams whose XOAUTH2 / OAUTHBEARER handlers accept only the endpoint's live (issued,
unexpired, unrevoked) tokens, and a small HTTP CONNECT proxy with credentials. The tests
also check that no token, client secret or refresh token reaches mailcar's log.
"""
import asyncio
import base64
import json
import os
import select
import socket
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from conftest import RecordingHandler, free_port
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult

CLIENT_SECRET = "cs-very-secret-4711"
USER = "sender@example.com"


# --------------------------------------------------------------------------- token endpoint

class TokenEndpoint:
    """Issues tok-N tokens; with rotate, every refresh returns rt-N and retires the old one."""

    def __init__(self, certs, expires_in=3600, refresh_token=None, rotate=False):
        self.lock = threading.Lock()
        self.expires_in = expires_in
        self.rotate = rotate
        self.valid_refresh = {refresh_token} if refresh_token else set()
        self.refresh_seen = []
        self.issued = []           # every access token handed out
        self.expiry = {}           # token -> time.time() when it expires
        self.current = None
        self.revoked = set()
        self.requests = []         # form fields of each request
        self.script = []           # per request: "ok", "invalid_grant", "503", "slow"
        self.secrets = {CLIENT_SECRET} | self.valid_refresh
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                length = int(self.headers.get("Content-Length", "0"))
                form = dict(urllib.parse.parse_qsl(self.rfile.read(length).decode()))
                status, body = endpoint.answer(form, self.headers.get("Content-Type", ""))
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.server.socket = certs.server_context().wrap_socket(self.server.socket, server_side=True)
        self.port = self.server.server_address[1]
        self.url = f"https://localhost:{self.port}/tenant/oauth2/v2.0/token"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def answer(self, form, content_type):
        with self.lock:
            self.requests.append(form)
            action = self.script.pop(0) if self.script else "ok"
        if action == "slow":
            time.sleep(4)
        with self.lock:
            if content_type != "application/x-www-form-urlencoded":
                return 415, {"error": "invalid_request"}
            if action == "invalid_grant":
                return 400, {"error": "invalid_grant", "error_description": "AADSTS70000: revoked"}
            if action == "503":
                return 503, {"error": "temporarily_unavailable"}
            if form.get("client_id") != "app-id":
                return 401, {"error": "invalid_client"}
            reply = {"token_type": "Bearer", "expires_in": self.expires_in}
            if form.get("grant_type") == "client_credentials":
                if form.get("client_secret") != CLIENT_SECRET:
                    return 401, {"error": "invalid_client"}
            elif form.get("grant_type") == "refresh_token":
                rt = form.get("refresh_token")
                self.refresh_seen.append(rt)
                if rt not in self.valid_refresh:
                    return 400, {"error": "invalid_grant"}
                if self.rotate:
                    new = f"rt-{len(self.refresh_seen)}-{os.urandom(4).hex()}"
                    self.valid_refresh = {new}
                    self.secrets.add(new)
                    reply["refresh_token"] = new
            else:
                return 400, {"error": "unsupported_grant_type"}
            token = f"tok-{len(self.issued) + 1}-{os.urandom(6).hex()}"
            self.issued.append(token)
            self.secrets.add(token)
            self.expiry[token] = time.time() + self.expires_in
            self.current = token
            reply["access_token"] = token
            return 200, reply

    def accepts(self, token):
        """A token this endpoint issued, not expired and not revoked (as providers do)."""
        with self.lock:
            return token not in self.revoked and time.time() < self.expiry.get(token, 0)

    def revoke(self):
        """Every token issued so far stops working."""
        with self.lock:
            self.revoked.update(self.issued)
            self.current = None

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


# --------------------------------------------------------------------------- upstream

class OAuthHandler(RecordingHandler):
    """Accepts XOAUTH2 / OAUTHBEARER with a live token of the endpoint; a refused token gets
    the providers' error continuation (334 base64 JSON, the client's empty answer, 535)."""

    def __init__(self, endpoint, port_holder, close_after_data=False):
        super().__init__()
        self.endpoint = endpoint
        self.port_holder = port_holder
        self.close_after_data = close_after_data
        self.accepted = []
        self.refused = []
        self.continuation_answers = []

    async def _check(self, server, args, parse):
        if len(args) < 2:
            return AuthResult(success=False, handled=False)
        raw = base64.b64decode(args[1])
        user, token, problem = parse(raw)
        if problem is None and user == USER and self.endpoint.accepts(token):
            self.accepted.append(token)
            return AuthResult(success=True, auth_data=token)
        self.refused.append((token, problem))
        error = json.dumps({"status": "401", "schemes": "bearer", "scope": "https://mail.example/"})
        answer = await server.challenge_auth(error)
        self.continuation_answers.append(answer)
        return AuthResult(success=False, handled=False,
                          message="535 5.7.8 Username and Password not accepted")

    async def auth_XOAUTH2(self, server, args):
        def parse(raw):
            parts = raw.split(b"\x01")
            if len(parts) != 4 or parts[2:] != [b"", b""] or not parts[0].startswith(b"user=") \
                    or not parts[1].startswith(b"auth=Bearer "):
                return None, None, f"malformed {raw!r}"
            return parts[0][5:].decode(), parts[1][12:].decode(), None
        return await self._check(server, args, parse)

    async def auth_OAUTHBEARER(self, server, args):
        def parse(raw):
            parts = raw.split(b"\x01")
            expected_tail = [b"", b""]
            if len(parts) != 6 or parts[4:] != expected_tail or not parts[0].startswith(b"n,a="):
                return None, None, f"malformed {raw!r}"
            fields = dict(p.split(b"=", 1) for p in parts[1:4])
            if fields.get(b"host") != b"127.0.0.1" or fields.get(b"port") != str(self.port_holder[0]).encode():
                return None, None, f"host/port {fields!r}"
            user = parts[0][4:].rstrip(b",").decode()
            return user, fields[b"auth"][7:].decode(), None
        return await self._check(server, args, parse)

    async def handle_DATA(self, server, session, envelope):
        reply = await super().handle_DATA(server, session, envelope)
        if self.close_after_data:
            # Every message on a connection (and an AUTH) of its own.
            asyncio.get_running_loop().call_soon(server.transport.close)
        return reply


class OAuthUpstream:
    """A plain loopback aiosmtpd with the OAuth handler (AUTH without TLS is fine here)."""

    def __init__(self, endpoint, close_after_data=False):
        self.port = free_port()
        self.handler = OAuthHandler(endpoint, [self.port], close_after_data)
        self.controller = Controller(self.handler, hostname="127.0.0.1", port=self.port,
                                     ready_timeout=10, auth_require_tls=False,
                                     server_hostname="upstream.test")
        self.controller.start()

    @property
    def messages(self):
        return self.handler.messages

    def wait_for(self, count, timeout=10):
        return self.handler.wait_for(count, timeout)

    def stop(self):
        self.controller.stop()


def oauth_upstream(certs, endpoint, close_after_data=False):
    return OAuthUpstream(endpoint, close_after_data)


@pytest.fixture
def endpoints(certs):
    started = []

    def make(**kw):
        e = TokenEndpoint(certs, **kw)
        started.append(e)
        return e

    yield make
    for e in started:
        e.stop()


@pytest.fixture
def upstreams():
    started = []
    yield started
    for u in started:
        u.stop()


def config(upstream, certs, oauth2, connect_timeout="5s", extra=""):
    block = "".join(f"      {line}\n" for line in oauth2.strip("\n").splitlines())
    return f"""listen:
  http: 127.0.0.1:{{HTTP_PORT}}
services:
  mail:
    host: 127.0.0.1
    port: {upstream.port}
    encryption: none
    username: {USER}
    from_email: noreply@example.com
    ca_file: {certs.ca}
    connect_timeout: {connect_timeout}
    command_timeout: 10s
    probe_interval: 0  # the tests count AUTHs and token fetches: deliveries only
    oauth2:
{block}roles:
  app:
    senders: ["*"]
credentials:
  - api_key: test-key
    role: app
limits:
  idle_timeout: 10s
  shutdown_grace: 5s
log:
  format: json
  level: debug
{extra}"""


def client_credentials(endpoint, mechanism="xoauth2"):
    return f"""token_url: {endpoint.url}
grant: client_credentials
client_id: app-id
client_secret: {CLIENT_SECRET}
scope: https://outlook.office365.com/.default
mechanism: {mechanism}
"""


def send(m, subject="hello"):
    return m.send("mail", {"to": [{"email": "bob@example.com"}], "subject": subject,
                           "body_text": "one kilobyte or so"})


def assert_no_secrets(m, endpoint):
    log = m.log()
    for secret in endpoint.secrets | set(endpoint.issued):
        assert secret not in log, f"secret {secret[:6]}... in the log"
    for secret in endpoint.secrets | set(endpoint.issued):
        b64 = base64.b64encode(secret.encode()).decode()[:12]
        assert b64 not in log


# --------------------------------------------------------------------------- tests

@pytest.mark.parametrize("mechanism", ["xoauth2", "oauthbearer"])
def test_client_credentials_token_is_fetched_once_and_cached(certs, endpoints, upstreams,
                                                             mailcar_factory, mechanism):
    endpoint = endpoints()
    up = oauth_upstream(certs, endpoint, close_after_data=True)
    upstreams.append(up)
    m = mailcar_factory(config(up, certs, client_credentials(endpoint, mechanism)))
    for i in range(3):
        status, body, _ = send(m, f"m{i}")
        assert status == 200, body
        time.sleep(0.2)  # the upstream hangs up after each message: a new AUTH each time
    up.wait_for(3)
    assert len(endpoint.requests) == 1, endpoint.requests
    form = endpoint.requests[0]
    assert form["grant_type"] == "client_credentials"
    assert form["scope"] == "https://outlook.office365.com/.default"
    assert len(up.handler.accepted) == 3 and up.handler.refused == []
    assert_no_secrets(m, endpoint)


def test_refresh_token_rotation_is_persisted_0600_and_used_after_restart(
        certs, endpoints, upstreams, mailcar_factory, tmp_path):
    endpoint = endpoints(refresh_token="rt-configured", rotate=True)
    up = oauth_upstream(certs, endpoint)
    upstreams.append(up)
    state = tmp_path / "state"
    state.mkdir()
    oauth = f"""token_url: {endpoint.url}
grant: refresh_token
client_id: app-id
refresh_token: rt-configured
"""
    cfg = config(up, certs, oauth)
    m1 = mailcar_factory(cfg, env={"STATE_DIRECTORY": str(state)})
    status, body, _ = send(m1)
    assert status == 200, body
    saved = state / "oauth2-mail.refresh_token"
    deadline = time.time() + 10
    while not saved.exists() and time.time() < deadline:
        time.sleep(0.05)
    assert saved.exists()
    assert (saved.stat().st_mode & 0o777) == 0o600
    rotated = next(iter(endpoint.valid_refresh))
    assert rotated in saved.read_text() and "rt-configured" not in saved.read_text()
    assert m1.stop() == 0
    assert_no_secrets(m1, endpoint)

    # The configured token is retired at the endpoint: only the rotated one works now.
    m2 = mailcar_factory(cfg, env={"STATE_DIRECTORY": str(state)})
    status, body, _ = send(m2)
    assert status == 200, body
    assert endpoint.refresh_seen == ["rt-configured", rotated]
    assert_no_secrets(m2, endpoint)


def test_short_expiry_is_renewed_before_it_runs_out(certs, endpoints, upstreams, mailcar_factory):
    endpoint = endpoints(expires_in=2)
    up = oauth_upstream(certs, endpoint, close_after_data=True)
    upstreams.append(up)
    m = mailcar_factory(config(up, certs, client_credentials(endpoint)))
    start = time.time()
    sent = 0
    while time.time() - start < 5.5:
        status, body, _ = send(m, f"m{sent}")
        assert status == 200, body
        sent += 1
        time.sleep(0.3)
    assert up.handler.refused == [], "an expired or stale token was presented"
    # 2 s tokens over ~5.5 s: renewed at least twice, and never after expiry (refused == []).
    assert len(endpoint.issued) >= 3, endpoint.issued
    assert len(endpoint.issued) <= sent
    assert_no_secrets(m, endpoint)


def test_invalid_grant_is_a_final_authentication_failure(certs, endpoints, upstreams,
                                                          mailcar_factory):
    endpoint = endpoints()
    endpoint.script = ["invalid_grant"]
    up = oauth_upstream(certs, endpoint)
    upstreams.append(up)
    m = mailcar_factory(config(up, certs, client_credentials(endpoint)))
    status, body, _ = send(m)
    assert status == 500, body
    assert body["error"]["message"] == "Authentication failed"
    assert body["error"]["context"]["oauth2_error"] == "invalid_grant"
    assert body["error"]["context"]["retryable"] is False
    assert up.messages == []
    assert_no_secrets(m, endpoint)


def test_endpoint_5xx_is_retryable_then_success(certs, endpoints, upstreams, mailcar_factory):
    endpoint = endpoints()
    endpoint.script = ["503"]
    up = oauth_upstream(certs, endpoint)
    upstreams.append(up)
    m = mailcar_factory(config(up, certs, client_credentials(endpoint)))
    status, body, _ = send(m)
    assert status == 500, body
    assert body["error"]["message"] == "Authentication failed"
    assert body["error"]["context"]["oauth2_error"] == "temporarily_unavailable"
    assert body["error"]["context"]["retryable"] is True
    status, body, _ = send(m)
    assert status == 200, body
    assert len(endpoint.requests) == 2
    assert_no_secrets(m, endpoint)


def test_slow_endpoint_times_out(certs, endpoints, upstreams, mailcar_factory):
    endpoint = endpoints()
    endpoint.script = ["slow"]
    up = oauth_upstream(certs, endpoint)
    upstreams.append(up)
    m = mailcar_factory(config(up, certs, client_credentials(endpoint), connect_timeout="1s"))
    start = time.time()
    status, body, _ = send(m)
    elapsed = time.time() - start
    assert status == 500, body
    assert body["error"]["context"]["oauth2_error"] == "token_endpoint_timed_out"
    assert body["error"]["context"]["retryable"] is True
    assert elapsed < 3.5, elapsed  # the endpoint answers after 4 s
    assert_no_secrets(m, endpoint)


def test_stale_token_gets_error_continuation_then_one_renewal(certs, endpoints, upstreams,
                                                               mailcar_factory):
    endpoint = endpoints()
    up = oauth_upstream(certs, endpoint, close_after_data=True)
    upstreams.append(up)
    m = mailcar_factory(config(up, certs, client_credentials(endpoint)))
    status, body, _ = send(m, "first")
    assert status == 200, body
    time.sleep(0.2)  # the upstream hung up: the next message AUTHs again
    stale = endpoint.issued[0]
    endpoint.revoke()  # e.g. an admin revoked the app's sessions
    status, body, _ = send(m, "second")
    assert status == 200, body
    assert [t for t, _ in up.handler.refused] == [stale]
    assert up.handler.continuation_answers == [b""]  # the empty line after the 334
    assert len(endpoint.issued) == 2 and up.handler.accepted[-1] == endpoint.issued[1]
    assert_no_secrets(m, endpoint)


def test_token_file_is_reread_when_it_changes(certs, endpoints, upstreams, mailcar_factory,
                                             tmp_path):
    endpoint = endpoints()  # used only as the upstream's notion of the current token
    up = oauth_upstream(certs, endpoint, close_after_data=True)
    upstreams.append(up)
    token_file = tmp_path / "token"

    def publish(token):
        with endpoint.lock:
            endpoint.revoked.update(endpoint.issued)  # the old file token stops working
            endpoint.current = token
            endpoint.expiry[token] = time.time() + 3600
            endpoint.issued.append(token)
        tmp = tmp_path / "token.tmp"
        tmp.write_text(token + "\n")
        os.replace(tmp, token_file)

    publish("file-token-one-" + os.urandom(4).hex())
    m = mailcar_factory(config(up, certs, f"grant: token_file\ntoken_file: {token_file}\n"))
    status, body, _ = send(m, "first")
    assert status == 200, body
    publish("file-token-two-" + os.urandom(4).hex())
    time.sleep(1.2)  # the file is stat'ed at most once a second
    status, body, _ = send(m, "second")
    assert status == 200, body
    assert up.handler.accepted == endpoint.issued
    assert up.handler.refused == []
    assert_no_secrets(m, endpoint)


# --------------------------------------------------------------------------- proxy

class ConnectProxy:
    """An HTTP CONNECT proxy that wants Basic credentials and records each tunnel."""

    def __init__(self, user="proxyuser", password="proxy pass"):
        self.expected = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
        self.tunnels = []
        self.refused = 0
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.running = True
        threading.Thread(target=self.accept_loop, daemon=True).start()

    def accept_loop(self):
        while self.running:
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self.serve, args=(client,), daemon=True).start()

    def serve(self, client):
        with client:
            head = b""
            while b"\r\n\r\n" not in head and len(head) < 8192:
                chunk = client.recv(1024)
                if not chunk:
                    return
                head += chunk
            lines = head.decode("latin-1").split("\r\n")
            method, target, _ = lines[0].split(" ", 2)
            headers = {l.split(":", 1)[0].lower(): l.split(":", 1)[1].strip()
                       for l in lines[1:] if ":" in l}
            if method != "CONNECT" or headers.get("proxy-authorization") != self.expected:
                self.refused += 1
                client.sendall(b"HTTP/1.1 407 Proxy Authentication Required\r\n"
                               b"Proxy-Authenticate: Basic realm=\"test\"\r\nContent-Length: 0\r\n\r\n")
                return
            host, port = target.rsplit(":", 1)
            self.tunnels.append(target)
            with socket.create_connection((host, int(port)), timeout=10) as server:
                client.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
                self.pipe(client, server)

    @staticmethod
    def pipe(a, b):
        socks = [a, b]
        while True:
            ready, _, _ = select.select(socks, [], [], 10)
            if not ready:
                return
            for s in ready:
                data = s.recv(65536)
                if not data:
                    return
                (b if s is a else a).sendall(data)

    def stop(self):
        self.running = False
        self.sock.close()


@pytest.fixture
def proxy():
    p = ConnectProxy()
    yield p
    p.stop()


def test_token_endpoint_through_https_proxy_with_credentials(certs, endpoints, upstreams,
                                                             mailcar_factory, proxy):
    endpoint = endpoints()
    up = oauth_upstream(certs, endpoint)
    upstreams.append(up)
    env = {"HTTPS_PROXY": f"http://proxyuser:proxy%20pass@127.0.0.1:{proxy.port}"}
    m = mailcar_factory(config(up, certs, client_credentials(endpoint)), env=env)
    status, body, _ = send(m)
    assert status == 200, body
    assert proxy.tunnels == [f"localhost:{endpoint.port}"]
    assert "proxy pass" not in m.log() and "proxy%20pass" not in m.log()
    assert_no_secrets(m, endpoint)


def test_proxy_refusing_credentials_is_a_retryable_failure(certs, endpoints, upstreams,
                                                           mailcar_factory, proxy):
    endpoint = endpoints()
    up = oauth_upstream(certs, endpoint)
    upstreams.append(up)
    env = {"https_proxy": f"http://proxyuser:wrong@127.0.0.1:{proxy.port}"}
    m = mailcar_factory(config(up, certs, client_credentials(endpoint)), env=env)
    status, body, _ = send(m)
    assert status == 500, body
    assert body["error"]["context"]["oauth2_error"] == "token_endpoint_proxy"
    assert body["error"]["context"]["retryable"] is True
    assert proxy.refused == 1 and endpoint.requests == []


def test_no_proxy_bypasses_the_proxy(certs, endpoints, upstreams, mailcar_factory, proxy):
    endpoint = endpoints()
    up = oauth_upstream(certs, endpoint)
    upstreams.append(up)
    env = {"HTTPS_PROXY": f"http://proxyuser:proxy%20pass@127.0.0.1:{proxy.port}",
           "NO_PROXY": "example.org,localhost"}
    m = mailcar_factory(config(up, certs, client_credentials(endpoint)), env=env)
    status, body, _ = send(m)
    assert status == 200, body
    assert proxy.tunnels == [] and proxy.refused == 0
    assert len(endpoint.requests) == 1
