"""
Resilient upstream connections: every address of a name in turn, a shared
resolution cache, broken addresses skipped, fallback ports (with the same
verification), and a fresh upstream leg after a failed AUTH.

Name resolution with a dead address first: relabel runs inside a private
mount namespace (`unshare -m`, which needs root or user namespaces) where a
temporary hosts file is bind-mounted over /etc/hosts, for relabel's process
only; the network is the host's, so everything stays on loopback.  There
the upstream name resolves to ::1 and 127.0.0.1 (glibc sorts ::1 first,
RFC 6724), and the fake upstream listens on 127.0.0.1 only: the first
address refuses, the second answers.  Without unshare the test is skipped.
"""

import http.client
import os
import re
import shutil
import subprocess

import pytest

import harness as h

UPSTREAM_NAME = "smtp.resilience.invalid"


def metric(port, name, upstream="test"):
    conn = http.client.HTTPConnection(h.LOCALHOST, port, timeout=h.TIMEOUT)
    try:
        conn.request("GET", "/metrics")
        body = conn.getresponse().read().decode()
    finally:
        conn.close()
    m = re.search(rf'^{name}{{upstream="{upstream}"}} (\d+)', body, re.M)
    assert m, (name, body)
    return int(m.group(1))


def deliver(c, tag):
    body = f"Subject: {tag}\r\n\r\n{tag}\r\n".encode()
    r = c.send_message(body)
    assert r.code == 250, r
    return body


def hosts_wrapper(tmp_path):
    """A command prefix running relabel with a private /etc/hosts."""
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("needs root and unshare(1) for a private /etc/hosts")
    hosts = tmp_path / "hosts"
    hosts.write_text(f"127.0.0.1 localhost\n::1 {UPSTREAM_NAME}\n127.0.0.1 {UPSTREAM_NAME}\n")
    probe = subprocess.run(["unshare", "-m", "sh", "-c",
                            f"mount --bind {hosts} /etc/hosts && getent ahosts {UPSTREAM_NAME}"],
                           capture_output=True, timeout=h.TIMEOUT)
    if probe.returncode != 0:
        pytest.skip(f"cannot bind-mount a hosts file: {probe.stderr!r}")
    order = [line.split()[0] for line in probe.stdout.decode().splitlines() if "STREAM" in line]
    assert order[:2] == ["::1", "127.0.0.1"], order  # the dead address comes first
    return ["unshare", "-m", "sh", "-c", f'mount --bind {hosts} /etc/hosts && exec "$@"', "sh"]


def test_dead_address_first_then_live_cached_and_skipped(upstream_factory, relabel_factory,
                                                          client_ctx, tmp_path):
    wrapper = hosts_wrapper(tmp_path)
    up = upstream_factory("implicit")
    mport = h.free_port()
    rl = relabel_factory(up.port, "implicit", wrapper=wrapper,
                         upstream_opts={"host": UPSTREAM_NAME},
                         metrics_opts={"listen": f"{h.LOCALHOST}:{mport}"})

    c = h.open_session(rl, "implicit", client_ctx)
    deliver(c, "first")
    c.close()
    # The first session tried ::1 (refused), then 127.0.0.1.  (The upstream
    # check may have looked the name up before it, filling the cache.)
    rl.wait_log(rf"upstream resolved( \(cached\))? host={UPSTREAM_NAME} addresses=2")
    rl.wait_log(rf"upstream attempt failed peer=\[::1\]:{up.port} state=CONNECT")
    rl.wait_log(rf"upstream connected peer=127\.0\.0\.1:{up.port}")
    assert "skipping broken address" not in rl.log

    c = h.open_session(rl, "implicit", client_ctx)
    deliver(c, "second")
    c.close()
    # The second one took the cached answer and skipped the broken address.
    rl.wait_log(rf"upstream resolved \(cached\) host={UPSTREAM_NAME} addresses=2")
    rl.wait_log(rf"upstream skipping broken address peer=\[::1\]:{up.port}")
    assert len(re.findall(r"upstream attempt failed", rl.log)) == 1, rl.log
    assert len(up.recorder.wait_messages(2)) == 2
    assert metric(mport, "relabel_upstream_skipped_addresses_total") == 1
    assert metric(mport, "relabel_upstream_fallbacks_total") == 0


def test_fallback_from_refused_465_to_587_starttls(upstream_factory, relabel_factory, client_ctx):
    dead = h.free_port()  # nothing listens: refused
    up = upstream_factory("starttls")
    mport = h.free_port()
    rl = relabel_factory(dead, "implicit", upstream_opts={"fallback": f"{up.port} starttls"},
                         metrics_opts={"listen": f"{h.LOCALHOST}:{mport}"})
    c = h.open_session(rl, "implicit", client_ctx)
    assert c.auth_plain().code == 235
    body = deliver(c, "fallback")
    (m,) = up.recorder.wait_messages(1)
    assert m.data == body and m.tls and m.auth_user == h.USER
    rl.wait_log(rf"upstream fallback upstream=test port={up.port} tls=starttls "
                rf"after=\"connect to 127\.0\.0\.1:{dead}: ")
    assert metric(mport, "relabel_upstream_fallbacks_total") == 1
    # The STARTTLS leg really was upgraded before anything but EHLO went over it.
    verbs = up.recorder.verbs()
    assert verbs[:2] == ["EHLO", "STARTTLS"], verbs
    assert not c.provider_leaks()


