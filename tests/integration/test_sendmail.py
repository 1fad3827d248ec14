"""The sendmail command (SPEC §12): PHP's mail(), cron and bsd-mailx pipe mail into
`sendmail`, here a link to the real mailcar binary, which submits to a real mailcar daemon
over SMTP; aiosmtpd is the upstream. Every exit status of sysexits.h that the SPEC names."""
import os
import shutil
import socket
import subprocess
import threading

import pytest

from conftest import dead_port, MAILCAR_BIN, free_port, parse_message

PASSWORD = "sendmail-pa55"


def config(upstream, anonymous=True, senders='["*@example.com"]'):
    cfg = f"""listen:
  http: 127.0.0.1:{{HTTP_PORT}}
  smtp: 127.0.0.1:{{SMTP_PORT}}
services:
  email:
    host: 127.0.0.1
    port: {upstream.port}
    encryption: none
    from_email: noreply@example.com
roles:
  app:
    senders: {senders}
credentials:
  - smtp_username: cron-host
    smtp_password: {PASSWORD}
    role: app
smtp:
  service: email
  hostname: mailcar.test
"""
    if anonymous:
        cfg += "  anonymous_role: app\n"
    cfg += """limits:
  idle_timeout: 5s
  shutdown_grace: 5s
log:
  format: json
  level: debug
"""
    return cfg


@pytest.fixture
def link(tmp_path):
    """A folder holding `sendmail` -> the mailcar binary, as `cmake --install` makes it."""
    folder = tmp_path / "sbin"
    folder.mkdir()
    (folder / "sendmail").symlink_to(MAILCAR_BIN)
    return folder / "sendmail"


@pytest.fixture
def relay(upstream_factory, mailcar_factory):
    def make(**kw):
        up = upstream_factory(mode="plain")
        mc = mailcar_factory(config(up, **kw))
        return up, mc
    return make


def env_for(mc=None, **extra):
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
    if mc is not None:
        env["MAILCAR_SMTP"] = f"127.0.0.1:{mc.smtp_port}"
    env.update(extra)
    return env


def sendmail(link, args, message, env, timeout=30):
    data = message.encode() if isinstance(message, str) else message
    return subprocess.run([str(link)] + args, input=data, capture_output=True, env=env,
                          timeout=timeout)


def body_of(msg):
    """The text body with plain line ends (the wire has CRLF)."""
    return msg.get_body(preferencelist=("plain",)).get_content().replace("\r\n", "\n")


# --------------------------------------------------------------------------- real callers

def test_php_mail_through_sendmail_path(relay, link):
    if not shutil.which("php"):
        pytest.skip("php-cli is not installed")
    up, mc = relay()
    script = r'''
$ok = mail("alice@example.org", "PHP subject é",
           "Line one\n.\nLine after a lone dot\n",
           "From: PHP App <app@example.com>\r\nCc: bob@example.org\r\nBcc: carol@example.net");
echo $ok ? "sent" : "failed";
'''
    proc = subprocess.run(["php", "-n", "-d", f"sendmail_path={link} -t -i", "-r", script],
                          capture_output=True, env=env_for(mc), timeout=30)
    assert proc.stdout == b"sent", proc
    got = up.wait_for(1)[0]
    assert got["mail_from"] == "app@example.com"
    assert sorted(got["rcpt_tos"]) == ["alice@example.org", "bob@example.org", "carol@example.net"]
    msg = parse_message(got["data"])
    assert msg["Subject"] == "PHP subject é"
    assert msg["To"] == "alice@example.org"
    assert msg["Cc"] == "bob@example.org"
    assert msg["Bcc"] is None and b"carol" not in got["data"]
    assert msg["Date"] and msg["Message-ID"]  # added once, by mailcar's SMTP door
    assert got["data"].count(b"\r\nDate:") + got["data"].startswith(b"Date:") == 1
    # PHP's mail() ends what it writes with one more line end.
    assert body_of(msg) == "Line one\n.\nLine after a lone dot\n\n"


CRON_MESSAGE = ("From: root (Cron Daemon) <cron@example.com>\n"
                "To: ops@example.org\n"
                "Subject: Cron <root@web-1> /usr/local/bin/backup\n"
                "MIME-Version: 1.0\n"
                "Content-Type: text/plain; charset=UTF-8\n"
                "Content-Transfer-Encoding: 8bit\n"
                "X-Cron-Env: <SHELL=/bin/sh>\n"
                "X-Cron-Env: <MAILTO=ops@example.org>\n"
                "\n"
                "backup done: 3 files, Grüße\n")


def test_cron_style_pipe_with_dash_t(relay, link, tmp_path):
    up, mc = relay()
    (tmp_path / "job-output").write_text(CRON_MESSAGE)
    # What a cron job or a shell script does: a pipeline, `sendmail` found in PATH.
    env = env_for(mc, PATH=f"{link.parent}:{os.environ.get('PATH', '/usr/bin:/bin')}")
    proc = subprocess.run(["sh", "-c", f"cat '{tmp_path / 'job-output'}' | sendmail -t"],
                          capture_output=True, env=env, timeout=30)
    assert proc.returncode == 0, proc
    got = up.wait_for(1)[0]
    assert got["mail_from"] == "cron@example.com"
    assert got["rcpt_tos"] == ["ops@example.org"]
    msg = parse_message(got["data"])
    assert msg["Subject"] == "Cron <root@web-1> /usr/local/bin/backup"
    assert msg.get_all("X-Cron-Env") == ["<SHELL=/bin/sh>", "<MAILTO=ops@example.org>"]
    assert body_of(msg) == "backup done: 3 files, Grüße\n"


