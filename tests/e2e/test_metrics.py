"""
The metrics endpoint ([metrics] listen): /metrics in the Prometheus text
format (checked by promtool), /healthz, /readyz backed by the periodic deep
check of the upstream, and the HTTP front door's manners (404/405/400/431/
505/408, Connection: close, a cap on clients, a deadline per client).

Counters are read before and after real traffic: a mail sent with smtplib
through relabel to the aiosmtpd upstream, failed and plaintext logins, a
refused connection, a cut-short message, TLS failures on both legs, reloads
that work and fail.  Readiness follows the upstream: up and verified (200),
down (503), presenting a certificate for another name or from an unknown CA
(503), back (200); and it is 503 while relabel drains.

Everything listens and connects on 127.0.0.1 only; every wait is bounded.
"""

import http.client
import os
import re
import shutil
import signal
import smtplib
import socket
import ssl
import subprocess
import time

import pytest

import harness as h

PROMTOOL = shutil.which("promtool")
CHECK = {"upstream_check_interval": "1s", "ready_max_age": "2s"}
SAMPLE_RE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$")
LABEL_RE = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')
HTTP_TIMEOUT_S = 5  # RL_HTTP_TIMEOUT
HTTP_CLIENTS_MAX = 16  # RL_HTTP_CLIENTS_MAX


# --------------------------------------------------------------------------
# HTTP and exposition helpers

def request(port, path, method="GET"):
    """(status, response, body) of one request with http.client."""
    conn = http.client.HTTPConnection(h.LOCALHOST, port, timeout=h.TIMEOUT)
    try:
        conn.request(method, path)
        resp = conn.getresponse()
        return resp.status, resp, resp.read()
    finally:
        conn.close()


def raw(port, data, timeout=h.TIMEOUT):
    """Sends bytes as they are; returns everything received until the server closes."""
    with socket.create_connection((h.LOCALHOST, port), timeout=timeout) as s:
        if data:
            s.sendall(data)
        out = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                return out
            out += chunk


def unescape(v):
    return re.sub(r"\\(.)", lambda m: "\n" if m.group(1) == "n" else m.group(1), v)


class Samples(dict):
    """{(name, frozenset(labels)): float} of one scrape."""

    def get(self, name, **labels):
        return self[(name, frozenset(labels.items()))]

    def total(self, name, **labels):
        """Sum over the samples of name whose labels include `labels`."""
        want = set(labels.items())
        return sum(v for (n, ls), v in self.items() if n == name and want <= set(ls))


def parse(text):
    out = Samples()
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = SAMPLE_RE.match(line)
        assert m, f"not a sample line: {line!r}"
        labels = frozenset((k, unescape(v)) for k, v in LABEL_RE.findall(m.group(2) or ""))
        out[(m.group(1), labels)] = float(m.group(3))
    return out


def scrape_text(port):
    status, resp, body = request(port, "/metrics")
    assert status == 200, (status, body)
    assert resp.getheader("Content-Type") == "text/plain; version=0.0.4; charset=utf-8"
    return body.decode()


def scrape(port):
    return parse(scrape_text(port))


def readyz(port):
    status, _, body = request(port, "/readyz")
    return status, body.decode()


def wait_ready(port, want, contains=None, timeout=15):
    """Polls /readyz until its status is `want` (and its body contains `contains`)."""
    last = []

    def check():
        status, body = readyz(port)
        last[:] = [status, body]
        return status == want and (contains is None or contains in body)

    try:
        h.wait_for(check, timeout, interval=0.1, what=f"/readyz {want} {contains or ''}")
    except AssertionError as e:
        raise AssertionError(f"{e}; last answer: {last}") from None
    return last[1]


def wait_sample(port, name, want, timeout=h.TIMEOUT, **labels):
    """Polls /metrics until the sample has the value want; returns the scrape."""
    got = []

    def check():
        s = scrape(port)
        got[:] = [s]
        return s.get(name, **labels) == want

    try:
        h.wait_for(check, timeout, interval=0.05, what=f"{name}{labels} == {want}")
    except AssertionError as e:
        raise AssertionError(f"{e}; last value: {got[0].get(name, **labels)}") from None
    return got[0]


