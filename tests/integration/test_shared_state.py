"""Shared state (issue 11, SPEC §11): several mailcar replicas share rate limits and quotas
through a real redis-server (Debian's package), driven over both doors at once."""
import os
import shutil
import signal
import smtplib
import subprocess
import threading
import time
from pathlib import Path

import pytest

from conftest import free_port

pytestmark = pytest.mark.skipif(shutil.which("redis-server") is None,
                                reason="redis-server is not installed (scripts/install-deps.sh)")

prometheus_parser = pytest.importorskip("prometheus_client.parser")

FAKETIME_LIB = Path("/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1")


class Redis:
    """A redis-server child process: loopback TCP on a free port or a unix socket only."""

    def __init__(self, folder: Path, password=None, unix=False):
        self.folder = folder
        self.password = password
        self.port = 0 if unix else free_port()
        self.socket = str(folder / "redis.sock") if unix else None
        self.proc = None
        self.start()

    def start(self):
        cmd = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
               "--appendonly", "no", "--dir", str(self.folder)]
        if self.socket:
            cmd += ["--unixsocket", self.socket, "--unixsocketperm", "700"]
        if self.password:
            cmd += ["--requirepass", self.password]
        self.log = open(self.folder / "redis.log", "ab")
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.time() + 10
        while time.time() < deadline:
            try:
                if self.cli("PING").strip() == "PONG":
                    return
            except subprocess.SubprocessError:
                pass
            time.sleep(0.05)
        raise AssertionError("redis-server did not start")

    def cli(self, *args):
        cmd = ["redis-cli"]
        cmd += ["-s", self.socket] if self.socket else ["-p", str(self.port)]
        if self.password:
            cmd += ["--no-auth-warning", "-a", self.password]
        return subprocess.run(cmd + list(args), capture_output=True, text=True, timeout=10,
                              check=True).stdout

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)
        self.log.close()

    def url(self):
        return f"unix://{self.socket}" if self.socket else f"redis://127.0.0.1:{self.port}/0"


@pytest.fixture
def redis_factory(tmp_path):
    started = []

    def make(**kw):
        folder = tmp_path / f"redis{len(started)}"
        folder.mkdir()
        r = Redis(folder, **kw)
        started.append(r)
        return r

    yield make
    for r in started:
        r.stop()


def config(redis_url, role_limits="[]", quota="", on_error="local", extra_shared=""):
    quota_line = f"    rate_limit: {quota}\n" if quota else ""
    return f"""listen:
  http: 127.0.0.1:{{HTTP_PORT}}
  smtp: 127.0.0.1:{{SMTP_PORT}}
services:
  email:
    driver: file
    path: ./outbox
{quota_line}roles:
  app:
    senders: ["*@example.com"]
    rate_limits: {role_limits}
  free:
    senders: ["*@example.com"]
credentials:
  - api_key: test-key
    role: app
  - api_key: free-key
    role: free
{shared_tail(redis_url, on_error, extra_shared)}"""


def shared_tail(redis_url, on_error, extra_shared=""):
    """The SMTP door, the shared_state block and the rest, as both configurations end."""
    return f"""smtp:
  service: email
  anonymous_role: app
shared_state:
  redis: "{redis_url}"
  on_error: {on_error}
  timeout: 500ms
{extra_shared}limits:
  shutdown_grace: 5s
log:
  format: json
  level: info
"""


MSG = {"to": "a@example.com", "subject": "s", "body_text": "b", "from_email": "app@example.com"}
SMTP_MESSAGE = b"From: app@example.com\r\nTo: a@example.com\r\nSubject: s\r\n\r\nb\r\n"


def wait_log(mc, event, timeout=15, count=1):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if sum(1 for e in mc.log_events() if e.get("event") == event) >= count:
            return
        time.sleep(0.05)
    raise AssertionError(f"no {event} in the log:\n{mc.log()}")


