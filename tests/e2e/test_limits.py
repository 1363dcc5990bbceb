"""
Limits and timeouts: SIZE at MAIL and in DATA, command and handshake
timeouts, the error limit, BDAT, max_line at the boundary, and a client that
pipelines without reading its replies.
"""

import os
import select
import socket
import ssl
import time

import pytest

import harness as h

FAST = {"command_timeout": "1s", "handshake_timeout": "1s", "data_timeout": "2s"}


def quit_quietly(c):
    try:
        c.cmd("QUIT")
    except (h.ConnectionClosed, OSError, AssertionError):
        pass
    c.close()


def mail_lines(recorder):
    return [x.line for x in recorder.commands if x.verb == "MAIL"]


# --------------------------------------------------------------------------
# SIZE (RFC 1870) against max_message_size

@pytest.mark.relabel_opts(upstream_opts={"max_message_size": "1M"})
def test_mail_size_over_limit_refused_locally(relay_ii):
    c = relay_ii.session()
    assert h.capabilities(c.replies[-1]).get("SIZE") == str(1024 * 1024)
    assert c.auth_plain().code == 235
    r = c.cmd("MAIL FROM:<a@b> SIZE=2000000")
    assert r.code == 552 and r.raw.startswith(b"552 5.3.4"), r
    # the session goes on, and a declared size within the limit is relayed
    r = c.cmd("MAIL FROM:<a@b> SIZE=1000")
    assert r.code == 250, r
    assert c.cmd("RCPT TO:<r@example.org>").code == 250
    assert c.cmd("DATA").code == 354
    c.send(h.stuff(b"Subject: small\r\n\r\nsmall enough\r\n"))
    assert c.read_reply().code == 250
    (m,) = relay_ii.upstream.recorder.wait_messages(1)
    assert m.mail_from == "a@b" and m.data == b"Subject: small\r\n\r\nsmall enough\r\n"
    assert c.cmd("QUIT").code == 221
    h.wait_for(relay_ii.upstream.recorder.all_closed, what="upstream session end")
    # the upstream saw the second MAIL only
    assert mail_lines(relay_ii.upstream.recorder) == [b"MAIL FROM:<a@b> SIZE=1000\r\n"]
    assert not c.provider_leaks()


@pytest.mark.relabel_opts(upstream_opts={"max_message_size": "1M"})
def test_mail_size_exactly_at_limit_is_relayed(relay_ii):
    c = relay_ii.session()
    assert c.auth_plain().code == 235
    r = c.cmd(f"MAIL FROM:<a@b> SIZE={1024 * 1024}")
    assert r.code == 250, r
    assert mail_lines(relay_ii.upstream.recorder) == [f"MAIL FROM:<a@b> SIZE={1024 * 1024}\r\n".encode()]


@pytest.mark.relabel_opts(upstream_opts={"max_message_size": "1M"}, relabel_opts=FAST)
def test_body_over_limit_without_size_is_refused(relay_ii):
    c = relay_ii.session()
    assert c.auth_plain().code == 235
    assert c.cmd("MAIL FROM:<big@example.net>").code == 250
    assert c.cmd("RCPT TO:<r@example.org>").code == 250
    assert c.cmd("DATA").code == 354
    body = h.make_body(1024 * 1024 + 64 * 1024, b"too big")
    r = None
    try:
        c.send(h.stuff(body))
        r = c.read_reply()
    except (h.ConnectionClosed, OSError):
        pass
    assert r is not None, "connection closed without a reply to the oversized message"
    assert r.code == 552, r
    assert not c.provider_leaks()
    c.close()
    h.wait_for(relay_ii.upstream.recorder.all_closed, what="upstream session end")
    assert relay_ii.upstream.messages == []


# --------------------------------------------------------------------------
# timeouts

@pytest.mark.parametrize("listener", ["smtps", "submission"])
def test_idle_client_gets_421_after_command_timeout(upstream_factory, relabel_factory, client_ctx,
                                                    listener):
    up = upstream_factory("implicit")
    rl = relabel_factory(up.port, "implicit", relabel_opts=FAST)
    c = h.Client(rl.ports[listener], client_ctx, tls="implicit" if listener == "smtps" else None)
    try:
        assert c.greeting.code == 220
        t0 = time.monotonic()
        c.ls.settimeout(5)
        r = c.read_reply()
        elapsed = time.monotonic() - t0
        assert r.code == 421 and r.raw.startswith(b"421 4.4.2 smtp.example.com"), r
        assert 0.7 <= elapsed < 4, elapsed
        assert c.closed(timeout=5)
        assert not c.provider_leaks()
    finally:
        c.close()
    rl.wait_log(r"session end .*reason=\"client timeout")