def idle(port):
    """Waits until every session has ended (its bytes and duration are
    counted then); returns a scrape taken after that."""
    wait_sample(port, "relabel_sessions_active", 0, listener="smtps")
    return wait_sample(port, "relabel_sessions_active", 0, listener="submission")


def cert_not_after(path):
    out = subprocess.run(["openssl", "x509", "-enddate", "-noout", "-in", path],
                         capture_output=True, text=True, check=True, timeout=30).stdout
    return ssl.cert_time_to_seconds(out.strip().split("=", 1)[1])


# --------------------------------------------------------------------------
# fixtures

@pytest.fixture
def metrics_port():
    return h.free_port()


@pytest.fixture
def start(upstream_factory, relabel_factory, metrics_port):
    """start(**relabel_factory options) -> (relabel, upstream, metrics port): an
    implicit-TLS upstream, relabel with [metrics] on metrics_port, checks every 1s."""

    def make(up_tls="implicit", metrics=None, **kw):
        up = upstream_factory(up_tls)
        mopts = {"listen": f"{h.LOCALHOST}:{metrics_port}", **CHECK, **(metrics or {})}
        rl = relabel_factory(up.port, up_tls, metrics_opts=mopts, **kw)
        return rl, up, metrics_port

    return make


def send_mail(rl, ctx, body=b"Subject: metrics\r\n\r\nhello\r\n", password=h.PASSWORD):
    with h.NamedSMTP_SSL(h.BRAND_HOST, rl.ports["smtps"], context=ctx, timeout=h.TIMEOUT) as s:
        s.login(h.USER, password)
        refused = s.sendmail("sender@example.net", ["rcpt@example.org"], body)
        assert refused == {}


# --------------------------------------------------------------------------
# /metrics

@pytest.mark.skipif(PROMTOOL is None, reason="promtool not installed (Debian package prometheus)")
def test_exposition_passes_promtool(start, client_ctx):
    rl, up, port = start()
    send_mail(rl, client_ctx)  # every family has samples
    wait_ready(port, 200)
    idle(port)
    text = scrape_text(port)
    res = subprocess.run([PROMTOOL, "check", "metrics"], input=text.encode(),
                         capture_output=True, timeout=60)
    assert res.returncode == 0 and res.stdout == b"" and res.stderr == b"", (res, text)
    names = {n for n, _ in parse(text)}
    for family in ("relabel_connections_total", "relabel_sessions_active",
                   "relabel_connections_refused_total", "relabel_tls_handshake_failures_total",
                   "relabel_upstream_connect_failures_total",
                   "relabel_upstream_verify_failures_total", "relabel_messages_total",
                   "relabel_bytes_total", "relabel_auth_total", "relabel_plaintext_auth_total",
                   "relabel_reloads_total", "relabel_last_reload_success_timestamp_seconds",
                   "relabel_certificate_not_after_timestamp_seconds",
                   "relabel_session_duration_seconds_bucket", "relabel_session_duration_seconds_sum",
                   "relabel_session_duration_seconds_count", "relabel_upstream_check_success",
                   "relabel_upstream_check_last_success_timestamp_seconds",
                   "relabel_build_info", "relabel_ready", "process_start_time_seconds"):
        assert family in names, (family, text)
    # Nothing secret ever shows.
    assert h.PASSWORD not in text and h.plain_token() not in text


