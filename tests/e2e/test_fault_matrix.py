"""
The fault matrix: a fault at every protocol state, on both legs, checked
against relabel's one promise.

Upstream leg: ScriptedUpstream (harness.Fault) injects each fault kind
(RST, FIN, TLS close_notify, stall, garbage, an unsolicited extra reply, a
reply override, bytes injected after a reply) at each point of the dialogue
(before the greeting, relabel's own EHLO and STARTTLS on a STARTTLS
upstream, the client's EHLO, AUTH, MAIL, RCPT, DATA, right after the 354,
mid-DATA, the reply to the end of data, right after that reply).  The full
matrix runs with an implicit listener and an implicit upstream; the
STARTTLS listener with a STARTTLS upstream runs every kind at every point
too, except that the (slow) stall runs there at a few points only; the two
mixed modes run a slice.

Client leg: the client vanishes by FIN, RST (SO_LINGER 0), TLS close_notify
or TLS truncation (the socket closed under the TLS layer) after the
greeting, EHLO, AUTH, MAIL, RCPT, the 354, mid-message and right after the
end of data.

Every case checks the invariant:
  * a client gets a 2xx for a message only if the upstream answered 2xx to
    that message's end of data (after a protocol fault the scripted upstream
    answers 554 to every later end of data, so a 2xx there would have been
    made up or misattributed by relabel);
  * the upstream records at most one message per client message;
  * the client always learns of a failure: a reply, a 421, or a closed
    connection, never silence until the test's timeout;
  * relabel closes the upstream leg, its file descriptors return to the
    baseline, and a new session is served normally afterwards.

One relabel and one scripted upstream per upstream mode serve the whole
module (each case arms the fault for one upstream connection), so the
daemon also has to survive the whole sequence: its exit code after SIGTERM
is checked at the end.
"""

import itertools
import os
import socket
import ssl
import time

import pytest

import harness as h

READ_TIMEOUT = 8.0  # > every relabel timeout below: silence this long is a failure
# One relabel serves the whole matrix, hundreds of sessions from 127.0.0.1
# within a minute: the per-address rate limit is off here.
OPTS = {"upstream_timeout": "1s", "upstream_connect_timeout": "2s", "command_timeout": "5s",
        "data_timeout": "5s", "handshake_timeout": "5s", "max_connection_rate": "0",
        "log_level": os.environ.get("MATRIX_LOG_LEVEL", "info")}
BIG = 96 * 1024       # message 1: large enough that a fault after K bytes is mid-message
BODY_FAULT_AFTER = 16 * 1024

UP_POINTS = [p for p in h.Fault.POINTS if p not in ("EHLO-plain", "STARTTLS")]
UP_POINTS_STARTTLS = list(h.Fault.POINTS)
KINDS = list(h.Fault.KINDS)


def body_for(mid, size):
    """A message of about size bytes carrying its id in an X-Fault-Id header."""
    return h.make_body(size, mid.encode()).replace(
        b"Subject: e2e", f"X-Fault-Id: {mid}\r\nSubject: e2e".encode(), 1)


def msg_id(m):
    for line in m.data.split(b"\r\n"):
        if line.startswith(b"X-Fault-Id: "):
            return line[12:].decode()
    return None


# --------------------------------------------------------------------------
# one relabel and one scripted upstream per upstream mode, for the module

class Env:
    def __init__(self, certs, binary, tmpdir, up_mode):
        self.up_mode = up_mode
        self.up = h.ScriptedUpstream(certs, tls=up_mode, backlog=64).start()
        ports = {"smtps": h.free_port(), "submission": h.free_port()}
        cfg = h.relabel_config(certs, self.up.port, up_mode, ports, relabel_opts=OPTS)
        path = os.path.join(tmpdir, f"relabel-matrix-{up_mode}.ini")
        with open(path, "w") as f:
            f.write(cfg.text())
        self.rl = h.Relabel(binary, path, ports)
        self.rl.start()
        self.fd_base = None

    def stop(self):
        rc, killed = self.rl.stop()
        self.up.stop()
        return rc, killed


