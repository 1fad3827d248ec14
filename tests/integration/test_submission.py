"""One submission path for both doors (issue 8): the same event gets the same counters, the
same labels and the same log line whether it came in over HTTP or SMTP."""
import smtplib

import pytest

prometheus_parser = pytest.importorskip("prometheus_client.parser")

# Log fields that differ by door on purpose: who connected, how, and what the message is.
PER_DOOR_FIELDS = {"ts", "ingress", "identity", "remote", "id", "size", "upstream_seconds"}


def config(upstream, role_limits="[]"):
    return f"""listen:
  http: 127.0.0.1:{{HTTP_PORT}}
  smtp: 127.0.0.1:{{SMTP_PORT}}
services:
  email:
    host: 127.0.0.1
    port: {upstream.port}
    encryption: none
    from_email: noreply@example.com
    connect_timeout: 5s
    command_timeout: 10s
roles:
  app:
    services: [email]
    senders: ["*@example.com"]
    rate_limits: {role_limits}
credentials:
  - api_key: test-key
    role: app
smtp:
  service: email
  anonymous_role: app
limits:
  shutdown_grace: 5s
log:
  format: json
  level: info
"""


def http_send(mc, sender):
    payload = {"to": ["a@example.com", "b@example.com"], "subject": "s", "body_text": "b",
               "from_email": sender}
    return mc.send("email", payload)[0]


def smtp_send(mc, sender):
    data = (f"From: {sender}\r\nTo: a@example.com, b@example.com\r\nSubject: s\r\n\r\nb\r\n"
            .encode())
    with smtplib.SMTP("127.0.0.1", mc.smtp_port, timeout=30) as c:
        try:
            refused = c.sendmail(sender, ["a@example.com", "b@example.com"], data)
            return 250 if not refused else 0
        except smtplib.SMTPResponseException as e:
            return e.smtp_code
        except smtplib.SMTPRecipientsRefused as e:
            return min(code for code, _ in e.recipients.values())


def observed(mc):
    """Every counter sample except connections, keyed without the ingress label; plus the log
    lines of message events without the fields that name the door."""
    status, _, raw = mc.request("GET", "/metrics")
    assert status == 200
    samples = {}
    for family in prometheus_parser.text_string_to_metric_families(raw.decode()):
        if family.name == "mailcar_connections":
            continue
        for s in family.samples:
            if s.name.endswith("_bucket") or s.name.endswith("_sum"):
                continue  # timings differ; their count is compared
            labels = tuple(sorted((k, v) for k, v in s.labels.items() if k != "ingress"))
            samples[(s.name, labels)] = s.value
    lines = []
    for e in mc.log_events():
        if e.get("event") in ("message", "message_refused", "recipient_rejected"):
            lines.append({k: v for k, v in e.items() if k not in PER_DOOR_FIELDS})
    return samples, lines


# name, what the upstream does, role limits, senders of the messages sent, expected codes
CASES = [
    ("sent", {}, "[]", ["app@example.com"], {"http": [200], "smtp": [250]}),
    ("refused_by_policy", {}, "[]", ["x@evil.org"], {"http": [403], "smtp": [550]}),
    ("rate_limited", {}, "[2/minute]", ["app@example.com"] * 2,
     {"http": [200, 429], "smtp": [250, 450]}),
    ("upstream_4xx", {"reject_data": "451 4.3.0 Try again later"}, "[]", ["app@example.com"],
     {"http": [500], "smtp": [451]}),
    ("upstream_5xx", {"reject_data": "554 5.7.1 Refused by policy"}, "[]", ["app@example.com"],
     {"http": [500], "smtp": [554]}),
]


@pytest.mark.parametrize("name,upstream_kw,role_limits,senders,codes", CASES,
                         ids=[c[0] for c in CASES])
def test_both_doors_count_and_log_the_same_event_alike(upstream_factory, mailcar_factory, name,
                                                       upstream_kw, role_limits, senders, codes):
    seen = {}
    for door, send in (("http", http_send), ("smtp", smtp_send)):
        up = upstream_factory(mode="plain", **upstream_kw)
        mc = mailcar_factory(config(up, role_limits))
        got = [send(mc, sender) for sender in senders]
        assert got == codes[door], f"{door}: {got}"
        seen[door] = observed(mc)
    http_samples, http_lines = seen["http"]
    smtp_samples, smtp_lines = seen["smtp"]
    assert http_lines, "the event must be logged"
    assert http_lines == smtp_lines
    assert http_samples == smtp_samples
    # And the counters say what happened, not merely the same thing twice.
    outcome = {"sent": "sent", "refused_by_policy": "rejected", "rate_limited": "rate_limited",
               "upstream_4xx": "failed", "upstream_5xx": "rejected"}[name]
    key = ("mailcar_messages_total",
           (("outcome", outcome), ("role", "app"), ("service", "email")))
    assert http_samples.get(key) == 1, sorted(http_samples)
    upstream_transactions = {"refused_by_policy": 0, "rate_limited": 1}.get(name, 1)
    assert http_samples[("mailcar_upstream_seconds_count", ())] == upstream_transactions
