"""
Resource attacks: slow-loris, idle connections, a client that never reads,
100 000 pipelined NOOPs, a 10 MB line, a 1 MB AUTH line, 10 000 RCPTs, a
burst of 1000 connections, a TLS handshake flood.

Each test samples relabel's RSS (VmRSS) and open file descriptors before,
during (peak) and after the attack, asserts a bound on the peak (normal
build only: AddressSanitizer's quarantine and shadow memory make RSS
meaningless, see test_data.py), asserts that the descriptors return to
within a few of the baseline, checks that another client is served while
or after the attack runs, and prints the measured memory per session:

    (peak RSS - baseline RSS) / sessions

Timeouts: the idle timeouts (command_timeout, data_timeout,
handshake_timeout) restart with every byte; the slow-loris tests check the
deadlines that do not (command_deadline, min_data_rate, the handshake).
"""

import os
import select
import socket
import ssl
import threading
import time

import pytest

import harness as h

SANITIZED = bool(os.environ.get("RELABEL_SANITIZED"))
RSS_LIMIT_KB = 64 * 1024  # peak RSS of the normal build under any of these attacks
FD_SLACK = 3

# Every attack here comes from 127.0.0.1, so the per-address limits are
# raised (or off): these tests measure what each session costs and whether
# the daemon stays up, not the limits themselves (test_connection_limits.py,
# test_access.py and test_deadlines.py check those).
FAST = {"command_timeout": "2s", "data_timeout": "2s", "handshake_timeout": "2s",
        "command_deadline": "3s", "upstream_timeout": "10s", "log_level": "info",
        "max_connections_per_ip": "5000", "max_connection_rate": "0",
        "max_junk_commands": "1000000"}


# --------------------------------------------------------------------------
# measuring

class Sampler:
    """Samples relabel's VmRSS (kB) and fd count every 20 ms in a thread."""

    def __init__(self, rl):
        self.rl = rl
        self.base_rss = rl.rss_kb()
        self.base_fds = rl.fd_count()
        self.peak_rss = self.base_rss
        self.peak_fds = self.base_fds
        self._done = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _sample(self):
        try:
            self.peak_rss = max(self.peak_rss, self.rl.rss_kb())
            self.peak_fds = max(self.peak_fds, self.rl.fd_count())
        except (OSError, ValueError):
            pass

    def _run(self):
        while not self._done.wait(0.02):
            self._sample()

    def __enter__(self):
        self._t.start()
        return self

    def __exit__(self, *exc):
        self._done.set()
        self._t.join(5)
        self._sample()

    def report(self, what, sessions):
        per = (self.peak_rss - self.base_rss) / max(1, sessions)
        print(f"\n[{what}] RSS baseline {self.base_rss} kB, peak {self.peak_rss} kB, "
              f"after {self.rl.rss_kb()} kB; fds baseline {self.base_fds}, peak {self.peak_fds}, "
              f"after {self.rl.fd_count()}; {sessions} session(s): {per:.1f} kB per session")
        return per

    def assert_rss_bound(self, limit_kb=RSS_LIMIT_KB):
        if SANITIZED:
            return
        assert self.peak_rss < limit_kb, f"relabel's RSS peaked at {self.peak_rss} kB"

    def assert_fds_back(self, timeout=10):
        try:
            h.wait_for(lambda: self.rl.fd_count() <= self.base_fds + FD_SLACK, timeout=timeout,
                       interval=0.05, what="fds back to baseline")
        except AssertionError:
            raise AssertionError(f"relabel holds {self.rl.fd_count()} fds, baseline "
                                 f"{self.base_fds}")


def normal_session(rl, ctx, up=None, mode="implicit"):
    """A complete, ordinary session: AUTH and one message, 250 expected."""
    c = h.open_session(rl, mode, ctx)
    try:
        assert c.auth_plain().code == 235
        n = len(up.messages) if up else 0
        r = c.send_message(b"Subject: still here\r\n\r\nserved during an attack\r\n")
        assert r.code == 250, r
        assert c.cmd("QUIT").code == 221
        if up is not None:
            up.recorder.wait_messages(n + 1)
    finally:
        c.close()


def raw_connect(port, rcvbuf=None):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    s.settimeout(h.TIMEOUT)
    s.connect((h.LOCALHOST, port))
    return s


