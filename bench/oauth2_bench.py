#!/usr/bin/env python3
"""OAuth2 renewals under load (issue 9): does fetching a token stall the loop?

1 KB JSON messages over HTTP from `wrk -t1 -c10`, paced (about --rate msg/s), into a service
with an OAuth2 `client_credentials` token from a local HTTPS token endpoint (a test CA made
with openssl). The upstream is a small asyncio SMTP sink that offers AUTH XOAUTH2 and
hangs up every --per-connection messages, so AUTH (with the cached token) happens during the
run too. Two runs of --seconds each:
  - steady:  expires_in 3600, no renewal during the run;
  - renewal: expires_in 2, a renewal (HTTPS + TLS handshake on the loop) every ~1.5 s.
Prints p50/p99 of both and the ratio p99(renewal) / p99(steady); the aim is <= 2.

    bench/oauth2_bench.py --mailcar build/mailcar [--seconds 10] [--rate 500]
"""
import argparse
import asyncio
import json
import os
import re
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_certs(folder):
    def run(*cmd):
        subprocess.run(cmd, check=True, capture_output=True)
    run("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj",
        "/CN=bench CA", "-keyout", f"{folder}/ca.key", "-out", f"{folder}/ca.crt")
    (folder / "ext").write_text("subjectAltName=DNS:localhost\n")
    run("openssl", "req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=localhost", "-keyout",
        f"{folder}/ep.key", "-out", f"{folder}/ep.csr")
    run("openssl", "x509", "-req", "-in", f"{folder}/ep.csr", "-CA", f"{folder}/ca.crt", "-CAkey",
        f"{folder}/ca.key", "-CAcreateserial", "-days", "1", "-extfile", f"{folder}/ext",
        "-out", f"{folder}/ep.crt")


class Endpoint:
    def __init__(self, folder, expires_in):
        self.fetches = 0
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_POST(self):
                self.rfile.read(int(self.headers.get("Content-Length", "0")))
                endpoint.fetches += 1
                body = json.dumps({"access_token": f"tok-{endpoint.fetches}-" + "x" * 1200,
                                   "expires_in": expires_in, "token_type": "Bearer"}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(folder / "ep.crt", folder / "ep.key")
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.server.socket = ctx.wrap_socket(self.server.socket, server_side=True)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


class Sink:
    """Minimal ESMTP sink with PIPELINING and AUTH XOAUTH2 (any bearer is accepted)."""

    def __init__(self, per_connection):
        self.port = free_port()
        self.per_connection = per_connection
        self.auths = 0
        self.messages = 0
        self.loop = asyncio.new_event_loop()
        started = threading.Event()

        def run():
            asyncio.set_event_loop(self.loop)
            self.server = self.loop.run_until_complete(
                asyncio.start_server(self.session, "127.0.0.1", self.port))
            started.set()
            self.loop.run_forever()

        threading.Thread(target=run, daemon=True).start()
        started.wait(10)

    async def session(self, reader, writer):
        writer.write(b"220 sink ESMTP\r\n")
        done = 0
        try:
            while True:
                line = await reader.readline()
                if not line:
                    return
                verb = line[:4].upper()
                if verb == b"EHLO":
                    writer.write(b"250-sink\r\n250-PIPELINING\r\n250 AUTH XOAUTH2\r\n")
                elif verb == b"AUTH":
                    self.auths += 1
                    writer.write(b"235 2.7.0 ok\r\n")
                elif verb == b"DATA":
                    writer.write(b"354 go\r\n")
                    while (await reader.readline()) not in (b".\r\n", b""):
                        pass
                    self.messages += 1
                    done += 1
                    writer.write(b"250 2.0.0 ok\r\n")
                    if done >= self.per_connection:
                        await writer.drain()
                        writer.close()
                        return
                elif verb == b"QUIT":
                    writer.write(b"221 bye\r\n")
                    await writer.drain()
                    writer.close()
                    return
                else:
                    writer.write(b"250 ok\r\n")
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            return


def mailcar_config(sink, endpoint, ca):
    return f"""listen:
  http: 127.0.0.1:{{HTTP}}
services:
  sink:
    host: 127.0.0.1
    port: {sink.port}
    encryption: none
    username: bench@example.com
    from_email: bench@example.com
    connections: 10
    ca_file: {ca}
    oauth2:
      token_url: https://localhost:{endpoint.port}/token
      client_id: bench
      client_secret: bench-secret
      scope: https://outlook.office365.com/.default
roles:
  bench:
    senders: ["*"]
credentials:
  - api_key: bench-key
    role: bench
limits:
  max_connections: 5000
  idle_timeout: 120s
log:
  format: json
  level: warn
"""


def wrk(port, seconds, rate):
    payload = json.dumps({"to": [{"email": "sink@example.com"}], "subject": "bench",
                          "body_text": "x" * 1024})
    delay_ms = max(1, int(10 * 1000 / rate))  # 10 connections, each one request per delay
    script = tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False)
    script.write('wrk.method = "POST"\n'
                 f"wrk.body = {json.dumps(payload)}\n"
                 'wrk.headers["Content-Type"] = "application/json"\n'
                 'wrk.headers["X-DreamFactory-API-Key"] = "bench-key"\n'
                 f"function delay() return {delay_ms} end\n")
    script.close()
    out = subprocess.run(["wrk", "-t1", "-c10", f"-d{seconds}s", "--latency", "-s", script.name,
                          f"http://127.0.0.1:{port}/api/v2/sink"],
                         capture_output=True, text=True, timeout=seconds + 60)
    os.unlink(script.name)
    lat = {}
    for pct in ("50", "99"):
        m = re.search(rf"\s{pct}(?:\.000)?%\s+([\d.]+)(us|ms|s)", out.stdout)
        v, unit = float(m.group(1)), m.group(2)
        lat[pct] = v / 1000 if unit == "us" else v * 1000 if unit == "s" else v
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out.stdout)
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out.stdout).group(1))
    return lat, rps, int(non2xx.group(1)) if non2xx else 0