def test_silent_tcp_client_closed_after_handshake_timeout(upstream_factory, relabel_factory):
    up = upstream_factory("implicit")
    rl = relabel_factory(up.port, "implicit", relabel_opts=FAST)
    s = socket.create_connection((h.LOCALHOST, rl.ports["smtps"]), timeout=6)
    try:
        t0 = time.monotonic()
        got = b""
        try:
            while True:
                chunk = s.recv(4096)
                if not chunk:
                    break
                got += chunk
        except ConnectionResetError:
            pass
        elapsed = time.monotonic() - t0
    finally:
        s.close()
    assert got == b"", f"relabel sent {got!r} before any TLS handshake"
    assert 0.7 <= elapsed < 5, elapsed
    rl.wait_log(r"session end .*listener=smtps.*reason=\"client TLS handshake timeout\"")
    # a bare TCP connection never turns into a connection to the provider
    time.sleep(0.2)
    assert up.recorder.conns == [], up.recorder.conns


# --------------------------------------------------------------------------
# errors

def read_421_after_errors(c):
    """The 421 may come on its own or as the answer to the next command."""
    c.ls.settimeout(0.3)
    try:
        return c.read_reply()
    except (socket.timeout, TimeoutError):
        pass
    c.ls.settimeout(5)
    c.send(b"NOOP\r\n")
    return c.read_reply()


@pytest.mark.relabel_opts(relabel_opts={"max_errors": "3"})
def test_error_limit_before_tls(relay_st):
    c = relay_st.connect()
    assert c.ehlo().code == 250
    for _ in range(3):
        r = c.cmd("MAIL FROM:<a@example.net>")
        assert r.code == 530, r
    r = read_421_after_errors(c)
    assert r.code == 421 and r.raw.startswith(b"421 4.7.0 smtp.example.com"), r
    assert c.closed(timeout=5)
    assert relay_st.upstream.recorder.commands == []


@pytest.mark.relabel_opts(relabel_opts={"max_errors": "3"})
def test_error_limit_after_tls_counts_upstream_errors(relay_ii):
    c = relay_ii.session()
    for _ in range(3):
        r = c.cmd("XYZZY")
        assert 500 <= r.code < 600, r
    r = read_421_after_errors(c)
    assert r.code == 421 and r.raw.startswith(b"421 4.7.0 smtp.example.com"), r
    assert c.closed(timeout=5)
    assert not c.provider_leaks()


@pytest.mark.relabel_opts(relabel_opts={"max_errors": "3"})
def test_errors_below_limit_keep_session(relay_st):
    c = relay_st.connect()
    assert c.ehlo().code == 250
    for _ in range(2):
        assert c.cmd("MAIL FROM:<a@example.net>").code == 530
    c.starttls()
    c.ehlo()
    assert c.auth_plain().code == 235
    assert c.send_message(b"two errors are fine\r\n").code == 250
    relay_st.upstream.recorder.wait_messages(1)


def test_bdat_after_tls_is_502_and_closes(relay):
    c = relay.session()
    assert c.auth_plain().code == 235
    assert c.cmd("MAIL FROM:<a@example.net>").code == 250
    assert c.cmd("RCPT TO:<b@example.org>").code == 250
    c.send(b"BDAT 10 LAST\r\n0123456789")
    r = c.read_reply()
    assert r.code == 502, r
    assert c.closed(timeout=5)
    h.wait_for(relay.upstream.recorder.all_closed, what="upstream session end")
    assert not relay.upstream.recorder.saw("BDAT")
    assert relay.upstream.messages == []


# --------------------------------------------------------------------------
# max_line at the boundary (CRLF included)

@pytest.mark.parametrize("max_line", [512, 1000])
def test_max_line_boundary(scripted_factory, relabel_factory, client_ctx, max_line):
    up = scripted_factory(tls="implicit")
    rl = relabel_factory(up.port, "implicit", relabel_opts={"max_line": str(max_line)})
    c = h.open_session(rl, "implicit", client_ctx)
    try:
        fits = b"NOOP " + b"x" * (max_line - 2 - 5)
        assert len(fits) + 2 == max_line
        r = c.cmd(fits)
        assert r.code == 250, r
        assert fits + b"\r\n" in [x.line for x in up.recorder.commands]
        over = b"NOOP " + b"y" * (max_line - 1 - 5)
        r = c.cmd(over)
        assert r.code == 500 and r.raw.startswith(b"500 5.5.2"), r
        assert not any(b"yyyy" in x.line for x in up.recorder.commands)
        assert c.cmd("NOOP").code == 250  # the session goes on
        assert c.cmd("QUIT").code == 221
    finally:
        c.close()