def http_send(mc, key="test-key"):
    try:
        return mc.send("email", MSG, key=key, timeout=30)[0]
    except OSError as e:
        return f"error {e}"


def smtp_send(mc):
    try:
        with smtplib.SMTP("127.0.0.1", mc.smtp_port, timeout=30) as c:
            c.sendmail("app@example.com", ["a@example.com"], SMTP_MESSAGE)
            return 250
    except smtplib.SMTPResponseException as e:
        return e.smtp_code
    except (smtplib.SMTPException, OSError) as e:
        if isinstance(e, smtplib.SMTPRecipientsRefused):
            return next(iter(e.recipients.values()))[0]
        return f"error {e}"


def burst(replicas, per_door):
    """Every replica's HTTP and SMTP doors at once, `per_door` messages each; returns the
    answers and the seconds the burst took."""
    results = []
    lock = threading.Lock()

    def worker(fn, mc):
        for _ in range(per_door):
            r = fn(mc)
            with lock:
                results.append(r)

    threads = [threading.Thread(target=worker, args=(fn, mc))
               for mc in replicas for fn in (http_send, smtp_send)]
    start = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    return results, time.monotonic() - start


def accepted(results):
    return sum(1 for r in results if r in (200, 250))


def outbox_count(replicas):
    return sum(len(list((mc.dir / "outbox").glob("*"))) for mc in replicas)


def metric(mc, name, labels=None):
    _, _, raw = mc.request("GET", "/metrics")
    total = 0.0
    for family in prometheus_parser.text_string_to_metric_families(raw.decode()):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in (labels or {}).items()):
                total += s.value
    return total


def start_replicas(mailcar_factory, text, n, env=None):
    replicas = [mailcar_factory(text, env=env) for _ in range(n)]
    for mc in replicas:
        wait_log(mc, "shared_state_ready")
    return replicas


@pytest.mark.parametrize("limits,quota,n,period_s", [
    ("[12/minute]", "", 12, 60),
    ("[12/day]", "", 12, 86400),
    ("[]", "12/hour", 12, 3600),
    ("[5/second]", "", 5, 1),
])
def test_replicas_keep_one_budget(redis_factory, mailcar_factory, limits, quota, n, period_s):
    redis = redis_factory()
    replicas = start_replicas(mailcar_factory, config(redis.url(), limits, quota), 3)
    results, seconds = burst(replicas, 4)  # 24 messages over 6 doors
    ok = accepted(results)
    # Refused ones are rate limits (429 / 450), nothing else.
    assert all(r in (200, 250, 429, 450) for r in results), results
    # GCRA replenishes one cell per T/N: a burst shorter than that admits exactly N.
    replenished = int(seconds * n / period_s)
    assert n <= ok <= n + replenished, (ok, seconds, results)
    # Exact whenever nothing can have been replenished (a burst under 5 s at 12/minute; a slow
    # sanitizer run may take longer, and then one more per 5 s is right, not a leak).
    if replenished == 0:
        assert ok == n, (seconds, results)
    assert outbox_count(replicas) == ok
    # One script per message, all on one hash-tagged key set.
    keys = redis.cli("KEYS", "*").split()
    assert keys and all(k.startswith("mailcar:{limits}:") for k in keys), keys
    observed = sum(metric(mc, "mailcar_shared_state_seconds_count") for mc in replicas)
    assert observed == len(results)
    assert sum(metric(mc, "mailcar_shared_state_errors_total") for mc in replicas) == 0


