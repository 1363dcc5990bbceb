"""
Upstream faults: the client gets a 421 4.x.x, never a 2xx for MAIL/RCPT/DATA or
the end of data, and the session closes; the upstream never sees AUTH or MAIL
when its certificate or its STARTTLS cannot be trusted.
"""

import pytest

import harness as h

BODY = b"Subject: fault\r\n\r\nshould never be acknowledged\r\n"
ACK_FORBIDDEN = ("MAIL", "RCPT", "DATA", "BODY")


def client_for(rl, client_mode, ctx):
    """Returns (client, dialogue so far).  A 421 greeting ends the dialogue at once."""
    port = rl.ports["smtps" if client_mode == "implicit" else "submission"]
    c = h.Client(port, ctx, tls="implicit" if client_mode == "implicit" else None)
    got = [("GREETING", c.greeting)]
    if c.greeting.code == 220 and client_mode == "starttls":
        got.append(("EHLO-local", c.ehlo()))
        c.starttls()
    return c, got


def walk(c, got, steps=None):
    """Sends the steps one by one until a 421 or a closed connection."""
    if got[-1][1].code == 421:
        return got
    steps = steps or [("EHLO", "EHLO client.e2e.test"), ("AUTH", "AUTH PLAIN " + h.plain_token()),
                      ("MAIL", "MAIL FROM:<s@example.net>"), ("RCPT", "RCPT TO:<r@example.org>"),
                      ("DATA", "DATA"), ("BODY", None)]
    for kind, line in steps:
        try:
            if kind == "BODY":
                c.send(h.stuff(BODY))
                r = c.read_reply()
            else:
                r = c.cmd(line)
        except (h.ConnectionClosed, OSError):
            got.append((kind, None))
            break
        got.append((kind, r))
        if r.code == 421:
            break
    return got


def assert_421_and_closed(c, got, fault_after=0):
    """fault_after: replies before this index came while the upstream was still fine."""
    kinds = [(k, r.raw if r else None) for k, r in got]
    for kind, r in got[fault_after:]:
        if kind in ACK_FORBIDDEN and r is not None:
            assert not (200 <= r.code < 400), f"{kind} acknowledged during an upstream fault: {kinds}"
    last_kind, last = got[-1]
    assert last is not None, f"connection closed without a 421: {kinds}"
    assert last.code == 421 and last.raw.startswith(b"421 4."), kinds
    assert b"smtp.example.com" in last.raw, kinds
    assert c.closed(), "session not closed after 421"
    assert not c.provider_leaks(), kinds


def assert_upstream_saw_no_secrets(up):
    verbs = up.recorder.verbs()
    assert "AUTH" not in verbs and "MAIL" not in verbs and "RCPT" not in verbs, up.recorder.commands
    assert up.messages == []


@pytest.mark.parametrize("up_mode", ["implicit", "starttls"])
@pytest.mark.parametrize("cert", ["wrongname", "expired", "unknownca"])
def test_untrusted_upstream_certificate(upstream_factory, relabel_factory, client_ctx, cert, up_mode):
    up = upstream_factory(up_mode, cert=cert)
    rl = relabel_factory(up.port, up_mode)
    c, got = client_for(rl, "implicit", client_ctx)
    try:
        assert_421_and_closed(c, walk(c, got))
    finally:
        c.close()
    assert_upstream_saw_no_secrets(up)


def test_untrusted_upstream_certificate_starttls_listener(upstream_factory, relabel_factory, client_ctx):
    up = upstream_factory("starttls", cert="wrongname")
    rl = relabel_factory(up.port, "starttls")
    c, got = client_for(rl, "starttls", client_ctx)
    try:
        assert_421_and_closed(c, walk(c, got))
    finally:
        c.close()
    assert_upstream_saw_no_secrets(up)


@pytest.mark.parametrize("client_mode", ["implicit", "starttls"])
def test_upstream_without_starttls(scripted_factory, relabel_factory, client_ctx, client_mode):
    up = scripted_factory(tls="starttls", offer_starttls=False)
    rl = relabel_factory(up.port, "starttls")
    c, got = client_for(rl, client_mode, client_ctx)
    try:
        assert_421_and_closed(c, walk(c, got))
    finally:
        c.close()
    assert_upstream_saw_no_secrets(up)
    assert not up.recorder.saw("STARTTLS")


def test_upstream_starttls_response_injection(scripted_factory, relabel_factory, client_ctx):
    up = scripted_factory(tls="starttls", starttls_extra=b"250 2.1.0 injected\r\n")
    rl = relabel_factory(up.port, "starttls")
    c, got = client_for(rl, "implicit", client_ctx)
    try:
        assert_421_and_closed(c, walk(c, got))
    finally:
        c.close()
    assert_upstream_saw_no_secrets(up)


@pytest.mark.parametrize("client_mode", ["implicit", "starttls"])
@pytest.mark.parametrize("up_mode", ["implicit", "starttls"])
def test_nothing_listening_upstream(relabel_factory, client_ctx, client_mode, up_mode):
    rl = relabel_factory(h.free_port(), up_mode)
    c, got = client_for(rl, client_mode, client_ctx)
    try:
        assert_421_and_closed(c, walk(c, got))
    finally:
        c.close()


@pytest.mark.parametrize("up_mode", ["implicit", "starttls"])
def test_upstream_lost_while_waiting_for_reply(scripted_factory, relabel_factory, client_ctx, up_mode):
    up = scripted_factory(tls=up_mode, drop_on="RCPT")
    rl = relabel_factory(up.port, up_mode)
    c, got = client_for(rl, "implicit", client_ctx)
    try:
        got = walk(c, got)
        kinds = [k for k, _ in got]
        assert kinds[-1] == "RCPT", got  # the 421 comes at once, as the RCPT reply
        assert dict(got)["MAIL"].code == 250  # MAIL was the upstream's real 250
        assert_421_and_closed(c, got, fault_after=kinds.index("RCPT"))
    finally:
        c.close()
    assert up.messages == []


def test_upstream_reply_timeout(scripted_factory, relabel_factory, client_ctx):
    up = scripted_factory(tls="implicit", stall_on="MAIL")
    rl = relabel_factory(up.port, "implicit", relabel_opts={"upstream_timeout": "1s"})
    c, got = client_for(rl, "implicit", client_ctx)
    t0 = h.time.monotonic()
    try:
        got = walk(c, got)
        assert [k for k, _ in got][-1] == "MAIL", got
        assert_421_and_closed(c, got)
    finally:
        c.close()
    assert h.time.monotonic() - t0 < 8


@pytest.mark.parametrize("up_mode", ["implicit", "starttls"])
def test_upstream_reset_mid_data(scripted_factory, relabel_factory, client_ctx, up_mode):
    up = scripted_factory(tls=up_mode, data_mode="reset", reset_after=64 * 1024)
    rl = relabel_factory(up.port, up_mode)
    c, got = client_for(rl, "implicit", client_ctx)
    body = h.make_body(2 * 1024 * 1024)
    try:
        assert c.ehlo().code == 250
        assert c.auth_plain().code == 235
        assert c.cmd("MAIL FROM:<s@example.net>").code == 250
        assert c.cmd("RCPT TO:<r@example.org>").code == 250
        assert c.cmd("DATA").code == 354
        r = None
        try:
            c.send(h.stuff(body))
            r = c.read_reply()
        except (h.ConnectionClosed, OSError):
            pass
        assert r is None or not (200 <= r.code < 300), r
        if r is not None:
            assert r.code == 421, r
        assert c.closed()
    finally:
        c.close()
    assert up.messages == []
