"""
TLS session resumption on both legs.

Upstream leg: relabel keeps the session of its last full, verified
handshake with an upstream and offers it to the next connection; the
session end line says `up_resumed=yes|no`.  A resumed session never stands
in for verification of a server that does not hold it: an upstream
restarted with a certificate that does not verify gets a full handshake,
which fails.  A reload starts afresh.

Client leg: relabel issues session tickets; a client that offers one
resumes (`resumed=yes`), and the dialogue goes on as usual.
"""

import os
import re
import signal

import pytest

import harness as h


def session_ends(rl, n):
    rx = re.compile(r"session end .*")
    h.wait_for(lambda: len(rx.findall(rl.log)) >= n, what=f"{n} session end lines")
    return rx.findall(rl.log)


def field(line, key):
    m = re.search(rf" {key}=(\S+)", line)
    assert m, f"{key} not in {line}"
    return m.group(1)


def deliver(rl, client_ctx, mode="implicit", session=None, subject="resumed"):
    """One session with AUTH and a message; returns the client's TLS session."""
    if mode == "implicit":
        c = h.Client(rl.ports["smtps"], client_ctx, tls="implicit", session=session)
    else:
        c = h.Client(rl.ports["submission"], client_ctx, session=session)
        assert c.ehlo().code == 250
        c.starttls()
    try:
        assert c.ehlo().code == 250
        assert c.auth_plain().code == 235
        r = c.send_message(f"Subject: {subject}\r\n\r\nbody\r\n".encode())
        assert r.code == 250, r
        assert c.cmd("QUIT").code == 221
        return c.ls.sock.session, c.ls.sock.session_reused
    finally:
        c.close()


@pytest.mark.parametrize("up_tls", ["implicit", "starttls"])
def test_upstream_session_resumed(upstream_factory, relabel_factory, client_ctx, up_tls):
    up = upstream_factory(up_tls)
    rl = relabel_factory(up.port, up_tls)
    for i in range(3):
        deliver(rl, client_ctx, subject=f"m{i}")
    ends = session_ends(rl, 3)
    assert [field(e, "up_resumed") for e in ends] == ["no", "yes", "yes"], ends
    assert len(up.recorder.wait_messages(3)) == 3


def test_reload_forgets_upstream_session(upstream_factory, relabel_factory, client_ctx):
    up = upstream_factory("implicit")
    rl = relabel_factory(up.port, "implicit")
    deliver(rl, client_ctx)
    deliver(rl, client_ctx)
    os.kill(rl.pid, signal.SIGHUP)
    rl.wait_log(r"reload ok")
    deliver(rl, client_ctx)
    ends = session_ends(rl, 3)
    assert [field(e, "up_resumed") for e in ends] == ["no", "yes", "no"], ends


def test_no_resumption_with_an_upstream_that_does_not_verify(upstream_factory, relabel_factory,
                                                             client_ctx):
    """The upstream is replaced, on the same address, by a server whose
    certificate names another host.  The saved session is offered, the new
    server does not know it, the full handshake fails verification: 421,
    nothing delivered.  Then the good server is back: a full handshake again."""
    good = upstream_factory("implicit")
    port = good.port
    rl = relabel_factory(port, "implicit")
    deliver(rl, client_ctx)
    good.stop()
    bad = upstream_factory("implicit", cert="wrongname", port=port)
    c = h.open_session(rl, "implicit", client_ctx, ehlo=False)
    try:
        r = c.ehlo()
        assert r.code == 421 and r.raw.startswith(b"421 4.7.0 smtp.example.com"), r
    finally:
        c.close()
    assert bad.messages == []
    rl.wait_log(r"upstream failed .*reason=\"TLS with 127\.0\.0\.1:\d+ failed: [^\"]*name")
    bad.stop()
    good2 = upstream_factory("implicit", port=port)
    deliver(rl, client_ctx)
    deliver(rl, client_ctx)
    ends = session_ends(rl, 4)
    assert [field(e, "up_resumed") for e in ends] == ["no", "no", "no", "yes"], ends
    assert len(good2.recorder.wait_messages(2)) == 2


@pytest.mark.parametrize("mode", ["implicit", "starttls"])
def test_client_resumes_with_ticket(upstream_factory, relabel_factory, client_ctx, mode):
    up = upstream_factory("implicit")
    rl = relabel_factory(up.port, "implicit")
    sess, reused = deliver(rl, client_ctx, mode)
    assert not reused
    assert sess is not None and sess.has_ticket, "relabel issued no session ticket"
    _, reused = deliver(rl, client_ctx, mode, session=sess)
    assert reused, "the client's session was not resumed"
    ends = session_ends(rl, 2)
    assert [field(e, "resumed") for e in ends] == ["no", "yes"], ends
    assert field(ends[1], "sni") == "smtp.example.com"
    assert len(up.recorder.wait_messages(2)) == 2


def test_ticket_from_before_a_reload_gets_a_full_handshake(upstream_factory, relabel_factory,
                                                          client_ctx):
    """Ticket keys live in the configuration snapshot: a reload issues new
    ones, and an old ticket means a full handshake, not a failure."""
    up = upstream_factory("implicit")
    rl = relabel_factory(up.port, "implicit")
    sess, _ = deliver(rl, client_ctx)
    os.kill(rl.pid, signal.SIGHUP)
    rl.wait_log(r"reload ok")
    _, reused = deliver(rl, client_ctx, session=sess)
    assert not reused
    ends = session_ends(rl, 2)
    assert [field(e, "resumed") for e in ends] == ["no", "no"], ends