def run_case(args, folder, expires_in):
    endpoint = Endpoint(folder, expires_in)
    sink = Sink(args.per_connection)
    case = folder / f"case-{expires_in}"
    case.mkdir()
    http_port = free_port()
    cfg = case / "mailcar.yaml"
    cfg.write_text(mailcar_config(sink, endpoint, folder / "ca.crt").replace("{HTTP}", str(http_port)))
    log = open(case / "mailcar.log", "wb")
    proc = subprocess.Popen([args.mailcar, "-c", str(cfg)], stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 15
        while True:
            try:
                if urllib.request.urlopen(f"http://127.0.0.1:{http_port}/ready", timeout=1).status == 200:
                    break
            except OSError:
                pass
            if time.time() > deadline:
                raise RuntimeError("mailcar did not start")
            time.sleep(0.05)
        wrk(http_port, 2, args.rate)  # warm-up: first token, connections open
        before = endpoint.fetches
        lat, rps, errors = wrk(http_port, args.seconds, args.rate)
        return {"p50": lat["50"], "p99": lat["99"], "rps": rps, "errors": errors,
                "fetches": endpoint.fetches - before, "auths": sink.auths}
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
        log.close()
        endpoint.stop()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--mailcar", default="build/mailcar")
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--rate", type=int, default=500, help="messages per second, all clients")
    ap.add_argument("--per-connection", type=int, default=100,
                    help="the sink hangs up after this many messages")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        make_certs(folder)
        steady = run_case(args, folder, 3600)
        renewal = run_case(args, folder, 2)
    for name, r in (("steady (expires_in 3600)", steady), ("renewal (expires_in 2)", renewal)):
        print(f"{name:26} p50 {r['p50']:.2f} ms  p99 {r['p99']:.2f} ms  {r['rps']:.0f} msg/s  "
              f"token fetches {r['fetches']}  AUTHs {r['auths']}  non-2xx {r['errors']}")
    print(f"p99 ratio renewal/steady: {renewal['p99'] / steady['p99']:.2f} (aim <= 2)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