def reset_close(s):
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\0\0\0\0\0\0\0")
    except OSError:
        pass
    s.close()


@pytest.fixture
def env(upstream_factory, relabel_factory):
    up = upstream_factory("implicit")
    rl = relabel_factory(up.port, "implicit", relabel_opts=FAST)
    return up, rl


# --------------------------------------------------------------------------
# slow-loris

def trickle(sock, data, interval):
    for i in range(len(data)):
        sock.send(data[i:i + 1])
        time.sleep(interval)


def test_slowloris_command_phase(env, client_ctx):
    """
    One byte every 0.2 s of a command line: each byte comes well within the
    idle timeout (command_timeout = 2s), but the line must be complete
    within command_deadline (3 s here) of its first byte.  The session ends
    with 421 4.4.2 at the deadline, not when the trickle stops.
    """
    up, rl = env
    with Sampler(rl) as smp:
        c = h.Client(rl.ports["smtps"], client_ctx, tls="implicit")
        sock = c.ls.sock
        sock.send(b"N")
        t0 = time.monotonic()
        try:
            trickle(sock, b"OOP slowly" + b"." * 30 + b"\r\n", 0.2)  # 8.4 s if allowed
        except OSError:
            pass  # relabel closed the connection under the trickle
        res = h.wait_closed(sock, 8)
        assert res is not None, "relabel kept a trickling session open"
        got, _ = res
        c.close()
    assert got.startswith(b"421 4.4.2 smtp.example.com Command too slow"), got
    assert b"250" not in got, got
    smp.report("slow-loris command", 1)
    smp.assert_rss_bound()
    smp.assert_fds_back()
    normal_session(rl, client_ctx, up)
    m = rl.wait_log(r'session end .*duration=([0-9.]+)s reason="client command not completed '
                    r'within command_deadline=3000ms"')
    assert 2.9 <= float(m.group(1)) < 4.5, m.group(0)
    assert time.monotonic() - t0 >= 2.9


def test_slowloris_data_phase(env, client_ctx):
    """
    A message body at one byte every 0.2 s (5 bytes/s), data_timeout = 2s,
    min_data_rate = 500 bytes/s: the message may take 2 s plus 1 s per 500
    bytes received, so the trickle is cut with 421 4.4.2 a little after 2 s,
    and the upstream receives no message.
    """
    up, rl = env
    with Sampler(rl) as smp:
        c = h.open_session(rl, "implicit", client_ctx)
        assert c.auth_plain().code == 235
        c.open_data("slow@example.net", ["r@example.org"])
        sock = c.ls.sock
        try:
            trickle(sock, b"Subject: slow\r\n\r\n" + b"x" * 40, 0.2)  # 11 s if allowed
        except OSError:
            pass
        res = h.wait_closed(sock, 8)
        assert res is not None, "relabel kept a trickling DATA session open"
        got, _ = res
        c.close()
    assert got.startswith(b"421 4.4.2 smtp.example.com Data rate too low"), got
    m = rl.wait_log(r'session end .*duration=([0-9.]+)s reason="client data rate below '
                    r'min_data_rate=500 bytes/s"')
    assert float(m.group(1)) < 6, m.group(0)
    h.wait_for(up.recorder.all_closed, what="upstream session end")
    assert up.messages == []
    smp.report("slow-loris DATA", 1)
    smp.assert_rss_bound()
    smp.assert_fds_back()
    normal_session(rl, client_ctx, up)


def test_slow_but_steady_message_is_delivered(upstream_factory, relabel_factory, client_ctx):
    """A message sent at 40 kB/s, above min_data_rate = 10000 bytes/s, for
    about three times data_timeout (1 s), is delivered: the deadline grows
    with every byte received."""
    up = upstream_factory("implicit")
    rl = relabel_factory(up.port, "implicit",
                         relabel_opts=dict(FAST, data_timeout="1s", min_data_rate="10000"))
    body = b"Subject: steady\r\n\r\n" + b"".join(b"%07d " % i + b"y" * 92 + b"\r\n"
                                                  for i in range(1200))  # 120 kB
    c = h.open_session(rl, "implicit", client_ctx)
    try:
        assert c.auth_plain().code == 235
        c.open_data("steady@example.net", ["r@example.org"])
        t0 = time.monotonic()
        for i in range(0, len(body), 4000):
            c.ls.send(body[i:i + 4000])
            time.sleep(0.1)
        assert time.monotonic() - t0 > 2.5
        c.ls.send(b".\r\n")
        r = c.read_reply()
        assert r.code == 250, r
    finally:
        c.close()
    (m,) = up.recorder.wait_messages(1)
    assert m.data == body