def test_upstream_check_uses_the_fallback_port(upstream_factory, relabel_factory):
    """/readyz follows the sessions: a dead primary port with a live fallback is ready."""
    dead = h.free_port()
    up = upstream_factory("starttls")
    mport = h.free_port()
    relabel_factory(dead, "implicit", upstream_opts={"fallback": f"{up.port} starttls"},
                    metrics_opts={"listen": f"{h.LOCALHOST}:{mport}"})

    def ready():
        conn = http.client.HTTPConnection(h.LOCALHOST, mport, timeout=h.TIMEOUT)
        try:
            conn.request("GET", "/readyz")
            return conn.getresponse().status == 200
        finally:
            conn.close()

    h.wait_for(ready, what="/readyz 200 through the fallback port")
    assert up.recorder.saw("STARTTLS")


def test_fallback_port_with_wrong_certificate_is_refused(upstream_factory, relabel_factory,
                                                         client_ctx):
    dead = h.free_port()
    bad = upstream_factory("starttls", cert="wrongname")
    rl = relabel_factory(dead, "implicit", upstream_opts={"fallback": f"{bad.port} starttls"})
    c = h.Client(rl.ports["smtps"], client_ctx, tls="implicit")
    r = c.ehlo()
    assert r.code == 421 and b"4.7.0" in r.raw, r
    assert c.closed()
    rl.wait_log(r"upstream failed state=TLS2 .*reason=\"upstream: |upstream failed state=TLS2")
    assert not bad.messages
    assert not bad.recorder.saw("MAIL") and not bad.recorder.saw("AUTH")


def test_verify_failure_on_primary_never_falls_back(upstream_factory, relabel_factory,
                                                    client_ctx):
    bad = upstream_factory("implicit", cert="wrongname")
    good = upstream_factory("starttls")
    rl = relabel_factory(bad.port, "implicit", upstream_opts={"fallback": f"{good.port} starttls"})
    c = h.Client(rl.ports["smtps"], client_ctx, tls="implicit")
    r = c.ehlo()
    assert r.code == 421 and b"4.7.0" in r.raw, r
    assert c.closed()
    rl.wait_log(r"upstream failed state=TLS ")
    assert "upstream fallback" not in rl.log
    assert good.recorder.conns == [], "a failed verification must not lead to the fallback port"


@pytest.mark.parametrize("up_tls", ["implicit", "starttls"])
@pytest.mark.parametrize("close_after_535", [True, False], ids=["mailgun-closes", "stays-open"])
def test_auth_failure_then_retry_on_same_connection(upstream_factory, relabel_factory, client_ctx,
                                                    up_tls, close_after_535):
    up = upstream_factory(up_tls, close_after_535=close_after_535)
    rl = relabel_factory(up.port, up_tls)
    c = h.open_session(rl, "implicit", client_ctx)
    r = c.cmd("AUTH PLAIN " + h.plain_token(h.USER, "wrong"))
    assert r.code == 535 and r.raw.startswith(b"535 5.7.8"), r
    r = c.auth_plain()
    assert r.code == 235, r
    body = deliver(c, "after-retry")
    (m,) = up.recorder.wait_messages(1)
    assert m.data == body and m.auth_user == h.USER
    assert c.cmd("QUIT").code == 221
    if close_after_535:
        assert up.recorder.auth_closes == 1
    rl.wait_log(r"upstream leg replaced after a failed AUTH")
    # Two upstream connections; the second heard the client's own EHLO
    # again before its AUTH.
    conns = [conn for conn in up.recorder.conns if conn.commands]
    assert len(conns) == 2, [[cmd.line for cmd in conn.commands] for conn in conns]
    second = [cmd.line for cmd in conns[1].commands if cmd.tls]
    assert second[0] == b"EHLO client.e2e.test\r\n", second
    assert second[1].startswith(b"AUTH PLAIN "), second
    assert not c.provider_leaks()


def test_auth_failure_twice_then_success_starttls_client(upstream_factory, relabel_factory,
                                                         client_ctx):
    up = upstream_factory("implicit")
    rl = relabel_factory(up.port, "implicit")
    c = h.open_session(rl, "starttls", client_ctx)
    assert c.cmd("AUTH LOGIN").code == 334
    assert c.cmd(h.b64(h.USER)).code == 334
    assert c.cmd(h.b64("wrong")).code == 535
    assert c.cmd("AUTH PLAIN " + h.plain_token(h.USER, "wrong again")).code == 535
    assert c.auth_plain().code == 235
    deliver(c, "third-time")
    assert len(up.recorder.wait_messages(1)) == 1
    assert up.recorder.auth_closes == 2


@pytest.mark.parametrize("value,msg", [
    ("587", "expected PORT MODE"),
    ("587 plain", "expected PORT MODE"),
    ("0 starttls", "expected PORT MODE"),
    ("587 starttls, 587 implicit", "listed twice"),
    ("2465 starttls", "upstream's own port"),
    ("1 starttls, 2 starttls, 3 starttls, 4 starttls, 5 starttls", "at most 4"),
])
def test_bad_fallback_is_reported_at_its_line(certs, relabel_binary, tmp_path, value, msg):
    cfg = h.relabel_config(certs, 2465, "implicit", {"smtps": 2001, "submission": 2002},
                           upstream_opts={"fallback": value})
    path = tmp_path / "relabel.ini"
    path.write_text(cfg.text())
    res = h.run_check(relabel_binary, str(path))
    out = (res.stdout + res.stderr).decode()
    assert res.returncode != 0, out
    line = cfg.line_of('[upstream "test"]', "fallback")
    assert f"{path}:{line}: " in out and msg in out, out
