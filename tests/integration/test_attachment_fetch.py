"""The `attachment` URL fetch of issue 10 (SPEC §10.1, §4): URLs under an attachment_fetch.allow
prefix are fetched over HTTPS (a real http.server + ssl file server with the test CA, trusted
through attachment_fetch.ca_file) and arrive upstream as attachments; a URL outside the
prefixes is a 400, and a 404, a file over max_bytes or a slow server a 502 naming the field,
never the URL's query string, and not kept under an Idempotency-Key (which the request holds
while it fetches). Real aiosmtpd upstream,
real mailcar process."""
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from conftest import basic_config, metric, parse_message, service_yaml

MAX_BYTES = 65536
PDF = b"%PDF-1.4\n" + bytes(range(256)) * 40 + b"\n%%EOF\n"


class FileServer:
    """Serves self.files over HTTPS: path -> (status, content type or None, body, delay)."""

    def __init__(self, certs):
        self.files = {}
        self.requests = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                server.requests.append(self.path)
                status, ctype, body, delay = server.files.get(
                    self.path.split("?")[0], (404, "text/plain", b"not found", 0))
                time.sleep(delay)
                try:
                    self.send_response(status)
                    if ctype:
                        self.send_header("Content-Type", ctype)
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                except OSError:
                    pass  # mailcar gave up (timeout, size)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.server.socket = certs.server_context().wrap_socket(self.server.socket,
                                                                server_side=True)
        self.base = f"https://localhost:{self.server.server_address[1]}/files/"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


def started(certs, upstream_factory, mailcar_factory, timeout="2s"):
    files = FileServer(certs)
    up = upstream_factory()
    extra = (f'attachment_fetch:\n  allow: ["{files.base}"]\n  max_bytes: {MAX_BYTES}\n'
             f"  timeout: {timeout}\n  ca_file: {certs.ca}\n")
    mc = mailcar_factory(basic_config(service_yaml("email", up), extra=extra))
    return files, up, mc


BASE = {"to": "a@example.org", "subject": "files", "body_text": "see attached"}


def attachments_of(msg):
    return [(p.get_filename(), p.get_content_type(), p.get_payload(decode=True))
            for p in msg.iter_attachments()]


def test_allowed_urls_arrive_as_attachments(certs, upstream_factory, mailcar_factory):
    files, up, mc = started(certs, upstream_factory, mailcar_factory)
    try:
        files.files["/files/report%202024.pdf"] = (200, "application/pdf", PDF, 0)
        files.files["/files/data.bin"] = (200, None, b"\x00\x01raw\xff", 0)
        status, body, _ = mc.send("email", {**BASE, "attachment": [
            files.base + "report%202024.pdf?token=s3cret", files.base + "data.bin"]})
        assert status == 200, body
        msg = parse_message(up.wait_for(1)[0]["data"])
        assert attachments_of(msg) == [("report 2024.pdf", "application/pdf", PDF),
                                       ("data.bin", "application/octet-stream",
                                        b"\x00\x01raw\xff")]
        assert files.requests == ["/files/report%202024.pdf?token=s3cret", "/files/data.bin"]
        # import_url is read as attachment URLs too, beside the request's own attachments.
        status, body, _ = mc.send("email", {**BASE, "import_url": files.base + "data.bin",
                                            "attachments": [{"name": "own.txt",
                                                             "content": "b3du"}]})
        assert status == 200, body
        msg = parse_message(up.wait_for(2)[1]["data"])
        assert [(n, d) for n, _, d in attachments_of(msg)] == [("own.txt", b"own"),
                                                               ("data.bin", b"\x00\x01raw\xff")]
    finally:
        files.stop()


def test_refusals_and_fetch_failures_name_the_field(certs, upstream_factory, mailcar_factory):
    files, up, mc = started(certs, upstream_factory, mailcar_factory)
    try:
        files.files["/files/big.bin"] = (200, "application/octet-stream",
                                         b"x" * (MAX_BYTES + 1), 0)
        outside = files.base.replace("/files/", "/private/") + "a.pdf"
        status, body, _ = mc.send("email", {**BASE, "attachment": outside})
        assert status == 400, body
        assert body["error"]["context"]["field"] == "attachment", body
        assert "not under a prefix" in body["error"]["message"], body
        assert files.requests == []  # never fetched

        status, body, _ = mc.send("email", {**BASE, "attachment": [
            files.base + "missing.pdf?token=s3cret"]})
        assert status == 502, body
        message = body["error"]["message"]
        assert message.startswith("attachment:") and "HTTP 404" in message, body
        assert body["error"]["context"]["field"] == "attachment", body
        assert "s3cret" not in message and "s3cret" not in mc.log()

        status, body, _ = mc.send("email", {**BASE, "attachment": files.base + "big.bin"})
        assert status == 502, body
        assert body["error"]["message"].startswith("attachment:"), body
        assert "max_bytes" in body["error"]["message"], body
        time.sleep(0.3)
        assert up.messages == []
    finally:
        files.stop()