def test_min_data_rate_zero_keeps_idle_timeout_only(upstream_factory, relabel_factory,
                                                    client_ctx):
    """min_data_rate = 0 turns the rule off: a message trickled at 5 bytes/s
    over twice data_timeout is delivered (each byte comes within it)."""
    up = upstream_factory("implicit")
    rl = relabel_factory(up.port, "implicit", relabel_opts=dict(FAST, min_data_rate="0"))
    c = h.open_session(rl, "implicit", client_ctx)
    try:
        assert c.auth_plain().code == 235
        c.open_data("slow@example.net", ["r@example.org"])
        trickle(c.ls.sock, b"Subject: s\r\n\r\nabc\r\n.\r\n", 0.2)  # 4.4 s
        r = c.read_reply()
        assert r.code == 250, r
    finally:
        c.close()
    (m,) = up.recorder.wait_messages(1)
    assert m.data == b"Subject: s\r\n\r\nabc\r\n"


# --------------------------------------------------------------------------
# idle connections

def test_200_idle_connections(env, client_ctx):
    """200 connections greeted on the STARTTLS listener, then silent: every
    one gets 421 and is closed after command_timeout; fds return."""
    up, rl = env
    n = 200
    socks = []
    with Sampler(rl) as smp:
        try:
            for _ in range(n):
                socks.append(raw_connect(rl.ports["submission"]))
            t0 = time.monotonic()
            pending = {s.fileno(): s for s in socks}
            got = {fd: b"" for fd in pending}
            closed = {}
            while pending and time.monotonic() - t0 < 10:
                r, _, _ = select.select(list(pending), [], [], 0.2)
                for fd in r:
                    try:
                        chunk = pending[fd].recv(4096)
                    except OSError:
                        chunk = b""
                    if chunk:
                        got[fd] += chunk
                    else:
                        closed[fd] = time.monotonic() - t0
                        del pending[fd]
            assert not pending, f"{len(pending)} idle connections still open after 10 s"
        finally:
            for s in socks:
                s.close()
    for fd, data in got.items():
        assert data.startswith(b"220 smtp.example.com"), data
        assert b"\r\n421 4.4.2 smtp.example.com" in data, data
    slowest = max(closed.values())
    assert 1.5 <= min(closed.values()) and slowest < 6, (min(closed.values()), slowest)
    smp.report("200 idle connections", n)
    smp.assert_rss_bound()
    assert smp.peak_fds >= smp.base_fds + n - 5, "the connections were not all open at once"
    smp.assert_fds_back()
    assert up.recorder.conns == []  # plaintext idlers never reach the provider
    normal_session(rl, client_ctx, up)


# --------------------------------------------------------------------------
# a client that never reads

def test_client_never_reads(env, client_ctx):
    """
    A client with a 4 KB receive buffer pipelines 300 000 EHLOs (2.4 MB; 30
    MB of replies, far more than the kernel's socket buffers hold) and never
    reads.  relabel must stop reading it once its write queue is full: RSS
    stays bounded and another client is served meanwhile.
    """
    up, rl = env
    with Sampler(rl) as smp:
        c = h.Client(rl.ports["submission"], client_ctx, rcvbuf=4096)
        sock = c.ls.sock
        sock.setblocking(False)
        burst = b"EHLO x\r\n" * 300000
        sent = 0
        t0 = time.monotonic()
        stuck_since = None
        while sent < len(burst) and time.monotonic() - t0 < 8:
            try:
                sent += sock.send(burst[sent:sent + 65536])
                stuck_since = None
            except BlockingIOError:
                stuck_since = stuck_since or time.monotonic()
                if time.monotonic() - stuck_since > 1.0:
                    break  # relabel stopped reading us: backpressure works
                time.sleep(0.01)
            except OSError:
                break
        during = rl.rss_kb()
        normal_session(rl, client_ctx, up)  # served while the attacker sits there
        sock.close()
    m = rl.wait_log(r"session end client=\S+ listener=submission .* in=(\d+) out=(\d+)")
    read_in, wrote = int(m.group(1)), int(m.group(2))
    print(f"non-reading client: the kernel took {sent} of {len(burst)} bytes; relabel read "
          f"{read_in} and wrote {wrote} before it stopped reading")
    assert read_in < len(burst) // 2, "relabel kept reading a client that reads no replies"
    smp.report("client never reads", 1)
    smp.assert_rss_bound(min(RSS_LIMIT_KB, smp.base_rss + 16 * 1024))
    smp.assert_fds_back()
    assert during > 0