def test_counters_follow_a_real_mail(start, client_ctx, certs):
    rl, up, port = start()
    before = scrape(port)
    body = h.make_body(20000, b"metrics")
    send_mail(rl, client_ctx, body)
    assert len(up.recorder.wait_messages(1)) == 1
    after = idle(port)

    def delta(name, **labels):
        return after.get(name, **labels) - before.get(name, **labels)

    assert delta("relabel_connections_total", listener="smtps") == 1
    assert delta("relabel_connections_total", listener="submission") == 0
    assert delta("relabel_messages_total", result="2xx") == 1
    assert delta("relabel_messages_total", result="aborted") == 0
    assert delta("relabel_auth_total", result="success") == 1
    assert delta("relabel_auth_total", result="failure") == 0
    assert delta("relabel_session_duration_seconds_count") == 1
    assert delta("relabel_session_duration_seconds_bucket", le="+Inf") == 1
    assert after.get("relabel_session_duration_seconds_sum") > 0
    # Wire bytes, TLS included: the message went in from the client and out
    # to the upstream; replies came back the other way.
    assert delta("relabel_bytes_total", direction="client_in") > len(body)
    assert delta("relabel_bytes_total", direction="upstream_out") > len(body)
    assert 0 < delta("relabel_bytes_total", direction="client_out") < len(body)
    assert 0 < delta("relabel_bytes_total", direction="upstream_in") < len(body)

    # A wrong password: the upstream's 535 counts as a failure (one AUTH;
    # smtplib's login() would try every mechanism in turn).
    c = h.open_session(rl, "implicit", client_ctx)
    assert c.auth_plain(password="wrong").code == 535
    c.cmd("QUIT")
    c.close()
    after2 = idle(port)
    assert after2.get("relabel_auth_total", result="failure") == 1
    assert after2.get("relabel_auth_total", result="success") == 1
    assert after2.get("relabel_connections_total", listener="smtps") == 2
    assert after2.get("relabel_messages_total", result="2xx") == 1


def test_plaintext_auth_and_aborted_message(start, client_ctx):
    rl, up, port = start(listener_opts={"submission": {"require_tls": "no"}})
    c = h.Client(rl.ports["submission"])
    assert c.ehlo().code == 250
    assert c.auth_plain().code == 235
    assert c.cmd("MAIL FROM:<a@example.net>").code == 250
    assert c.cmd("RCPT TO:<b@example.org>").code == 250
    assert c.cmd("DATA").code == 354
    c.send(b"Subject: cut short\r\n\r\nthe end never comes\r\n")
    c.close()
    s = idle(port)
    assert s.get("relabel_plaintext_auth_total") == 1
    assert s.get("relabel_auth_total", result="success") == 1
    assert s.get("relabel_messages_total", result="aborted") == 1
    assert s.get("relabel_messages_total", result="2xx") == 0
    assert s.get("relabel_connections_total", listener="submission") == 1
    assert up.messages == []


def test_final_reply_classes(scripted_factory, relabel_factory, client_ctx, metrics_port):
    # Three sessions: the upstream answers the end of data 554, then 451,
    # then takes the message.  Faults are armed once the start-up check has
    # been and gone, so that the sessions' connections get them (no other
    # check for an hour).
    up = scripted_factory()
    rl = relabel_factory(up.port, "implicit",
                         metrics_opts={"listen": f"{h.LOCALHOST}:{metrics_port}",
                                       "upstream_check_interval": "1h"})
    wait_ready(metrics_port, 200)
    h.wait_for(up.recorder.all_closed, what="the check's connection to close")
    for fault, code in ((h.Fault("dot", "override"), 554),
                        (h.Fault("dot", "override", code_text="451 4.3.0 try again later"), 451),
                        (None, 250)):
        up.arm(fault)
        c = h.open_session(rl, "implicit", client_ctx)
        assert c.auth_plain().code == 235
        assert c.send_message(b"Subject: classes\r\n\r\nhi\r\n").code == code
        c.cmd("QUIT")
        c.close()
        idle(metrics_port)
    s = scrape(metrics_port)
    assert s.get("relabel_messages_total", result="5xx") == 1
    assert s.get("relabel_messages_total", result="4xx") == 1
    assert s.get("relabel_messages_total", result="2xx") == 1
    assert s.get("relabel_messages_total", result="aborted") == 0