def test_slow_file_server_times_out(certs, upstream_factory, mailcar_factory):
    files, up, mc = started(certs, upstream_factory, mailcar_factory, timeout="1s")
    try:
        files.files["/files/slow.pdf"] = (200, "application/pdf", PDF, 8)
        # While one request waits for its file, the loop answers others.
        result = {}
        waiting = threading.Thread(target=lambda: result.update(r=mc.send(
            "email", {**BASE, "attachment": files.base + "slow.pdf"})))
        started_at = time.monotonic()
        waiting.start()
        status, _, _ = mc.request("GET", "/health", timeout=5)
        assert status == 200
        waiting.join(20)
        elapsed = time.monotonic() - started_at
        status, body, _ = result["r"]
        assert status == 502, body
        assert body["error"]["message"].startswith("attachment:"), body
        assert "timeout" in body["error"]["message"], body
        assert 0.9 <= elapsed < 6, elapsed
    finally:
        files.stop()


def test_failed_fetch_is_not_kept_under_an_idempotency_key(certs, upstream_factory,
                                                           mailcar_factory):
    files, up, mc = started(certs, upstream_factory, mailcar_factory)
    try:
        payload = {**BASE, "attachment": files.base + "later.pdf"}
        headers = {"Idempotency-Key": "fetch-1"}
        status, body, _ = mc.send("email", payload, headers=headers)
        assert status == 502, body
        files.files["/files/later.pdf"] = (200, "application/pdf", PDF, 0)
        status, body, rh = mc.send("email", payload, headers=headers)
        assert status == 200, body
        assert "idempotent-replayed" not in rh
        status, body, rh = mc.send("email", payload, headers=headers)
        assert status == 200 and rh.get("idempotent-replayed") == "true", (body, rh)
        assert len(up.wait_for(1)) == 1
        # While a request waits for its file, it holds its key: a repeat is 409, not a 2nd fetch.
        files.files["/files/slow.pdf"] = (200, "application/pdf", PDF, 1.5)
        slow = {**BASE, "attachment": files.base + "slow.pdf"}
        result = {}
        first = threading.Thread(target=lambda: result.update(r=mc.send(
            "email", slow, headers={"Idempotency-Key": "fetch-2"})))
        first.start()
        deadline = time.monotonic() + 10
        while "/files/slow.pdf" not in files.requests and time.monotonic() < deadline:
            time.sleep(0.02)
        status, body, _ = mc.send("email", slow, headers={"Idempotency-Key": "fetch-2"})
        assert status == 409, body
        first.join(20)
        assert result["r"][0] == 200, result
        assert files.requests.count("/files/slow.pdf") == 1
        assert len(up.wait_for(2)) == 2
        time.sleep(0.3)
        assert len(up.messages) == 2
    finally:
        files.stop()


def test_files_together_may_not_pass_the_message_limit(certs, upstream_factory,
                                                       mailcar_factory):
    """The fetched files count in memory before they arrive, and never more than a message may
    hold: two files that each fit max_bytes but not together are cut off at the limit (413)."""
    files = FileServer(certs)
    up = upstream_factory()
    extra = (f'attachment_fetch:\n  allow: ["{files.base}"]\n  max_bytes: {MAX_BYTES}\n'
             f"  timeout: 2s\n  ca_file: {certs.ca}\n")
    config = basic_config(service_yaml("email", up), extra=extra)
    config = config.replace("limits:\n", "limits:\n  max_message_bytes: 100000\n", 1)
    mc = mailcar_factory(config)
    try:
        files.files["/files/a.bin"] = (200, "application/octet-stream", b"a" * 60000, 0)
        files.files["/files/b.bin"] = (200, "application/octet-stream", b"b" * 60000, 0)
        status, body, _ = mc.send("email", {**BASE, "attachment": [files.base + "a.bin",
                                                                   files.base + "b.bin"]})
        assert status == 413, body
        assert body["error"]["message"].startswith("attachment: URL 2"), body
        assert body["error"]["context"]["field"] == "attachment", body
        # Refused like any other 413: the same log line and count.
        refusals = [e for e in mc.log_events() if e.get("event") == "message_refused"]
        assert len(refusals) == 1, refusals
        assert refusals[0]["ingress"] == "http" and refusals[0]["outcome"] == "rejected"
        assert "100000" in refusals[0]["reason"], refusals
        assert metric(mc, "mailcar_messages_total", ingress="http", outcome="rejected") == 1
        # One file alone still goes.
        status, body, _ = mc.send("email", {**BASE, "attachment": files.base + "a.bin"})
        assert status == 200, body
        assert len(up.wait_for(1)) == 1
    finally:
        files.stop()