def test_debian_cron_arguments(relay, link):
    """Debian's cron runs `sendmail -FCronDaemon -i -B8BITMIME -oem MAILTO` (no -t)."""
    up, mc = relay()
    proc = sendmail(link, ["-FCronDaemon", "-i", "-B8BITMIME", "-oem", "ops@example.org"],
                    CRON_MESSAGE.replace("To: ops@example.org\n", "To: root\n"), env_for(mc))
    assert proc.returncode == 0, proc
    got = up.wait_for(1)[0]
    assert got["rcpt_tos"] == ["ops@example.org"]
    assert "8BITMIME" in " ".join(got["mail_options"]).upper()
    assert body_of(parse_message(got["data"])) == "backup done: 3 files, Grüße\n"


def test_bsd_mailx(relay, link, tmp_path):
    mailx = shutil.which("bsd-mailx")
    if not mailx:
        pytest.skip("bsd-mailx is not installed")
    up, mc = relay()
    mailrc = tmp_path / "mailrc"
    mailrc.write_text(f"set sendmail={link}\n")
    env = env_for(mc, MAILRC=str(mailrc), HOME=str(tmp_path))
    proc = subprocess.run([mailx, "-n", "-s", "Report from mailx", "-r", "reports@example.com",
                           "-c", "cc@example.org", "-b", "bcc@example.org",
                           "-a", "X-Report: nightly", "dest@example.org"],
                          input=b"Totals:\n.\n42 rows\n", capture_output=True, env=env,
                          timeout=30)
    assert proc.returncode == 0, proc
    got = up.wait_for(1)[0]
    assert got["mail_from"] == "reports@example.com"
    assert sorted(got["rcpt_tos"]) == ["bcc@example.org", "cc@example.org", "dest@example.org"]
    msg = parse_message(got["data"])
    assert msg["Subject"] == "Report from mailx"
    assert msg["X-Report"] == "nightly"
    assert msg["Bcc"] is None and b"bcc@example.org" not in got["data"]
    assert body_of(msg).startswith("Totals:\n")
    assert "42 rows" in body_of(msg)


def test_from_added_from_dash_f_and_dash_F(relay, link):
    up, mc = relay()
    proc = sendmail(link, ["-f", "jobs@example.com", "-F", "Nightly Jobs", "a@example.org"],
                    "Subject: no From here\n\nbody\n.\nnot sent\n", env_for(mc))
    assert proc.returncode == 0, proc
    got = up.wait_for(1)[0]
    assert got["mail_from"] == "jobs@example.com"
    msg = parse_message(got["data"])
    assert msg["From"] == "Nightly Jobs <jobs@example.com>"
    assert body_of(msg) == "body\n"  # the lone dot ended the input (no -i)


# --------------------------------------------------------------------------- the listener

def test_listener_from_configuration_and_auth_from_environment(relay, link, mailcar_factory,
                                                                upstream_factory):
    up = upstream_factory(mode="plain")
    mc = mailcar_factory(config(up, anonymous=False))
    msg = "From: a@example.com\nTo: b@example.org\nSubject: auth\n\nx\n"
    # `mailcar -c FILE sendmail`: listen.smtp of the file; the fallback would reach nothing.
    dead = f"127.0.0.1:{dead_port()}"
    cmd = [MAILCAR_BIN, "-c", str(mc.config_path), "sendmail", "-t"]
    proc = subprocess.run(cmd, input=msg.encode(), capture_output=True, timeout=30,
                          env=env_for(MAILCAR_SMTP_LISTEN=dead))
    assert proc.returncode == 77, proc  # no AUTH: 530
    assert b"530" in proc.stderr
    proc = subprocess.run(cmd, input=msg.encode(), capture_output=True, timeout=30,
                          env=env_for(MAILCAR_SMTP_USERNAME="cron-host",
                                      MAILCAR_SMTP_PASSWORD="wrong"))
    assert proc.returncode == 77 and b"535" in proc.stderr, proc
    assert b"wrong" not in proc.stderr
    proc = subprocess.run(cmd, input=msg.encode(), capture_output=True, timeout=30,
                          env=env_for(MAILCAR_SMTP_USERNAME="cron-host",
                                      MAILCAR_SMTP_PASSWORD=PASSWORD))
    assert proc.returncode == 0, proc
    assert up.wait_for(1)[0]["rcpt_tos"] == ["b@example.org"]