# --------------------------------------------------------------------------
# 100 000 pipelined NOOPs

def pipeline(c, lines, timeout=20):
    """
    Sends lines in one burst while reading the replies, in a single thread
    (an SSL socket must not be used by two threads at once); returns the
    reply codes in order and a list of problems.
    """
    sock = c.ls.sock
    data = b"".join(lines)
    err = []
    codes = []
    buf = bytearray(c.ls.buf)
    c.ls.buf.clear()
    sock.setblocking(False)
    sent = 0
    chunk = None
    t0 = time.monotonic()

    def parse():
        while True:
            i = buf.find(b"\r\n")
            if i < 0:
                return
            line = bytes(buf[:i])
            del buf[:i + 2]
            if line[3:4] != b"-":
                codes.append(int(line[:3]))

    try:
        while len(codes) < len(lines):
            if time.monotonic() - t0 > timeout:
                err.append(f"timeout: {len(codes)} replies, {sent} of {len(data)} bytes sent")
                break
            want_write = sent < len(data)
            r, w, _ = select.select([sock], [sock] if want_write else [], [], 0.5)
            if want_write and (w or r):
                if chunk is None:
                    chunk = data[sent:sent + 16384]
                try:
                    n = sock.send(chunk)
                    sent += n
                    chunk = None if n == len(chunk) else chunk[n:]
                except (ssl.SSLWantWriteError, ssl.SSLWantReadError, BlockingIOError):
                    pass
            try:
                got = sock.recv(1 << 20)
            except (ssl.SSLWantReadError, ssl.SSLWantWriteError, BlockingIOError):
                continue
            if not got:
                err.append(f"closed after {len(codes)} replies")
                break
            buf += got
            parse()
    except OSError as e:
        err.append(repr(e))
    finally:
        sock.setblocking(True)
        c.ls.settimeout(h.TIMEOUT)
    return codes, err


@pytest.mark.parametrize("where", ["pre-tls", "relay"])
def test_100k_pipelined_noops(scripted_factory, relabel_factory, client_ctx, where):
    """100 000 NOOPs in one burst: 100 000 250 replies, in order, memory bounded.
    pre-tls: answered by relabel itself; relay: each relayed to the upstream."""
    up = scripted_factory(tls="implicit")
    rl = relabel_factory(up.port, "implicit", relabel_opts=FAST)
    n = 100000
    with Sampler(rl) as smp:
        if where == "pre-tls":
            c = h.Client(rl.ports["submission"], client_ctx)
        else:
            c = h.open_session(rl, "implicit", client_ctx)
        t0 = time.monotonic()
        codes, err = pipeline(c, [b"NOOP\r\n"] * n, timeout=25)
        elapsed = time.monotonic() - t0
        assert not err, err
        assert len(codes) == n, f"{len(codes)} replies to {n} NOOPs; log:\n{rl.log[-1500:]}"
        assert set(codes) == {250}, sorted(set(codes))
        assert c.cmd("QUIT").code == 221
        c.close()
    print(f"{n} NOOPs ({where}) in {elapsed:.1f}s")
    smp.report(f"100k NOOPs {where}", 1)
    smp.assert_rss_bound(min(RSS_LIMIT_KB, smp.base_rss + 16 * 1024))
    smp.assert_fds_back()
    if where == "relay":
        assert up.recorder.verbs().count("NOOP") == n


# --------------------------------------------------------------------------
# long lines

def send_long_line(c, head, size, chunk=256 * 1024):
    """Sends head + size x's, then CRLF; returns the reply or 'closed'."""
    sock = c.ls.sock
    try:
        sock.sendall(head)
        filler = b"x" * chunk
        left = size
        while left > 0:
            sock.sendall(filler[:min(left, chunk)])
            left -= chunk
        sock.sendall(b"\r\n")
    except (OSError, ssl.SSLError):
        pass
    try:
        return c.read_reply()
    except (h.ConnectionClosed, OSError):
        return "closed"


