"""
Deadlines and counted limits that a slow or chatty client cannot stretch:

- the client's TLS handshake must end within handshake_timeout of its start,
  however its bytes trickle in;
- a command line (or an AUTH response line) must be complete within
  command_deadline of its first byte, while time spent waiting for the
  upstream's reply never counts against the client;
- max_junk_commands: NOOP, RSET, VRFY, EXPN, HELP between two accepted
  messages;
- max_upstream_connections: sessions holding an upstream leg at once.

The DATA-phase rule (min_data_rate) is in test_resource_attacks.py beside
the other slow-loris tests.
"""

import socket
import ssl
import time

import harness as h

QUICK = {"command_timeout": "5s", "handshake_timeout": "2s", "command_deadline": "2s",
         "log_level": "info"}


def client_hello(ctx):
    """The bytes of a real TLS ClientHello for smtp.example.com."""
    inc, out = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(inc, out, server_hostname="smtp.example.com")
    try:
        obj.do_handshake()
    except ssl.SSLWantReadError:
        pass
    hello = out.read()
    assert len(hello) > 100 and hello[0] == 0x16, hello[:8]
    return hello


def test_trickled_client_hello_is_cut_at_handshake_timeout(upstream_factory, relabel_factory,
                                                           client_ctx):
    """A ClientHello sent one byte every 0.1 s (each byte well within the
    2 s timeout) is cut 2 s after the connection began, not 2 s after the
    last byte."""
    up = upstream_factory("implicit")
    rl = relabel_factory(up.port, "implicit", relabel_opts=QUICK)
    hello = client_hello(client_ctx)
    s = socket.create_connection((h.LOCALHOST, rl.ports["smtps"]), timeout=h.TIMEOUT)
    t0 = time.monotonic()
    closed_at = None
    for i in range(len(hello)):
        try:
            s.send(hello[i:i + 1])
        except OSError:
            closed_at = time.monotonic()
            break
        time.sleep(0.1)
        if time.monotonic() - t0 > 6:
            break
    if closed_at is None:
        res = h.wait_closed(s, 3)
        assert res is not None, "relabel kept a trickled handshake open"
        closed_at = time.monotonic()
    s.close()
    assert closed_at - t0 < 4.5, closed_at - t0
    m = rl.wait_log(r'session end .*duration=([0-9.]+)s reason="client TLS handshake timeout"')
    assert 1.9 <= float(m.group(1)) < 3.5, m.group(0)
    assert up.recorder.conns == [], "the upstream was contacted for an unfinished handshake"


def test_trickled_auth_response_is_cut(upstream_factory, relabel_factory, client_ctx):
    """The response line of AUTH LOGIN counts like a command line."""
    up = upstream_factory("implicit")
    rl = relabel_factory(up.port, "implicit", relabel_opts=QUICK)
    c = h.open_session(rl, "implicit", client_ctx)
    try:
        r = c.cmd("AUTH LOGIN")
        assert r.code == 334, r
        res = None
        for ch in b"dXNlckBleGFtcGxlLm9yZw==\r\n":
            try:
                c.ls.send(bytes([ch]))
            except OSError:
                break
            time.sleep(0.2)
        res = h.wait_closed(c.ls.sock, 4)
        assert res is not None, "relabel kept a trickled AUTH response open"
        got = res[0]
    finally:
        c.close()
    assert got.startswith(b"421 4.4.2 smtp.example.com Command too slow"), got
    rl.wait_log(r'reason="client command not completed within command_deadline=2000ms"')


def test_waiting_for_a_slow_upstream_does_not_count(upstream_factory, relabel_factory,
                                                    client_ctx):
    """The upstream takes 3 s to answer the end of data (more than
    command_deadline = 2s): the client, which sent everything and waits, is
    not cut, and gets the upstream's 250."""
    up = upstream_factory("implicit", data_delay=3.0)
    rl = relabel_factory(up.port, "implicit", relabel_opts=QUICK)
    c = h.open_session(rl, "implicit", client_ctx)
    try:
        assert c.auth_plain().code == 235
        t0 = time.monotonic()
        r = c.send_message(b"Subject: slow upstream\r\n\r\nhello\r\n")
        assert r.code == 250, r
        assert time.monotonic() - t0 >= 2.9
        assert c.cmd("NOOP").code == 250
        assert c.cmd("QUIT").code == 221
    finally:
        c.close()
    assert len(up.recorder.wait_messages(1)) == 1