@pytest.fixture(scope="module")
def envs(certs, relabel_binary, tmp_path_factory):
    made = {}
    tmpdir = str(tmp_path_factory.mktemp("matrix"))

    def get(up_mode):
        if up_mode not in made:
            made[up_mode] = Env(certs, relabel_binary, tmpdir, up_mode)
        return made[up_mode]

    yield get
    problems = []
    for e in made.values():
        rc, killed = e.stop()
        if rc != 0 or killed:
            problems.append(f"relabel ({e.up_mode} upstream) exit code {rc}"
                            f"{' (SIGKILL)' if killed else ''}; log tail:\n{e.rl.log[-3000:]}")
    if problems:
        pytest.fail("\n".join(problems))


_ids = itertools.count(1)


def new_id(tag):
    return f"{tag}-{next(_ids)}-{os.getpid()}"


# --------------------------------------------------------------------------
# the client script

class Transcript:
    def __init__(self):
        self.steps = []   # (what, Reply | "closed" | "silence")
        self.dots = {}    # message id -> Reply | "closed" | "silence"
        self.client = None

    def __repr__(self):
        out = []
        for what, r in self.steps:
            out.append(f"{what}: {r.raw if isinstance(r, h.Reply) else r!r}")
        return "\n  " + "\n  ".join(out)

    @property
    def last(self):
        return self.steps[-1][1] if self.steps else None

    def silent(self):
        return [w for w, r in self.steps if r == "silence"]


class _Stop(Exception):
    pass


def drive(env, client_mode, ctx, ids, sizes=None, dot_pause=0.0):
    """
    Greeting, [EHLO, STARTTLS], EHLO, AUTH, then for each id MAIL, RCPT,
    DATA, message, then QUIT.  Stops at the first 421 or closed connection;
    a refused MAIL/RCPT/DATA moves on to the next message.  dot_pause:
    seconds between the message text and its end-of-data line.
    """
    tr = Transcript()
    rl = env.rl
    sizes = sizes or [BIG] + [600] * (len(ids) - 1)

    def step(what, data):
        if data is not None:
            try:
                c.send(data)
            except (h.ConnectionClosed, OSError) as e:
                if isinstance(e, (socket.timeout, TimeoutError)):
                    tr.steps.append((what + " (send)", "silence"))
                    raise _Stop()
                # relabel may have closed already: read what it said before
        try:
            r = c.read_reply()
        except (socket.timeout, TimeoutError):
            tr.steps.append((what, "silence"))
            raise _Stop()
        except (h.ConnectionClosed, OSError):
            tr.steps.append((what, "closed"))
            raise _Stop()
        tr.steps.append((what, r))
        if r.code == 421:
            tr.closed_after_421 = c.closed(timeout=READ_TIMEOUT)
            raise _Stop()
        return r

    def step_send(data):
        try:
            c.send(data)
        except (socket.timeout, TimeoutError):
            tr.steps.append(("message text (send)", "silence"))
            raise _Stop()
        except (h.ConnectionClosed, OSError):
            pass

    c = None
    try:
        port = rl.ports["smtps" if client_mode == "implicit" else "submission"]
        try:
            c = h.Client(port, ctx, tls=client_mode if client_mode == "implicit" else None,
                         timeout=READ_TIMEOUT, read_greeting=False)
        except (socket.timeout, TimeoutError):
            tr.steps.append(("connect", "silence"))
            raise _Stop()
        except (h.ConnectionClosed, OSError, ssl.SSLError):
            tr.steps.append(("connect", "closed"))
            raise _Stop()
        tr.client = c
        step("greeting", None)
        if client_mode == "starttls":
            step("EHLO-local", b"EHLO client.e2e.test\r\n")
            r = step("STARTTLS", b"STARTTLS\r\n")
            assert r.code == 220, r
            try:
                c.ls.wrap_client(ctx, h.BRAND_HOST)
            except (socket.timeout, TimeoutError):
                tr.steps.append(("handshake", "silence"))
                raise _Stop()
            except (OSError, ssl.SSLError):
                tr.steps.append(("handshake", "closed"))
                raise _Stop()
        step("EHLO", b"EHLO client.e2e.test\r\n")
        step("AUTH", f"AUTH PLAIN {h.plain_token()}\r\n".encode())
        for mid, size in zip(ids, sizes):
            r = step(f"MAIL {mid}", b"MAIL FROM:<s@example.net>\r\n")
            if r.code != 250:
                step("RSET", b"RSET\r\n")
                continue
            r = step(f"RCPT {mid}", b"RCPT TO:<r@example.org>\r\n")
            if r.code // 100 != 2:
                step("RSET", b"RSET\r\n")
                continue
            r = step(f"DATA {mid}", b"DATA\r\n")
            if r.code != 354:
                continue
            wire = h.stuff(body_for(mid, size))
            try:
                if dot_pause:
                    step_send(wire[:-3])
                    time.sleep(dot_pause)
                    wire = wire[-3:]
                r = step(f"dot {mid}", wire)
            finally:
                tr.dots[mid] = tr.steps[-1][1]
        step("QUIT", b"QUIT\r\n")
        tr.quit_closed = c.closed(timeout=READ_TIMEOUT)
    except _Stop:
        pass
    finally:
        if c is not None:
            c.close()
    return tr


