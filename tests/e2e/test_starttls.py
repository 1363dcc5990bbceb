"""The STARTTLS listener: local pre-TLS dialogue, 530, injection, 503 on re-STARTTLS."""

import pytest

import harness as h

NOT_BEFORE_TLS = ["MAIL FROM:<a@example.net>", "RCPT TO:<b@example.org>", "DATA",
                  "AUTH PLAIN " + h.plain_token(), "VRFY postmaster", "BDAT 10 LAST"]


def test_pre_tls_ehlo_is_local(relay_st):
    c = relay_st.connect()
    assert c.greeting.raw == b"220 smtp.example.com ESMTP ready\r\n"
    r = c.ehlo()
    assert r.code == 250 and r.first == b"250-smtp.example.com"
    caps = h.capabilities(r)
    assert "STARTTLS" in caps
    assert "AUTH" not in caps
    for verb in ("HELO pre.e2e.test", "NOOP", "RSET"):
        assert c.cmd(verb).code == 250, verb
    q = c.cmd("QUIT")
    assert q.code == 221
    assert c.closed()
    assert not c.provider_leaks()
    # nothing of this reached the upstream
    assert relay_st.upstream.recorder.commands == []


def test_530_before_starttls_and_nothing_upstream(relay_st):
    c = relay_st.connect()
    c.ehlo()
    for line in NOT_BEFORE_TLS[:4]:
        r = c.cmd(line)
        assert r.raw == b"530 5.7.0 Must issue a STARTTLS command first\r\n", (line, r)
    assert relay_st.upstream.recorder.commands == []
    # the session still works after the refusals
    c.starttls()
    c.ehlo()
    assert c.auth_plain().code == 235
    assert c.send_message(b"after 530\r\n").code == 250
    (m,) = relay_st.upstream.recorder.wait_messages(1)
    assert m.data == b"after 530\r\n"
    assert not c.provider_leaks()


@pytest.mark.parametrize("injected", [
    b"STARTTLS\r\nMAIL FROM:<a@b>\r\n",
    b"STARTTLS\r\nRSET\r\n",
    b"STARTTLS\r\nMAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nDATA\r\n",
])
def test_starttls_command_injection_refused(relay_st, injected):
    c = relay_st.connect()
    c.ehlo()
    c.send(injected)
    r = c.read_reply()
    assert 500 <= r.code < 600, r
    assert c.closed()
    assert not relay_st.upstream.recorder.saw("MAIL")
    assert not relay_st.upstream.recorder.saw("RCPT")


def test_injection_split_across_writes_is_not_injection(relay_st):
    """STARTTLS alone, then the handshake: must work (the refusal is only for same-flight bytes)."""
    c = relay_st.connect()
    c.ehlo()
    r = c.starttls()
    assert r.raw == b"220 2.0.0 Ready to start TLS\r\n"
    assert c.ehlo().code == 250


def test_client_must_ehlo_again_after_tls(relay_st):
    c = relay_st.connect()
    c.ehlo()
    c.starttls()
    r = c.cmd("MAIL FROM:<a@example.net>")
    assert 500 <= r.code < 600, r
    assert not relay_st.upstream.messages


def test_starttls_on_encrypted_session_is_503(relay):
    c = relay.session()
    r = c.cmd("STARTTLS")
    assert r.code == 503 and r.raw.startswith(b"503 5.5.1"), r
    # never forwarded upstream once encrypted, and the session goes on
    assert not any(x.verb == "STARTTLS" and x.tls for x in relay.upstream.recorder.commands)
    assert c.cmd("NOOP").code == 250
    assert c.auth_plain().code == 235
    assert c.send_message(b"still fine\r\n").code == 250
    relay.upstream.recorder.wait_messages(1)


@pytest.mark.relabel_opts(listener_opts={"submission": {"require_tls": "no"}})
def test_require_tls_no_relays_plaintext_but_upstream_is_tls(relay_st):
    c = relay_st.connect()
    r = c.ehlo()
    assert r.code == 250 and b"smtp.example.com" in r.first
    assert "STARTTLS" in h.capabilities(r)
    assert c.auth_plain().code == 235
    assert c.send_message(b"plaintext client\r\n").code == 250
    (m,) = relay_st.upstream.recorder.wait_messages(1)
    assert m.data == b"plaintext client\r\n" and m.tls
    assert all(x.tls for x in relay_st.upstream.recorder.commands if x.verb in ("AUTH", "MAIL"))
    assert not c.provider_leaks()