def test_refused_connection_counted(start, client_ctx):
    rl, up, port = start(relabel_opts={"max_connections_per_ip": "1"})
    held = h.Client(rl.ports["submission"], client_ctx)
    assert held.greeting.code == 220
    over = h.Client(rl.ports["submission"])
    assert over.greeting.code == 421, over.greeting
    assert over.closed()
    s = wait_sample(port, "relabel_connections_refused_total", 1, listener="submission",
                    reason="max_connections_per_ip")
    assert s.get("relabel_connections_refused_total", listener="submission",
                 reason="max_connections") == 0
    assert s.get("relabel_connections_total", listener="submission") == 2
    # The refused session counts as active until its socket has closed,
    # which its worker may do a moment after the refusal is counted.
    wait_sample(port, "relabel_sessions_active", 1, listener="submission")
    held.close()
    over.close()
    idle(port)


def test_client_tls_failure_counted(start):
    rl, up, port = start()
    # Not a TLS hello at all, then a client that gives up mid-handshake.
    assert raw(rl.ports["smtps"], b"EHLO plaintext.example\r\n") is not None
    s = socket.create_connection((h.LOCALHOST, rl.ports["smtps"]), timeout=h.TIMEOUT)
    s.sendall(b"\x16\x03\x01\x00")
    s.close()
    idle(port)
    s = scrape(port)
    assert s.total("relabel_tls_handshake_failures_total", leg="client") == 2
    assert s.total("relabel_tls_handshake_failures_total", leg="upstream") == 0
    assert s.get("relabel_connections_total", listener="smtps") == 2


def test_certificate_not_after(start, certs):
    rl, up, port = start()
    s = scrape(port)
    want = cert_not_after(os.path.join(certs, "brand.crt"))
    assert s.get("relabel_certificate_not_after_timestamp_seconds", brand="example") == want
    version = subprocess.run([rl.binary, "--version"], capture_output=True, text=True,
                             timeout=30).stdout.split()[-1]
    assert s.get("relabel_build_info", version=version) == 1
    assert abs(s.get("process_start_time_seconds") - time.time()) < 60


# --------------------------------------------------------------------------
# reloads

def write_config(rl, certs, up, metrics_opts, **kw):
    cfg = h.relabel_config(certs, up.port, up.tls, rl.ports, metrics_opts=metrics_opts,
                           relabel_opts=kw.get("relabel_opts"))
    with open(rl.config_path, "w") as f:
        f.write(cfg.text())


def test_reload_counters_and_metrics_listen(start, certs, free_ports):
    rl, up, port = start()
    s0 = scrape(port)
    loaded0 = s0.get("relabel_last_reload_success_timestamp_seconds")
    assert s0.get("relabel_reloads_total", result="ok") == 0
    assert s0.get("relabel_reloads_total", result="failed") == 0
    wait_ready(port, 200)

    time.sleep(0.05)
    os.kill(rl.pid, signal.SIGHUP)
    rl.wait_log(r"reload ok")
    s1 = wait_sample(port, "relabel_reloads_total", 1, result="ok")
    loaded1 = s1.get("relabel_last_reload_success_timestamp_seconds")
    assert loaded1 > loaded0
    # The upstream did not change: its last success carries over, no 503.
    assert readyz(port)[0] == 200

    with open(rl.config_path, "a") as f:
        f.write("[brand \"broken\"\n")
    os.kill(rl.pid, signal.SIGHUP)
    rl.wait_log(r"reload failed")
    s2 = wait_sample(port, "relabel_reloads_total", 1, result="failed")
    assert s2.get("relabel_reloads_total", result="ok") == 1
    assert s2.get("relabel_last_reload_success_timestamp_seconds") == loaded1

    # A new metrics address: bound in the reload, the old one closed.
    new_port, = free_ports(1)
    write_config(rl, certs, up, {"listen": f"{h.LOCALHOST}:{new_port}", **CHECK})
    os.kill(rl.pid, signal.SIGHUP)
    h.wait_for(lambda: rl.log.count("reload ok reason=") == 2, what="second reload ok")
    s3 = scrape(new_port)
    assert s3.get("relabel_reloads_total", result="ok") == 2
    with pytest.raises(OSError):
        request(port, "/healthz")

    # An address that cannot be bound fails the whole reload: nothing moves.
    blocker = socket.socket()
    blocker.bind((h.LOCALHOST, 0))
    blocker.listen(1)
    try:
        taken = blocker.getsockname()[1]
        write_config(rl, certs, up, {"listen": f"{h.LOCALHOST}:{taken}", **CHECK},
                     relabel_opts={"banner": "ESMTP changed"})
        os.kill(rl.pid, signal.SIGHUP)
        h.wait_for(lambda: rl.log.count("reload failed reason=") == 2, what="reload failed")
        assert re.search(rf"\[metrics\] cannot listen on 127\.0\.0\.1:{taken}", rl.log), rl.log
        s4 = scrape(new_port)
        assert s4.get("relabel_reloads_total", result="failed") == 2
        c = h.Client(rl.ports["submission"])
        assert b"ESMTP changed" not in c.greeting.raw, c.greeting
        c.close()
    finally:
        blocker.close()

    # No [metrics] listen any more: the endpoint goes away.
    write_config(rl, certs, up, None)
    os.kill(rl.pid, signal.SIGHUP)
    h.wait_for(lambda: rl.log.count("reload ok reason=") == 3, what="third reload ok")
    h.wait_for(lambda: "metrics endpoint closed on" in rl.log, what="endpoint closed")
    with pytest.raises(OSError):
        request(new_port, "/healthz")