def test_skewed_clock_changes_nothing(redis_factory, mailcar_factory):
    if not FAKETIME_LIB.exists():
        pytest.skip("faketime is not installed")
    redis = redis_factory()
    text = config(redis.url(), "[6/minute]")
    normal = start_replicas(mailcar_factory, text, 1)[0]
    env = {"LD_PRELOAD": str(FAKETIME_LIB), "FAKETIME": "+1h", "FAKETIME_DONT_FAKE_MONOTONIC": "1",
           "ASAN_OPTIONS": "verify_asan_link_order=0"}
    skewed = start_replicas(mailcar_factory, text, 1, env=env)[0]
    # The skew took: the skewed replica logs an hour ahead.
    ts = [e["ts"] for e in skewed.log_events() if e.get("event") == "started"][0]
    hour_now = time.gmtime().tm_hour
    assert int(ts[11:13]) == (hour_now + 1) % 24 or int(ts[11:13]) == (hour_now + 2) % 24, ts
    assert [http_send(normal) for _ in range(3)] == [200] * 3
    # An hour ahead, the replica's own clock would see those three as long past.
    assert [http_send(skewed) for _ in range(6)] == [200] * 3 + [429] * 3
    assert http_send(normal) == 429


@pytest.mark.parametrize("on_error", ["local", "refuse"])
def test_redis_stopped_and_restarted_under_load(redis_factory, mailcar_factory, on_error):
    redis = redis_factory()
    replicas = start_replicas(mailcar_factory, config(redis.url(), "[1000/minute]",
                                                      on_error=on_error), 2)
    results, _ = burst(replicas, 3)
    assert accepted(results) == len(results)

    redis.stop()
    down, _ = burst(replicas, 3)
    free = [http_send(mc, key="free-key") for mc in replicas]  # needs no shared state
    assert free == [200, 200]
    if on_error == "local":
        assert accepted(down) == len(down), down  # each replica counts alone
    else:
        assert sorted(set(down)) == [451, 503], down  # SMTP 451, HTTP 503
    for mc in replicas:
        events = [e for e in mc.log_events() if e.get("event") == "shared_state_unavailable"]
        assert len(events) == 1, mc.log()  # once per outage, not per message
        assert metric(mc, "mailcar_shared_state_errors_total") >= 1

    redis.start()
    for mc in replicas:
        wait_log(mc, "shared_state_recovered")
    results, _ = burst(replicas, 2)
    assert accepted(results) == len(results), results
    # Counted in Redis again (a fresh server: only what came after the restart).
    key = "mailcar:{limits}:role:app:1000:60000"
    assert redis.cli("EXISTS", key).strip() == "1"
    assert sum(1 for mc in replicas for e in mc.log_events()
               if e.get("event") == "shared_state_unavailable") == 2


def test_script_flushed_is_loaded_again(redis_factory, mailcar_factory):
    redis = redis_factory()
    mc = start_replicas(mailcar_factory, config(redis.url(), "[3/minute]"), 1)[0]
    assert http_send(mc) == 200
    redis.cli("SCRIPT", "FLUSH")  # as after a failover to a server that never saw it
    assert [http_send(mc), smtp_send(mc), http_send(mc)] == [200, 250, 429]
    stats = redis.cli("INFO", "commandstats")
    assert "cmdstat_eval:calls=1," in stats, stats  # NOSCRIPT: once with EVAL, then EVALSHA
    assert metric(mc, "mailcar_shared_state_errors_total") == 0


def test_unresponsive_redis_times_out(redis_factory, mailcar_factory):
    redis = redis_factory()
    mc = start_replicas(mailcar_factory, config(redis.url(), "[100/minute]"), 1)[0]
    assert http_send(mc) == 200
    os.kill(redis.proc.pid, signal.SIGSTOP)  # accepts nothing, answers nothing
    try:
        start = time.monotonic()
        assert http_send(mc) == 200  # on_error local after the 500 ms timeout
        took = time.monotonic() - start
        assert 0.4 <= took < 10, took
        assert metric(mc, "mailcar_shared_state_errors_total", {"reason": "timeout"}) == 1
        assert http_send(mc) == 200
    finally:
        os.kill(redis.proc.pid, signal.SIGCONT)
    wait_log(mc, "shared_state_recovered")
    assert http_send(mc) == 200