# --------------------------------------------------------------------------
# the checks

def new_conns(up, before):
    with up.recorder.lock:
        return up.recorder.conns[before:]


def wait_upstream_closed(env, before, what):
    h.wait_for(lambda: all(c.closed for c in new_conns(env.up, before)), timeout=15,
               what=f"relabel to close the upstream leg ({what}); relabel log tail:\n"
                    f"{env.rl.log[-2000:]}")


def wait_fds_baseline(env, what):
    if env.fd_base is None:
        return
    try:
        h.wait_for(lambda: env.rl.fd_count() <= env.fd_base, timeout=5,
                   what=f"relabel's fds back to {env.fd_base}")
    except AssertionError:
        raise AssertionError(f"{what}: relabel holds {env.rl.fd_count()} fds, baseline "
                             f"{env.fd_base}: {os.listdir(f'/proc/{env.rl.pid}/fd')}")


def check_invariants(env, tr, ids, what):
    up = env.up
    msgs = [m for m in up.messages if msg_id(m) in ids]
    ctx = f"{what}\nclient transcript:{tr}\nupstream saw: {msgs}\nrelabel log tail:\n" \
          f"{env.rl.log[-1500:]}"
    # 1. the client always learns: never silence
    assert not tr.silent(), f"client waited in silence at {tr.silent()}: {ctx}"
    # 2. at most one upstream message per client message
    for mid in ids:
        n = sum(1 for m in msgs if msg_id(m) == mid)
        assert n <= 1, f"upstream recorded {n} messages for client message {mid}: {ctx}"
    # 3. a 2xx to an end of data only if the upstream gave a 2xx to that end of data
    for mid, r in tr.dots.items():
        if isinstance(r, h.Reply) and 200 <= r.code < 300:
            got = [m for m in msgs if msg_id(m) == mid]
            assert got and got[0].reply is not None and 200 <= got[0].reply < 300, \
                f"client got {r.raw!r} for message {mid}, upstream answered " \
                f"{[m.reply for m in got]}: {ctx}"
    # 4. a 421 is relabel's own and closes the session; no reply names the provider
    for w, r in tr.steps:
        if isinstance(r, h.Reply) and r.code == 421:
            assert r.raw.startswith(b"421 4.") and h.BRAND_HOST.encode() in r.raw, \
                f"odd 421 at {w}: {ctx}"
    if tr.last is not None and isinstance(tr.last, h.Reply) and tr.last.code == 421:
        assert getattr(tr, "closed_after_421", False), f"session not closed after 421: {ctx}"
    if tr.client is not None:
        assert not tr.client.provider_leaks(), f"provider named: {ctx}"
    return msgs