# --------------------------------------------------------------------------
# /healthz and /readyz

def test_readiness_follows_the_upstream(start, upstream_factory, client_ctx):
    rl, up, port = start()
    status, resp, body = request(port, "/healthz")
    assert (status, body) == (200, b"ok\n")
    assert resp.getheader("Connection") == "close"
    assert wait_ready(port, 200) == "ok\n"
    s = scrape(port)
    assert s.get("relabel_ready") == 1
    assert s.get("relabel_upstream_check_success", upstream="test") == 1
    assert abs(s.get("relabel_upstream_check_last_success_timestamp_seconds", upstream="test")
               - time.time()) < 30
    # The check is a real SMTP dialogue: EHLO over TLS, then QUIT.
    h.wait_for(lambda: {"EHLO", "QUIT"} <= set(up.recorder.verbs()), what="EHLO and QUIT")
    assert "MAIL" not in up.recorder.verbs() and "AUTH" not in up.recorder.verbs()

    # Down: connection refused, sessions get 421 and count a connect failure.
    up.stop()
    body = wait_ready(port, 503, "connection refused")
    assert body.startswith("upstream test: ") and body.endswith("\n"), body
    c = h.open_session(rl, "implicit", client_ctx, ehlo=False)
    assert c.ehlo().code == 421
    c.close()
    s = wait_sample(port, "relabel_upstream_connect_failures_total", 1, upstream="test")
    assert s.get("relabel_ready") == 0
    assert s.get("relabel_upstream_check_success", upstream="test") == 0
    assert (s.get("relabel_upstream_check_last_success_timestamp_seconds", upstream="test")
            > 0)

    # Back, but with a certificate for another name: still not ready, and a
    # session's verification failure is counted.
    wrong = upstream_factory("implicit", cert="wrongname", port=up.port)
    body = wait_ready(port, 503, "name mismatch")
    assert "certificate verification failed for smtp.mailgun.org" in body, body
    c = h.open_session(rl, "implicit", client_ctx, ehlo=False)
    assert c.ehlo().code == 421
    c.close()
    s = wait_sample(port, "relabel_upstream_verify_failures_total", 1, upstream="test")
    assert s.get("relabel_tls_handshake_failures_total", leg="upstream", reason="verify") == 1
    wrong.stop()

    # A certificate no configured CA vouches for.
    unknown = upstream_factory("implicit", cert="unknownca", port=up.port)
    wait_ready(port, 503, "not trusted")
    unknown.stop()

    # The real one again: ready.
    good = upstream_factory("implicit", port=up.port)
    assert wait_ready(port, 200) == "ok\n"
    send_mail(rl, client_ctx)
    assert len(good.recorder.wait_messages(1)) == 1