def test_complete_commands_slower_than_the_deadline_are_fine(upstream_factory, relabel_factory,
                                                              client_ctx):
    """The deadline is per line: whole commands 2.5 s apart (each within
    command_timeout) keep the session, however long it lasts."""
    up = upstream_factory("implicit")
    rl = relabel_factory(up.port, "implicit", relabel_opts=QUICK)
    c = h.open_session(rl, "implicit", client_ctx)
    try:
        for _ in range(2):
            time.sleep(2.5)
            assert c.cmd("NOOP").code == 250
        assert c.cmd("QUIT").code == 221
    finally:
        c.close()


def test_junk_commands_limit(upstream_factory, relabel_factory, client_ctx):
    """max_junk_commands = 4: the fifth NOOP/RSET/HELP/VRFY gets 421 4.7.0
    and the session closes; an accepted message starts the count again."""
    up = upstream_factory("implicit")
    rl = relabel_factory(up.port, "implicit", relabel_opts=dict(QUICK, max_junk_commands="4"))
    c = h.open_session(rl, "implicit", client_ctx)
    try:
        assert c.auth_plain().code == 235
        for verb in ("NOOP", "RSET", "NOOP", "RSET"):
            assert c.cmd(verb).code == 250
        r = c.send_message(b"Subject: resets the count\r\n\r\nx\r\n")
        assert r.code == 250, r
        for verb in ("NOOP", "RSET", "NOOP", "NOOP"):
            assert c.cmd(verb).code == 250
        r = c.cmd("NOOP")
        assert r.code == 421 and r.raw.startswith(b"421 4.7.0 smtp.example.com"), r
        assert c.closed()
    finally:
        c.close()
    rl.wait_log(r'session end .*reason="too many commands without mail \(max_junk_commands\)"')
    assert len(up.messages) == 1


def test_junk_limit_before_tls(upstream_factory, relabel_factory, client_ctx):
    """The same count on a STARTTLS listener before TLS (answered locally)."""
    up = upstream_factory("implicit")
    rl = relabel_factory(up.port, "implicit", relabel_opts=dict(QUICK, max_junk_commands="3"))
    c = h.Client(rl.ports["submission"], client_ctx)
    try:
        for _ in range(3):
            assert c.cmd("NOOP").code == 250
        r = c.cmd("NOOP")
        assert r.code == 421, r
        assert c.closed()
    finally:
        c.close()
    assert up.recorder.conns == []


def test_max_upstream_connections(upstream_factory, relabel_factory, client_ctx):
    """max_upstream_connections = 1: while one session holds the upstream,
    a second gets 421 4.3.2 at its first command and nothing reaches the
    upstream for it; once the first ends, the next session is served."""
    up = upstream_factory("implicit")
    rl = relabel_factory(up.port, "implicit",
                         relabel_opts=dict(QUICK, max_upstream_connections="1",
                                           command_timeout="30s"))
    a = h.open_session(rl, "implicit", client_ctx)
    try:
        assert a.auth_plain().code == 235
        b = h.Client(rl.ports["smtps"], client_ctx, tls="implicit")
        try:
            r = b.ehlo()
            assert r.code == 421 and r.raw.startswith(b"421 4.3.2 smtp.example.com Too busy"), r
            assert b.closed()
        finally:
            b.close()
        rl.wait_log(r'too many upstream connections \(max_upstream_connections=1\)')
        assert len(up.recorder.conns) == 1
        r = a.send_message(b"Subject: first\r\n\r\nstill served\r\n")
        assert r.code == 250, r
        assert a.cmd("QUIT").code == 221
    finally:
        a.close()
    h.wait_for(up.recorder.all_closed, what="first upstream session closed")

    def served():
        try:
            c = h.open_session(rl, "implicit", client_ctx)
        except (AssertionError, OSError):
            return False  # still refused: the first session is not gone yet
        try:
            return c.auth_plain().code == 235
        finally:
            c.close()
    h.wait_for(served, what="a new session served after the first ended")