def check_recovery(env, client_mode, ctx, what):
    """A clean session through the same relabel delivers a message."""
    mid = new_id("recover")
    env.up.arm(None)
    before = len(env.up.recorder.conns)
    tr = drive(env, client_mode, ctx, [mid], sizes=[2000])
    r = tr.dots.get(mid)
    assert isinstance(r, h.Reply) and r.code == 250, \
        f"after {what}: the next session failed:{tr}\nrelabel log tail:\n{env.rl.log[-2000:]}"
    assert getattr(tr, "quit_closed", False), f"after {what}: QUIT did not close:{tr}"
    wait_upstream_closed(env, before, f"recovery after {what}")
    (m,) = [m for m in env.up.messages if msg_id(m) == mid]
    assert m.reply == 250


def set_baseline(env, client_mode, ctx):
    if env.fd_base is None:
        check_recovery(env, client_mode, ctx, "start")
        time.sleep(0.2)
        env.fd_base = env.rl.fd_count()


# --------------------------------------------------------------------------
# upstream faults

def run_upstream_fault(env, client_mode, ctx, fault):
    set_baseline(env, client_mode, ctx)
    what = f"{fault!r} ({client_mode} listener, {env.up_mode} upstream)"
    ids = [new_id("m1"), new_id("m2")]
    before = len(env.up.recorder.conns)
    env.up.arm(fault)
    t0 = time.monotonic()
    # An early reply (at 354 or mid-message) must reach relabel while the
    # message is still open: one that crosses the client's end of data on
    # the wire cannot be told from the reply to it (by relabel or by any
    # SMTP client), so the client holds its end-of-data line back briefly.
    pause = 0.3 if fault.at in ("354", "body") else 0.0
    tr = drive(env, client_mode, ctx, ids, dot_pause=pause)
    elapsed = time.monotonic() - t0
    env.up.arm(None)
    conns = new_conns(env.up, before)
    assert conns, f"{what}: relabel never connected upstream:{tr}"
    assert conns[0].fired, f"{what}: the fault never fired (point not reached):{tr}\n" \
                           f"upstream commands: {conns[0].commands}"
    wait_upstream_closed(env, before, what)
    msgs = check_invariants(env, tr, ids, what)
    # a fatal fault, or garbage, ends the session: the client sees a 421 or a close
    if fault.kind in h.Fault.FATAL + ("garbage",):
        assert isinstance(tr.last, str) or tr.last.code == 421, \
            f"{what}: the session went on after a fatal upstream fault:{tr}"
    # a reply override reaches the client as the upstream's own code
    if fault.kind == "override" and fault.at in ("MAIL", "RCPT", "DATA", "dot", "AUTH"):
        code = int(fault.code_text[:3])
        key = {"dot": "dot", "AUTH": "AUTH"}.get(fault.at, fault.at)
        got = [r for w, r in tr.steps if w.split()[0] == key and isinstance(r, h.Reply)]
        assert got and got[0].code == code, f"{what}: override {code} not relayed:{tr}"
    if fault.kind == "override" and fault.at == "after-dot":
        got = [r for w, r in tr.steps if w.startswith(f"MAIL {ids[1]}")]
        assert got and isinstance(got[0], h.Reply) and got[0].code == 452, tr
    # the first message arrived intact when the fault came after its reply
    if fault.at == "after-dot":
        r = tr.dots.get(ids[0])
        assert isinstance(r, h.Reply) and r.code == 250, f"{what}: message 1 lost:{tr}"
    wait_fds_baseline(env, what)
    check_recovery(env, client_mode, ctx, what)
    return tr, msgs, elapsed