def test_password_and_unix_socket(redis_factory, mailcar_factory, tmp_path):
    redis = redis_factory(password="s3cret pass", unix=True)
    pw = tmp_path / "redis-password"
    pw.write_text("s3cret pass\n")
    text = config(redis.url(), "[4/minute]", extra_shared=f"  password_file: {pw}\n")
    replicas = start_replicas(mailcar_factory, text, 2)
    results, _ = burst(replicas, 2)
    assert accepted(results) == 4, results
    for mc in replicas:
        assert "s3cret" not in mc.log()


def test_password_in_url_and_wrong_password(redis_factory, mailcar_factory):
    redis = redis_factory(password="right")
    good = config(f"redis://:right@127.0.0.1:{redis.port}/3", "[2/minute]")
    replicas = start_replicas(mailcar_factory, good, 2)
    assert [http_send(replicas[0]), http_send(replicas[1]), http_send(replicas[0])] == \
        [200, 200, 429]
    assert redis.cli("-n", "3", "EXISTS", "mailcar:{limits}:role:app:2:60000").strip() == "1"
    bad = mailcar_factory(config(f"redis://:Xy-not-it@127.0.0.1:{redis.port}/3", "[2/minute]",
                                 on_error="refuse"))
    wait_log(bad, "shared_state_unavailable")
    assert "AUTH refused" in bad.log() and "Xy-not-it" not in bad.log()
    assert http_send(bad) == 503


def test_spool_paces_held_messages_across_replicas(redis_factory, mailcar_factory):
    redis = redis_factory()
    text = config(redis.url(), "[]", "3/hour").replace(
        "limits:\n", "spool:\n  path: ./spool\n  retry: [1s]\nlimits:\n", 1)
    replicas = start_replicas(mailcar_factory, text, 2)
    for mc in replicas:
        for _ in range(3):
            assert http_send(mc) == 202
    deadline = time.time() + 15
    while time.time() < deadline and outbox_count(replicas) < 3:
        time.sleep(0.1)
    time.sleep(1.5)  # a fourth would have gone by now if the quota were per replica
    assert outbox_count(replicas) == 3
    held = sum(metric(mc, "mailcar_spool_messages", {"state": "held"}) for mc in replicas)
    assert held == 3


# ---- Idempotency keys in the shared state (SPEC §10.3, §11) ----------------------------------

def idem_config(redis_url, upstream_port, on_error="local"):
    return f"""listen:
  http: 127.0.0.1:{{HTTP_PORT}}
  smtp: 127.0.0.1:{{SMTP_PORT}}
services:
  email:
    host: 127.0.0.1
    port: {upstream_port}
    encryption: none
    from_email: noreply@example.com
    connect_timeout: 5s
    command_timeout: 10s
roles:
  app:
    services: [email]
    senders: ["*@example.com"]
credentials:
  - api_key: test-key
    role: app
{shared_tail(redis_url, on_error)}"""


IDEM_MSG = {"to": ["alice@example.com"], "subject": "hello", "body_text": "body",
            "from_email": "app@example.com"}


def keyed(mc, key, body):
    return mc.send("email", body, headers={"Idempotency-Key": key}, timeout=30)


def keyed_smtp(mc, key, subject="smtp hello"):
    data = (f"From: app@example.com\r\nTo: alice@example.com\r\nSubject: {subject}\r\n"
            f"Idempotency-Key: {key}\r\n\r\nbody\r\n").encode()
    with smtplib.SMTP("127.0.0.1", mc.smtp_port, timeout=30) as c:
        c.ehlo("client.test")
        assert c.mail("app@example.com")[0] == 250
        assert c.rcpt("alice@example.com")[0] == 250
        return c.data(data)


def idem_keys(redis):
    return redis.cli("KEYS", "mailcar:idem:*").split()