@pytest.mark.parametrize("listener", ["submission", "smtps"])
def test_10mb_line_without_newline(env, client_ctx, listener):
    """A 10 MB command line: 500 5.5.2 once the newline comes (or a close),
    memory bounded, the session (or the next) goes on."""
    up, rl = env
    with Sampler(rl) as smp:
        if listener == "smtps":
            c = h.open_session(rl, "implicit", client_ctx)
        else:
            c = h.Client(rl.ports["submission"], client_ctx)
        c.ls.settimeout(20)
        r = send_long_line(c, b"NOOP ", 10 * 1024 * 1024)
        print(f"10 MB line ({listener}): {r!r}")
        assert r == "closed" or (r.code == 500 and r.raw.startswith(b"500 5.5.2")), r
        if r != "closed":
            assert c.cmd("NOOP").code == 250
        c.close()
    smp.report(f"10 MB line ({listener})", 1)
    smp.assert_rss_bound(min(RSS_LIMIT_KB, smp.base_rss + 8 * 1024))
    smp.assert_fds_back()
    assert not up.recorder.saw("NOOP") or listener == "smtps"
    assert all(len(x.line) < 70000 for x in up.recorder.commands)
    normal_session(rl, client_ctx, up)


@pytest.mark.parametrize("how", ["initial-response", "continuation"])
def test_1mb_auth_line(env, client_ctx, how):
    """AUTH PLAIN with a 1 MB token (on the command line, or as the
    continuation line after 334): refused or closed, never relayed whole,
    memory bounded, secrets not logged."""
    up, rl = env
    token = b"QUJD" * (256 * 1024)  # 1 MB of base64
    with Sampler(rl) as smp:
        c = h.open_session(rl, "implicit", client_ctx)
        c.ls.settimeout(20)
        if how == "initial-response":
            r = send_long_line(c, b"AUTH PLAIN " + token, 0)
        else:
            r = c.cmd("AUTH PLAIN")
            assert r.code == 334, r
            r = send_long_line(c, token, 0)
        print(f"1 MB AUTH line ({how}): {r!r}")
        assert r == "closed" or 500 <= r.code < 600, r
        if r != "closed":
            try:
                r2 = c.cmd("NOOP")
                assert r2.code in (250, 503) or 500 <= r2.code < 600, r2
            except (h.ConnectionClosed, OSError):
                pass
        c.close()
    smp.report(f"1 MB AUTH line ({how})", 1)
    smp.assert_rss_bound(min(RSS_LIMIT_KB, smp.base_rss + 8 * 1024))
    smp.assert_fds_back()
    assert all(len(x.line) < 70000 for x in up.recorder.commands), "a 1 MB line was relayed"
    assert "QUJDQUJD" not in rl.log
    normal_session(rl, client_ctx, up)


# --------------------------------------------------------------------------
# 10 000 RCPTs

def test_10k_rcpts(scripted_factory, relabel_factory, client_ctx):
    """10 000 RCPTs pipelined in one transaction, each accepted by the
    upstream: 10 000 250s in order, then the message; memory bounded."""
    up = scripted_factory(tls="implicit")
    rl = relabel_factory(up.port, "implicit", relabel_opts=FAST)
    n = 10000
    with Sampler(rl) as smp:
        c = h.open_session(rl, "implicit", client_ctx)
        assert c.auth_plain().code == 235
        assert c.cmd("MAIL FROM:<many@example.net>").code == 250
        lines = [f"RCPT TO:<r{i}@example.org>\r\n".encode() for i in range(n)]
        codes, err = pipeline(c, lines, timeout=20)
        assert not err, err
        assert codes == [250] * n, (len(codes), sorted(set(codes)))
        assert c.cmd("DATA").code == 354
        c.send(h.stuff(b"Subject: many\r\n\r\nto ten thousand\r\n"))
        r = c.read_reply()
        assert r.code == 250, r
        assert c.cmd("QUIT").code == 221
        c.close()
    (m,) = up.recorder.wait_messages(1)
    assert m.rcpt_tos == [f"r{i}@example.org" for i in range(n)]
    smp.report("10k RCPTs", 1)
    smp.assert_rss_bound(min(RSS_LIMIT_KB, smp.base_rss + 16 * 1024))
    smp.assert_fds_back()
    rl.wait_log(r"message from=<many@example.net> rcpts=10000 ")