def _cases():
    out = []
    for at in UP_POINTS:
        for kind in KINDS:
            out.append(pytest.param("implicit", "implicit", at, kind, None,
                                    id=f"ii-{at}-{kind}"))
    stall_points_st = ("greeting", "EHLO-plain", "STARTTLS", "body", "dot")
    for at in UP_POINTS_STARTTLS:
        for kind in KINDS:
            if kind == "stall" and at not in stall_points_st:
                continue
            out.append(pytest.param("starttls", "starttls", at, kind, None, id=f"ss-{at}-{kind}"))
    # the dot refused with a temporary error too
    for cm, um in (("implicit", "implicit"), ("starttls", "starttls")):
        out.append(pytest.param(cm, um, "dot", "override", "452 4.2.2 mailbox full",
                                id=f"{cm[0]}{um[0]}-dot-override452"))
    # mixed modes: a slice
    for cm, um in (("implicit", "starttls"), ("starttls", "implicit")):
        for at, kind in (("greeting", "rst"), ("STARTTLS", "close_notify"), ("RCPT", "extra"),
                         ("body", "fin"), ("dot", "garbage"), ("dot", "override"),
                         ("after-dot", "inject"), ("354", "override"), ("EHLO", "close_notify")):
            if at == "STARTTLS" and um != "starttls":
                continue
            out.append(pytest.param(cm, um, at, kind, None, id=f"{cm[0]}{um[0]}-{at}-{kind}"))
    return out


@pytest.mark.parametrize("client_mode,up_mode,at,kind,code", _cases())
def test_upstream_fault(envs, client_ctx, client_mode, up_mode, at, kind, code):
    env = envs(up_mode)
    fault = h.Fault(at, kind, code_text=code, after=BODY_FAULT_AFTER)
    tr, msgs, elapsed = run_upstream_fault(env, client_mode, client_ctx, fault)
    if kind == "stall":
        # upstream_timeout (or the connect timeout) ended it, not the test
        assert elapsed < 7, f"stall at {at} took {elapsed:.1f}s to surface:{tr}"
    if kind == "override" and at == "dot":
        r = next(iter(tr.dots.values()))
        assert isinstance(r, h.Reply) and r.code == int(fault.code_text[:3]), tr


# --------------------------------------------------------------------------
# the client leg

CLIENT_POINTS = ["greeting", "EHLO", "AUTH", "MAIL", "RCPT", "354", "body", "dot"]
CLIENT_KINDS = ["fin", "rst", "close_notify", "truncate"]


def client_vanish(c, kind):
    """Performs the disconnect; returns True if relabel then closed its side in time."""
    sock = c.ls.sock
    if kind == "rst":
        c.ls.reset()
        return True
    if kind == "truncate":
        # the TCP socket goes away under the TLS layer: no close_notify
        sock.close()
        return True
    if kind == "close_notify":
        if isinstance(sock, ssl.SSLSocket):
            sock.settimeout(2)
            try:
                sock = sock.unwrap()
            except (OSError, ssl.SSLError, ValueError):
                pass
        kind = "fin"
    # fin: half-close, then relabel must close its side
    try:
        sock.shutdown(socket.SHUT_WR)
    except OSError:
        return True
    deadline = time.monotonic() + READ_TIMEOUT
    sock.settimeout(0.5)
    try:
        while time.monotonic() < deadline:
            try:
                data = sock.recv(65536)
            except (socket.timeout, TimeoutError):
                continue
            if not data:
                return True
        return False
    except (OSError, ssl.SSLError):
        return True
    finally:
        sock.close()