def test_readiness_with_a_starttls_upstream(start):
    rl, up, port = start("starttls")
    wait_ready(port, 200)
    verbs = up.recorder.verbs()
    assert verbs[:3] == ["EHLO", "STARTTLS", "EHLO"], verbs
    tls = [c.tls for c in up.recorder.commands]
    assert tls[:3] == [False, False, True], up.recorder.commands


def test_readyz_503_while_draining(start, client_ctx):
    rl, up, port = start(relabel_opts={"drain_timeout": "20s"})
    wait_ready(port, 200)
    c = h.open_session(rl, "implicit", client_ctx)
    assert c.auth_plain().code == 235
    assert c.cmd("MAIL FROM:<a@example.net>").code == 250
    os.kill(rl.pid, signal.SIGTERM)
    # (not just "draining": the test's own name is in the config path)
    rl.wait_log(r"received \w+, draining")
    status, body = readyz(port)
    assert status == 503 and "draining" in body, (status, body)
    assert scrape(port).get("relabel_ready") == 0
    assert request(port, "/healthz")[0] == 200
    # The transaction finishes; then relabel exits by itself (exit code
    # checked by the fixture).
    assert c.cmd("RCPT TO:<b@example.org>").code == 250
    assert c.cmd("DATA").code == 354
    c.send(h.stuff(b"Subject: drained\r\n\r\nbye\r\n"))
    assert c.read_reply().code == 250
    assert c.closed()
    rl.proc.wait(h.TIMEOUT)
    assert rl.proc.returncode == 0, rl.log


# --------------------------------------------------------------------------
# the HTTP front door