def test_idempotency_key_replays_on_another_replica(redis_factory, mailcar_factory,
                                                    upstream_factory):
    redis = redis_factory()
    up = upstream_factory(mode="plain")
    a, b = start_replicas(mailcar_factory, idem_config(redis.url(), up.port), 2)
    status, body, headers = keyed(a, "order-42", IDEM_MSG)
    assert status == 200 and body["count"] == 1, body
    assert "idempotent-replayed" not in headers
    up.wait_for(1)
    again, again_body, again_headers = keyed(b, "order-42", IDEM_MSG)
    assert (again, again_body) == (status, body)
    assert again_headers["idempotent-replayed"] == "true"
    # The same key with another request, on either replica: 422, nothing sent.
    other = dict(IDEM_MSG, subject="another")
    assert keyed(b, "order-42", other)[0] == 422
    assert keyed(a, "order-42", other)[0] == 422
    # The kept answer has the idempotency TTL (default 24 h) in Redis.
    [key] = idem_keys(redis)
    assert redis.cli("HGET", key, "state").strip() == "done"
    assert 23 * 3600 * 1000 < int(redis.cli("PTTL", key)) <= 24 * 3600 * 1000
    time.sleep(1.0)
    assert len(up.messages) == 1


def test_idempotency_smtp_key_across_replicas(redis_factory, mailcar_factory, upstream_factory):
    redis = redis_factory()
    up = upstream_factory(mode="plain")
    a, b = start_replicas(mailcar_factory, idem_config(redis.url(), up.port), 2)
    code, reply = keyed_smtp(a, "smtp-1")
    assert code == 250, reply
    up.wait_for(1)
    msg_id = up.messages[0]["data"].split(b"Message-ID: <")[1].split(b">")[0].decode()
    code, reply = keyed_smtp(b, "smtp-1", subject="resent")
    assert code == 250 and reply.decode() == f"2.0.0 Already accepted as {msg_id}"
    time.sleep(1.0)
    assert len(up.messages) == 1


def test_idempotency_key_in_flight_has_a_ttl_in_redis(redis_factory, mailcar_factory,
                                                      upstream_factory):
    from test_idempotency import SlowHandler
    redis = redis_factory()
    slow = SlowHandler(3.0)
    up = upstream_factory(mode="plain", handler=slow)
    a, b = start_replicas(mailcar_factory, idem_config(redis.url(), up.port), 2)
    first = []
    t = threading.Thread(target=lambda: first.append(keyed(a, "slow-1", IDEM_MSG)[0]))
    t.start()
    assert slow.data_started.wait(15)
    [key] = idem_keys(redis)
    assert redis.cli("HGET", key, "state").strip() == "inflight"
    assert int(redis.cli("PTTL", key)) > 0  # a replica that dies never holds it for ever
    assert keyed(b, "slow-1", IDEM_MSG)[0] == 409
    t.join(30)
    assert first == [200]
    assert keyed(b, "slow-1", IDEM_MSG)[0] == 200
    assert len(up.messages) == 1


@pytest.mark.parametrize("on_error", ["local", "refuse"])
def test_idempotency_key_while_redis_is_down(redis_factory, mailcar_factory, upstream_factory,
                                             on_error):
    redis = redis_factory()
    up = upstream_factory(mode="plain")
    mc = start_replicas(mailcar_factory, idem_config(redis.url(), up.port, on_error), 1)[0]
    redis.stop()
    if on_error == "refuse":
        status, body, headers = keyed(mc, "down-1", IDEM_MSG)
        assert status == 503 and headers["retry-after"] == "5", body
        code, reply = keyed_smtp(mc, "down-2")
        assert code == 451, reply
        # A request without a key needs no shared state here.
        assert mc.send("email", IDEM_MSG, timeout=30)[0] == 200
        up.wait_for(1)
        time.sleep(1.0)
        assert len(up.messages) == 1
    else:
        # Kept in this replica's memory for the outage: a replay here still works.
        status, body, _ = keyed(mc, "down-1", IDEM_MSG)
        assert status == 200, body
        again, again_body, headers = keyed(mc, "down-1", IDEM_MSG)
        assert (again, again_body) == (status, body) and headers["idempotent-replayed"] == "true"
        up.wait_for(1)
        time.sleep(1.0)
        assert len(up.messages) == 1