def run_client_fault(env, client_mode, ctx, at, kind):
    set_baseline(env, client_mode, ctx)
    what = f"client {kind} at {at} ({client_mode} listener, {env.up_mode} upstream)"
    mid = new_id("cl")
    before = len(env.up.recorder.conns)
    ends_before = env.rl.log.count("session end")
    port = env.rl.ports["smtps" if client_mode == "implicit" else "submission"]
    c = h.Client(port, ctx, tls="implicit" if client_mode == "implicit" else None,
                 timeout=READ_TIMEOUT)
    assert c.greeting.code == 220
    if client_mode == "starttls":
        assert c.ehlo().code == 250
        if at == "pre-tls":
            at = None
        else:
            c.starttls()
    steps = [("greeting", None), ("EHLO", "EHLO client.e2e.test"),
             ("AUTH", "AUTH PLAIN " + h.plain_token()), ("MAIL", "MAIL FROM:<s@example.net>"),
             ("RCPT", "RCPT TO:<r@example.org>"), ("354", "DATA")]
    body = h.stuff(body_for(mid, BIG))
    for name, line in steps:
        if at is None:
            break
        if line is not None:
            r = c.cmd(line)
            assert r.code in (250, 235, 354), f"{what}: {line} -> {r}"
        if name == at:
            break
    else:
        if at == "body":
            c.send(body[:BODY_FAULT_AFTER])
        elif at == "dot":
            c.send(body)
    closed = client_vanish(c, kind)
    assert closed, f"{what}: relabel did not close the connection after the client's FIN" \
                   f"\nrelabel log tail:\n{env.rl.log[-1500:]}"
    h.wait_for(lambda: env.rl.log.count("session end") > ends_before, timeout=10,
               what=f"{what}: relabel's session end line")
    wait_upstream_closed(env, before, what)
    msgs = [m for m in env.up.messages if msg_id(m) == mid]
    if at == "dot":
        assert len(msgs) <= 1, msgs
    else:
        assert msgs == [], f"{what}: the upstream got a message the client never finished: {msgs}"
    wait_fds_baseline(env, what)
    check_recovery(env, client_mode, ctx, what)
    return msgs


def _client_cases():
    out = []
    for cm, um in (("implicit", "implicit"), ("starttls", "starttls")):
        for at in CLIENT_POINTS:
            for kind in CLIENT_KINDS:
                out.append(pytest.param(cm, um, at, kind, id=f"{cm[0]}{um[0]}-{at}-{kind}"))
        for kind in ("fin", "rst"):
            out.append(pytest.param(cm, um, "pre-tls", kind, id=f"{cm[0]}{um[0]}-pre-tls-{kind}")
                       if cm == "starttls" else None)
    return [x for x in out if x is not None]


@pytest.mark.parametrize("client_mode,up_mode,at,kind", _client_cases())
def test_client_fault(envs, client_ctx, client_mode, up_mode, at, kind):
    run_client_fault(envs(up_mode), client_mode, client_ctx, at, kind)


# --------------------------------------------------------------------------
# more upstream trouble

@pytest.mark.parametrize("client_mode", ["implicit", "starttls"])
def test_upstream_dns_failure(relabel_factory, client_ctx, client_mode):
    """An upstream name that does not resolve: 421 4.4.1 and the session ends."""
    rl = relabel_factory(h.free_port(), "implicit",
                         relabel_opts={"upstream_connect_timeout": "3s"},
                         upstream_opts={"host": "does-not-exist.invalid"})
    port = rl.ports["smtps" if client_mode == "implicit" else "submission"]
    t0 = time.monotonic()
    c = h.Client(port, client_ctx, tls="implicit" if client_mode == "implicit" else None,
                 timeout=READ_TIMEOUT)
    got = [c.greeting]
    try:
        if c.greeting.code == 220:
            if client_mode == "starttls":
                c.ehlo()
                c.starttls()
            for line in ("EHLO client.e2e.test", "AUTH PLAIN " + h.plain_token(),
                         "MAIL FROM:<s@example.net>"):
                try:
                    r = c.cmd(line)
                except (h.ConnectionClosed, OSError) as e:
                    assert not isinstance(e, (socket.timeout, TimeoutError)), got
                    break
                got.append(r)
                if r.code == 421:
                    break
        assert got[-1].code == 421 and got[-1].raw.startswith(b"421 4.4."), got
        assert h.BRAND_HOST.encode() in got[-1].raw, got
        assert all(r.code != 250 for r in got[2:]), got  # neither AUTH nor MAIL accepted
        assert c.closed(timeout=5)
    finally:
        c.close()
    elapsed = time.monotonic() - t0
    print(f"DNS failure ({client_mode}): {got[-1].raw!r} after {elapsed:.2f}s")
    rl.wait_log(r"does-not-exist\.invalid|resolve")
    if not got[-1].raw.startswith(b"421 4.4.1"):
        # the resolver did not fail fast in this sandbox: the connect timeout ended it
        assert elapsed < 8, got