# --------------------------------------------------------------------------
# a client that never reads

CRLF = b"\r\n"


def pipeline_without_reading(sock, payload, expect_replies, stall=1.0, timeout=30.0):
    """
    Sends payload without reading until everything is sent or nothing moved
    for `stall` seconds; returns (bytes sent in that phase, callback that
    reads the rest).  The callback sends what is left while reading, and
    returns the reply lines.
    """
    sock.setblocking(False)
    sent = 0
    last = time.monotonic()
    while sent < len(payload) and time.monotonic() - last < stall:
        _, w, _ = select.select([], [sock], [], 0.1)
        if not w:
            continue
        try:
            n = sock.send(payload[sent: sent + 65536])
        except (ssl.SSLWantWriteError, ssl.SSLWantReadError, BlockingIOError):
            time.sleep(0.01)
            continue
        if n:
            sent += n
            last = time.monotonic()
    first_phase = sent

    def drain():
        nonlocal sent
        lines = []
        tail = b""
        deadline = time.monotonic() + timeout
        while len(lines) < expect_replies:
            if time.monotonic() > deadline:
                raise AssertionError(f"got {len(lines)} of {expect_replies} replies")
            pending = isinstance(sock, ssl.SSLSocket) and sock.pending()
            want_w = [sock] if sent < len(payload) else []
            r, w, _ = select.select([sock], want_w, [], 0.2) if not pending else ([sock], [], [])
            if r:
                try:
                    chunk = sock.recv(65536)
                except (ssl.SSLWantReadError, ssl.SSLWantWriteError, BlockingIOError):
                    chunk = None
                if chunk == b"":
                    raise AssertionError(f"closed after {len(lines)} replies")
                if chunk:
                    parts = (tail + chunk).split(CRLF)
                    tail = parts.pop()
                    lines += parts
            if w:
                try:
                    sent += sock.send(payload[sent: sent + 65536])
                except (ssl.SSLWantWriteError, ssl.SSLWantReadError, BlockingIOError):
                    pass
        return lines

    return first_phase, drain


N_NOOPS = 20000


@pytest.mark.parametrize("where", ["pre-tls", "relay"])
def test_pipelined_noops_without_reading(upstream_factory, relabel_factory, client_ctx, where):
    up = upstream_factory("implicit")
    rl = relabel_factory(up.port, "implicit",
                         relabel_opts={"log_level": "info", "command_timeout": "20s",
                                       "max_junk_commands": "1000000"})
    # A small receive buffer: relabel's replies back up quickly, so it has
    # to stop reading (backpressure) instead of queueing 20000 replies.
    if where == "pre-tls":
        c = h.Client(rl.ports["submission"], client_ctx, rcvbuf=4096)
    else:
        c = h.Client(rl.ports["smtps"], client_ctx, tls="implicit", rcvbuf=4096)
        assert c.ehlo().code == 250
        assert c.auth_plain().code == 235
    rss_before = rl.rss_kb()
    try:
        sent, drain = pipeline_without_reading(c.ls.sock, b"NOOP\r\n" * N_NOOPS, N_NOOPS)
        assert sent > 0
        rss_blocked = rl.rss_kb()
        assert rl.proc.poll() is None, "relabel died"
        lines = drain()
        rss_after = rl.rss_kb()
        print(f"{where}: sent {sent} bytes before stalling; RSS kB {rss_before} -> "
              f"{rss_blocked} -> {rss_after}")
        assert len(lines) == N_NOOPS
        assert all(l.startswith(b"250") for l in lines), [l for l in lines if not l.startswith(b"250")][:5]
        if not os.environ.get("RELABEL_SANITIZED"):
            assert max(rss_blocked, rss_after) < 40 * 1024, (rss_blocked, rss_after)
    finally:
        c.close()
    assert rl.proc.poll() is None, "relabel died"
    # a new session still works
    c2 = h.open_session(rl, "implicit", client_ctx)
    try:
        assert c2.auth_plain().code == 235
        assert c2.send_message(b"after the flood\r\n").code == 250
        assert any(m.data == b"after the flood\r\n" for m in up.recorder.wait_messages(1))
        assert c2.cmd("QUIT").code == 221
    finally:
        c2.close()