def test_bad_requests(start):
    rl, up, port = start()
    status, resp, body = request(port, "/metrics", method="POST")
    assert status == 405 and resp.getheader("Allow") == "GET"
    assert request(port, "/metrics", method="HEAD")[0] == 405
    assert request(port, "/nope")[0] == 404
    assert request(port, "/metrics/")[0] == 404
    assert request(port, "/readyz?verbose=1")[0] in (200, 503)

    def status_of(data):
        out = raw(port, data)
        head = out.split(b"\r\n\r\n", 1)[0]
        assert b"\r\nConnection: close" in head, out
        return int(out.split(b" ", 2)[1])

    assert status_of(b"hello\r\n\r\n") == 400
    assert status_of(b"GET /metrics HTTP/1.1\r\n\r\n") == 400  # no Host
    assert status_of(b"GET /metrics HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n") == 400
    assert status_of(b"GET /metrics HTTP/1.1\r\nHost: a\r\n folded\r\n\r\n") == 400
    assert status_of(b"GET /metrics HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\n\r\nbody") == 400
    assert status_of(b"GET http://x/metrics HTTP/1.1\r\nHost: a\r\n\r\n") == 400
    assert status_of(b"GET /metrics HTTP/2.0\r\n\r\n") == 505
    assert status_of(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03") == 400  # a TLS hello
    assert status_of(b"GET /healthz HTTP/1.0\r\n\r\n") == 200
    # An oversized head: 431 at 4 KiB, the rest read and dropped, the
    # connection closed cleanly; the daemon carries on.
    big = b"GET /metrics HTTP/1.1\r\nHost: a\r\nX-Pad: " + b"a" * 20000 + b"\r\n\r\n"
    assert status_of(big) == 431
    assert request(port, "/healthz")[0] == 200


def test_slow_and_many_clients_do_not_block(start, client_ctx):
    rl, up, port = start()
    wait_ready(port, 200)
    time.sleep(0.3)  # the endpoint has closed its side of the requests above
    t0 = time.monotonic()
    slow = []
    for _ in range(HTTP_CLIENTS_MAX):
        s = socket.create_connection((h.LOCALHOST, port), timeout=h.TIMEOUT)
        s.sendall(b"GET /metr")  # and nothing more
        slow.append(s)
    time.sleep(0.2)
    # Over the cap: closed at once, without an answer.
    try:
        assert raw(port, b"", timeout=3) == b""
    except ConnectionResetError:
        pass
    # SMTP does not notice.
    send_mail(rl, client_ctx)
    # After the deadline each slow client gets 408 and is closed ...
    for s in slow:
        out = b""
        while True:
            chunk = s.recv(4096)
            if not chunk:
                break
            out += chunk
        assert out.startswith(b"HTTP/1.1 408 "), out
        s.close()
    waited = time.monotonic() - t0
    assert HTTP_TIMEOUT_S - 0.5 < waited < HTTP_TIMEOUT_S + 5, waited
    # ... and the endpoint serves again.
    h.wait_for(lambda: request(port, "/healthz")[0] == 200, what="endpoint usable again")
    s = scrape(port)
    assert s.get("relabel_messages_total", result="2xx") == 1


# --------------------------------------------------------------------------
# relabel --check

def test_check_shows_the_metrics_endpoint(certs, relabel_binary, tmp_path):
    ports = {"smtps": 2001, "submission": 2002}
    path = str(tmp_path / "relabel.ini")

    def check(metrics_opts):
        cfg = h.relabel_config(certs, 2465, "implicit", ports, metrics_opts=metrics_opts)
        with open(path, "w") as f:
            f.write(cfg.text())
        res = h.run_check(relabel_binary, path)
        return cfg, res.returncode, (res.stdout + res.stderr).decode("utf-8", "replace")

    _, rc, out = check({"listen": "127.0.0.1:9465, [::1]:9465", "upstream_check_interval": "10s"})
    assert rc == 0, out
    assert ("metrics: HTTP (no authentication) on 127.0.0.1:9465, [::1]:9465, upstream checks "
            "every 10s, ready while the last success is at most 30s old") in out, out
    _, rc, out = check(None)
    assert rc == 0 and "metrics: off (no [metrics] listen)" in out, out
    cfg, rc, out = check({"listen": "127.0.0.1:2001", "ready_max_age": "1s",
                          "upstream_check_interval": "5s"})
    assert rc != 0, out
    listen_line = cfg.line_of("[metrics]", "listen")
    assert f"{path}:{listen_line}: 127.0.0.1:2001 overlaps 127.0.0.1:2001 of listener" in out, out
    assert f"{path}:{cfg.line_of('[metrics]', 'ready_max_age')}: ready_max_age is shorter" in out


def test_refusal_reasons_deny_and_rate(start, client_ctx):
    """A deny rule and the per-address rate are counted under their own
    reasons, on the listener that refused."""
    rl, up, port = start(relabel_opts={"max_connection_rate": "2"},
                         listener_opts={"smtps": {"deny": "127.0.0.9/32"}})
    s = socket.create_connection((h.LOCALHOST, rl.ports["smtps"]), timeout=h.TIMEOUT,
                                 source_address=("127.0.0.9", 0))
    assert s.recv(1) == b""  # closed at once, before any TLS
    s.close()
    wait_sample(port, "relabel_connections_refused_total", 1, listener="smtps", reason="denied")
    clients = [h.Client(rl.ports["submission"], client_ctx) for _ in range(3)]
    assert [c.greeting.code for c in clients] == [220, 220, 421]
    for c in clients:
        c.close()
    s = wait_sample(port, "relabel_connections_refused_total", 1, listener="submission",
                    reason="rate")
    assert s.get("relabel_connections_refused_total", listener="submission",
                 reason="denied") == 0


def test_handshakes_counted_with_resumption(start, client_ctx):
    """Three mails: at most the first upstream handshake is a full one (the
    upstream check may have made it already: it shares the saved session);
    the client (smtplib, no session reuse) always does a full one."""
    rl, up, port = start()
    for _ in range(3):
        send_mail(rl, client_ctx)
    s = idle(port)
    full = s.get("relabel_tls_handshakes_total", leg="upstream", resumed="no")
    assert full in (0, 1)
    assert s.get("relabel_tls_handshakes_total", leg="upstream", resumed="yes") == 3 - full
    assert s.get("relabel_tls_handshakes_total", leg="client", resumed="no") == 3
    assert s.get("relabel_tls_handshakes_total", leg="client", resumed="yes") == 0