def test_upstream_stops_reading_mid_data(scripted_factory, relabel_factory, client_ctx):
    """
    The upstream stops reading after 64 KB of a 16 MB message and never
    answers: relabel's write queue fills, it stops reading the client, and a
    timeout (data_timeout or upstream_timeout) must still end the session
    with a 421 or a close; never a 2xx, and never a hang.
    """
    up = scripted_factory(tls="implicit", data_mode="stop", reset_after=64 * 1024)
    rl = relabel_factory(up.port, "implicit",
                         relabel_opts={"data_timeout": "2s", "upstream_timeout": "2s",
                                       "command_timeout": "5s", "log_level": "info"})
    c = h.open_session(rl, "implicit", client_ctx)
    fd_base = rl.fd_count() - 2  # this session's two sockets
    try:
        assert c.auth_plain().code == 235
        assert c.cmd("MAIL FROM:<s@example.net>").code == 250
        assert c.cmd("RCPT TO:<r@example.org>").code == 250
        assert c.cmd("DATA").code == 354
        wire = h.stuff(h.make_body(16 * 1024 * 1024, b"stop"))
        c.ls.settimeout(0.5)
        t0 = time.monotonic()
        sent = 0
        outcome = None
        while sent < len(wire) and time.monotonic() - t0 < 20:
            try:
                sent += c.ls.sock.send(wire[sent:sent + 65536])
            except (socket.timeout, TimeoutError, ssl.SSLWantWriteError):
                continue
            except (OSError, ssl.SSLError) as e:
                outcome = f"send failed: {e!r}"
                break
        stalled_at = time.monotonic() - t0
        r = None
        c.ls.settimeout(READ_TIMEOUT)
        try:
            r = c.read_reply()
        except (socket.timeout, TimeoutError):
            outcome = "silence"
        except (h.ConnectionClosed, OSError):
            outcome = outcome or "closed"
        elapsed = time.monotonic() - t0
    finally:
        c.close()
    print(f"upstream stopped reading: sent {sent} of {len(wire)} bytes in {stalled_at:.1f}s, "
          f"outcome {r!r} / {outcome} after {elapsed:.1f}s")
    assert outcome != "silence", f"no reply and no close after {elapsed:.1f}s; log:\n{rl.log[-2000:]}"
    assert sent < len(wire), "the whole 16 MB went into buffers: backpressure missing"
    assert r is None or r.code == 421, r
    assert elapsed < 15, f"the session took {elapsed:.1f}s to end; log:\n{rl.log[-2000:]}"
    # relabel let go of both sockets at once (the upstream cannot see the FIN
    # yet: it sits behind the full window)
    h.wait_for(lambda: rl.fd_count() <= fd_base, timeout=3, what="relabel to close both legs")
    h.wait_for(lambda: up.recorder.conns and up.recorder.all_closed(), timeout=15,
               what="the upstream to see the close")
    assert all(m.reply is None for m in up.messages)
