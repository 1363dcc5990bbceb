"""AUTH PLAIN and LOGIN, with and without initial response, relayed to the upstream."""

import pytest

import harness as h


def deliver_and_check(relay, c, tag):
    body = f"Subject: {tag}\r\n\r\nauthenticated\r\n".encode()
    assert c.send_message(body).code == 250
    (m,) = relay.upstream.recorder.wait_messages(1)
    assert m.data == body and m.auth_user == h.USER


def test_plain_with_initial_response(relay):
    c = relay.session()
    r = c.cmd("AUTH PLAIN " + h.plain_token())
    assert r.code == 235, r
    deliver_and_check(relay, c, "plain-ir")
    assert not c.provider_leaks()


def test_plain_without_initial_response(relay):
    c = relay.session()
    r = c.cmd("AUTH PLAIN")
    assert r.code == 334 and r.raw.rstrip(b"\r\n") in (b"334", b"334 "), r
    r = c.cmd(h.plain_token())
    assert r.code == 235, r
    deliver_and_check(relay, c, "plain-no-ir")


def test_login_without_initial_response(relay):
    c = relay.session()
    assert c.cmd("AUTH LOGIN").code == 334
    assert c.cmd(h.b64(h.USER)).code == 334
    assert c.cmd(h.b64(h.PASSWORD)).code == 235
    deliver_and_check(relay, c, "login-no-ir")


def test_login_with_initial_response(relay):
    c = relay.session()
    assert c.cmd("AUTH LOGIN " + h.b64(h.USER)).code == 334
    assert c.cmd(h.b64(h.PASSWORD)).code == 235
    deliver_and_check(relay, c, "login-ir")


@pytest.mark.parametrize("how", ["plain-ir", "plain", "login"])
def test_wrong_password_gets_upstream_535(relay_ii, how):
    c = relay_ii.session()
    if how == "plain-ir":
        r = c.cmd("AUTH PLAIN " + h.plain_token(h.USER, "nope"))
    elif how == "plain":
        assert c.cmd("AUTH PLAIN").code == 334
        r = c.cmd(h.plain_token(h.USER, "nope"))
    else:
        assert c.cmd("AUTH LOGIN").code == 334
        assert c.cmd(h.b64(h.USER)).code == 334
        r = c.cmd(h.b64("nope"))
    assert r.code == 535, r
    assert r.raw.startswith(b"535 5.7.8"), r  # the upstream's own reply
    # a retry with the right password works in the same session
    assert c.auth_plain().code == 235
    assert not c.provider_leaks()


def test_auth_abort_with_star(relay_ii):
    c = relay_ii.session()
    assert c.cmd("AUTH LOGIN").code == 334
    r = c.cmd("*")
    assert r.code == 501 or 500 <= r.code < 600, r
    assert c.auth_plain().code == 235


def test_auth_payloads_never_logged(relay_ii):
    c = relay_ii.session()
    token = h.plain_token()
    assert c.cmd("AUTH PLAIN " + token).code == 235
    c2 = relay_ii.session()
    assert c2.cmd("AUTH LOGIN " + h.b64(h.USER)).code == 334
    assert c2.cmd(h.b64(h.PASSWORD)).code == 235
    assert c.cmd("QUIT").code == 221 and c2.cmd("QUIT").code == 221
    assert c.closed() and c2.closed()
    log = relay_ii.relabel.log
    assert token not in log
    assert h.b64(h.PASSWORD) not in log
    # the password itself (not as part of a longer word such as a tmp path)
    assert not h.re.search(rf"(?<![A-Za-z0-9_]){h.PASSWORD}(?![A-Za-z0-9_])", log)