# --------------------------------------------------------------------------
# connection floods

def test_1000_connection_burst(env, client_ctx):
    """1000 connections from 127.0.0.1 at once on the STARTTLS listener:
    each greeted (or cleanly refused by a close); the daemon stays up."""
    up, rl = env
    n = 1000
    socks = []
    with Sampler(rl) as smp:
        try:
            for _ in range(n):
                s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                s.setblocking(False)
                try:
                    s.connect((h.LOCALHOST, rl.ports["submission"]))
                except BlockingIOError:
                    pass
                socks.append(s)
            pending = {s.fileno(): s for s in socks}
            got = {fd: b"" for fd in pending}
            refused = 0
            t0 = time.monotonic()
            while pending and time.monotonic() - t0 < 15:
                # each connection is done once it has a whole greeting line
                fds = list(pending)
                for i in range(0, len(fds), 500):
                    r, _, _ = select.select(fds[i:i + 500], [], [], 0.05)
                    for fd in r:
                        try:
                            chunk = pending[fd].recv(4096)
                        except (BlockingIOError, InterruptedError):
                            continue
                        except OSError:
                            chunk = b""
                        if not chunk:
                            refused += 1
                            del pending[fd]
                            continue
                        got[fd] += chunk
                        if b"\r\n" in got[fd]:
                            del pending[fd]
            assert not pending, f"{len(pending)} of {n} connections neither greeted nor closed"
            peak_now = rl.fd_count()
            normal_session(rl, client_ctx, up)  # served with 1000 connections open
        finally:
            for s in socks:
                s.close()
    greeted = sum(1 for d in got.values() if d.startswith(b"220 smtp.example.com ESMTP"))
    odd = [d for d in got.values() if d and not d.startswith(b"220 smtp.example.com ESMTP")]
    print(f"1000-connection burst: {greeted} greeted, {refused} closed, peak fds {peak_now}")
    assert not odd, odd[:3]
    assert greeted + refused == n
    assert greeted >= n * 0.9, f"only {greeted} of {n} greeted"
    smp.report("1000 connections", n)
    smp.assert_rss_bound()
    smp.assert_fds_back()
    assert rl.proc.poll() is None
    normal_session(rl, client_ctx, up)


def client_hello(certs):
    """The bytes of one TLS ClientHello for smtp.example.com."""
    ctx = h.client_context(certs)
    inc, out = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(inc, out, server_hostname=h.BRAND_HOST)
    try:
        obj.do_handshake()
    except ssl.SSLWantReadError:
        pass
    return out.read()


def test_tls_handshake_flood(env, client_ctx, certs):
    """300 TCP connections to the implicit port each send a ClientHello and
    nothing more, then close: a normal session is served during and after,
    and no provider connection is made for them."""
    up, rl = env
    hello = client_hello(certs)
    assert hello[:1] == b"\x16"
    n = 300
    socks = []
    with Sampler(rl) as smp:
        try:
            for _ in range(n):
                s = raw_connect(rl.ports["smtps"])
                s.sendall(hello)
                socks.append(s)
            # relabel answers each with its ServerHello flight
            answered = 0
            t0 = time.monotonic()
            waiting = {s.fileno(): s for s in socks}
            while waiting and time.monotonic() - t0 < 15:
                r, _, _ = select.select(list(waiting), [], [], 0.2)
                for fd in r:
                    try:
                        data = waiting[fd].recv(65536, socket.MSG_PEEK)
                    except OSError:
                        data = b""
                    if data[:1] == b"\x16":
                        answered += 1
                    del waiting[fd]
            during = time.monotonic()
            normal_session(rl, client_ctx, up)  # during the flood
            during = time.monotonic() - during
        finally:
            for s in socks:
                s.close()
    print(f"handshake flood: {answered} of {n} got a ServerHello; a normal session took "
          f"{during:.2f}s during the flood")
    assert answered >= n * 0.9
    smp.report("TLS handshake flood", n)
    smp.assert_rss_bound()
    smp.assert_fds_back()
    normal_session(rl, client_ctx, up)  # after
    # only the two normal sessions reached the provider
    assert len(up.recorder.conns) == 2, up.recorder.conns