def test_unreadable_configuration_falls_back(relay, tmp_path):
    if os.geteuid() != 0:
        pytest.skip("needs root to run the command as another user")
    up, mc = relay()
    os.chmod(mc.config_path, 0o600)
    msg = b"From: a@example.com\nTo: b@example.org\n\nx\n"
    env = env_for(MAILCAR_CONFIG=str(mc.config_path),
                  MAILCAR_SMTP_LISTEN=f"127.0.0.1:{mc.smtp_port}")
    # As root the configuration is read; its listen.smtp is mailcar's.
    proc = subprocess.run([MAILCAR_BIN, "sendmail", "-t"], input=msg, capture_output=True,
                          env=dict(env, MAILCAR_SMTP_LISTEN=f"127.0.0.1:{free_port()}"),
                          timeout=30)
    assert proc.returncode == 0, proc
    # As nobody it cannot be read: no failure, the next source (MAILCAR_SMTP_LISTEN) is used.
    proc = subprocess.run([MAILCAR_BIN, "sendmail", "-t"], input=msg, capture_output=True,
                          env=env, timeout=30, user=65534, group=65534, cwd="/")
    assert proc.returncode == 0, proc
    assert len(up.wait_for(2)) == 2


# --------------------------------------------------------------------------- exit statuses

def test_usage_errors_exit_64(link):
    for args in (["-Z"], ["-bs"], ["-q"], ["-f"], ["-f", "not an address", "a@example.org"],
                 ["root"]):
        proc = sendmail(link, args, "", env_for(MAILCAR_SMTP="127.0.0.1:9"))
        assert proc.returncode == 64, (args, proc)
        assert proc.stderr.startswith(b"sendmail: "), proc
    proc = sendmail(link, ["a@example.org"], "", env_for(MAILCAR_SMTP="localhost:25"))
    assert proc.returncode == 64 and b"MAILCAR_SMTP" in proc.stderr


@pytest.mark.parametrize("args,message,why", [
    (["a@example.org"], "", b"empty"),
    (["a@example.org"], "just a line of text\n", b"no header section"),
    (["-t"], "From: a@example.com\nSubject: nobody\n\nx\n", b"no recipient"),
    (["b@example.org"], "Subject: anonymous\n\nx\n", b"no sender"),
    (["-t"], "From: a@example.com\nTo: root\n\nx\n", b"To: "),
])
def test_bad_messages_exit_65(relay, link, args, message, why):
    up, mc = relay()
    proc = sendmail(link, args, message, env_for(mc))
    assert proc.returncode == 65, proc
    assert why in proc.stderr
    assert up.messages == []


def test_unreachable_exits_69(link):
    proc = sendmail(link, ["-t"], "From: a@example.com\nTo: b@example.org\n\nx\n",
                    env_for(MAILCAR_SMTP=f"127.0.0.1:{dead_port()}"))
    assert proc.returncode == 69, proc
    assert b"cannot connect to mailcar" in proc.stderr and b"MAILCAR_SMTP" in proc.stderr


def test_temporary_failure_exits_75(upstream_factory, mailcar_factory, link):
    up = upstream_factory(mode="plain", reject_data="451 4.3.0 upstream busy, try later")
    mc = mailcar_factory(config(up))
    proc = sendmail(link, ["-t"], "From: a@example.com\nTo: b@example.org\n\nx\n", env_for(mc))
    assert proc.returncode == 75, proc
    assert b"451" in proc.stderr


def test_silent_listener_times_out_with_75(link):
    """A listener that accepts and never greets: the per-step timeout ends the wait."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    held = []
    threading.Thread(target=lambda: held.append(server.accept()), daemon=True).start()
    try:
        proc = sendmail(link, ["-t"], "From: a@example.com\nTo: b@example.org\n\nx\n",
                        env_for(MAILCAR_SMTP=f"127.0.0.1:{server.getsockname()[1]}",
                                MAILCAR_SMTP_TIMEOUT="1s"), timeout=20)
        assert proc.returncode == 75, proc
        assert b"did not answer within 1 s" in proc.stderr
    finally:
        server.close()
        for conn, _ in held:
            conn.close()


def test_policy_refusal_exits_77(relay, link):
    up, mc = relay(senders='["*@allowed.example.com"]')
    proc = sendmail(link, ["-t"], "From: a@example.com\nTo: b@example.org\n\nx\n", env_for(mc))
    assert proc.returncode == 77, proc
    assert b"550" in proc.stderr
    assert up.messages == []


def test_cmake_install_makes_the_link(tmp_path):
    build_dir = os.path.dirname(os.path.abspath(MAILCAR_BIN))
    if not os.path.exists(os.path.join(build_dir, "cmake_install.cmake")) or not shutil.which("cmake"):
        pytest.skip("MAILCAR_BIN is not in a CMake build folder")
    subprocess.run(["cmake", "--install", build_dir, "--prefix", "/opt/mailcar"], check=True,
                   capture_output=True, env=dict(os.environ, DESTDIR=str(tmp_path)), timeout=60)
    link = tmp_path / "opt/mailcar/libexec/mailcar/sendmail"
    assert os.readlink(link) == "../../bin/mailcar"  # relative: valid wherever DESTDIR puts it
    proc = subprocess.run([str(link), "-Z"], capture_output=True, timeout=10)
    assert proc.returncode == 64 and proc.stderr.startswith(b"sendmail: ")
