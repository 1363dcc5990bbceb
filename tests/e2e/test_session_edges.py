"""
Session edges found by the session fuzzer: STARTTLS after a plaintext login,
one QUIT upstream, bytes an upstream sends before anything was asked.
"""
import pytest

import harness as h


@pytest.mark.relabel_opts(listener_opts={"submission": {"require_tls": "no"}})
def test_starttls_after_plaintext_auth_is_refused(relay_st):
    # The upstream cannot be made to forget a login, and RFC 3207 §4.2 says
    # nothing learnt before STARTTLS may survive it.
    c = relay_st.connect()
    assert c.ehlo().code == 250
    assert c.auth_plain().code == 235
    r = c.cmd("STARTTLS")
    assert r.code == 503 and b"5.5.1" in r.raw, r
    # The session goes on in plaintext as before.
    assert c.send_message(b"still works\r\n").code == 250
    relay_st.upstream.recorder.wait_messages(1)
    assert relay_st.upstream.recorder.verbs().count("AUTH") == 1


@pytest.mark.relabel_opts(listener_opts={"submission": {"require_tls": "no"}})
def test_starttls_before_auth_still_works_with_require_tls_no(relay_st, client_ctx):
    c = relay_st.connect()
    assert c.ehlo().code == 250
    c.starttls()
    assert c.ehlo().code == 250
    assert c.auth_plain().code == 235
    assert c.send_message(b"upgraded\r\n").code == 250


def test_quit_reaches_upstream_once(relay):
    c = relay.session()
    assert c.cmd("QUIT").code == 221
    assert c.closed()
    h.wait_for(relay.upstream.recorder.all_closed, what="upstream session end")
    assert relay.upstream.recorder.verbs().count("QUIT") == 1


@pytest.mark.parametrize("up_tls", ["implicit", "starttls"])
def test_upstream_bytes_before_first_command(scripted_factory, relabel_factory, client_ctx,
                                             up_tls):
    # A second greeting right behind the first would otherwise be taken as
    # the reply to the client's EHLO.
    up = scripted_factory(tls=up_tls)
    up.arm(h.Fault("greeting", "extra"))
    rl = relabel_factory(up.port, up_tls)
    c = h.Client(rl.ports["smtps"], client_ctx, tls="implicit")
    assert c.greeting.code == 220
    r = c.cmd("EHLO client.example")
    # implicit: after the greeting, before anything was asked; starttls: in
    # place of the reply to relabel's own EHLO.
    assert r.code == 421 and r.raw.startswith(b"421 4.4."), r
    assert c.closed()
    why = "unsolicited" if up_tls == "implicit" else "EHLO refused: 220"
    h.wait_for(lambda: why in rl.log, what=f"log line naming '{why}'")
    assert not up.recorder.saw("MAIL")
