"""Relay basics, in all four modes: delivery byte-exact, branding, capabilities, pipelining."""

import pytest

import harness as h

BODIES = {
    "empty": b"",
    "small": b"From: a@example.net\r\nTo: b@example.org\r\nSubject: hi\r\n\r\nHello.\r\n",
    "8bit": b"Subject: =?utf-8?q?x?=\r\n\r\n\xc3\xa9t\xc3\xa9 \xff\xfe\x80\x81 \x7f\r\n\xe2\x82\xac\r\n",
    "dots": b"Subject: dots\r\n\r\n.\r\n..\r\n...\r\n.leading\r\n. space\r\nend.\r\n.",
    "10MB": h.make_body(10 * 1024 * 1024, b"10MB", line_len=998),
}


@pytest.mark.parametrize("name", list(BODIES))
def test_delivery_byte_exact(relay, name):
    body = BODIES[name]
    expected = body if body.endswith(b"\r\n") or not body else body + b"\r\n"
    c = relay.session()
    assert c.auth_plain().code == 235
    r = c.send_message(body, "sender@example.net", ["rcpt1@example.org", "rcpt2@example.org"])
    assert r.code == 250, r
    (m,) = relay.upstream.recorder.wait_messages(1)
    assert len(m.data) == len(expected)
    assert m.data == expected
    assert m.mail_from == "sender@example.net"
    assert m.rcpt_tos == ["rcpt1@example.org", "rcpt2@example.org"]
    assert m.auth_user == h.USER and m.tls
    assert c.cmd("QUIT").code == 221
    assert not c.provider_leaks()


def test_greeting_and_ehlo_branding(relay):
    c = relay.connect()
    assert c.greeting.raw == b"220 smtp.example.com ESMTP ready\r\n"
    if relay.client_mode == "starttls":
        c.ehlo()
        c.starttls()
    r = c.ehlo()
    assert r.code == 250
    assert r.first in (b"250-smtp.example.com", b"250 smtp.example.com")
    caps = h.capabilities(r)
    assert "STARTTLS" not in caps
    assert "CHUNKING" not in caps and "BDAT" not in caps
    assert set(caps["AUTH"].split()) >= {"PLAIN", "LOGIN"}
    assert caps.get("SIZE") == str(h.UPSTREAM_SIZE)  # the upstream's own SIZE
    assert "PIPELINING" in caps and "8BITMIME" in caps
    assert not c.provider_leaks()
    # the upstream really saw the client's EHLO (relayed, not answered locally)
    assert any(x.verb == "EHLO" and b"client.e2e.test" in x.line and x.tls
               for x in relay.upstream.recorder.commands)


@pytest.mark.relabel_opts(upstream_opts={"max_message_size": "25M"})
def test_size_capped_by_max_message_size(relay_ii):
    c = relay_ii.session(ehlo=False)
    caps = h.capabilities(c.ehlo())
    assert caps.get("SIZE") == str(25 * 1024 * 1024)


def test_no_provider_name_in_any_reply(relay):
    c = relay.connect()
    if relay.client_mode == "starttls":
        c.ehlo()
        c.cmd("NOOP")
        c.starttls()
    c.ehlo()
    c.cmd("HELP")
    c.cmd("NOOP")
    c.cmd("AUTH PLAIN " + h.plain_token(h.USER, "wrong"))
    c.cmd("AUTH LOGIN")
    c.cmd(h.b64(h.USER))
    assert c.cmd(h.b64(h.PASSWORD)).code == 235
    c.cmd("VRFY postmaster")
    c.cmd("MAIL FROM:<sender@example.net>")
    c.cmd("RCPT TO:<reject-me@example.org>")
    c.cmd("RCPT TO:<ok@example.org>")
    c.cmd("DATA")
    c.send(h.stuff(BODIES["small"]))
    assert c.read_reply().code == 250
    c.cmd("RSET")
    c.cmd("EHLO again.e2e.test")
    q = c.cmd("QUIT")
    assert q.code == 221
    assert c.closed()
    assert len(c.replies) >= 15
    leaks = c.provider_leaks()
    assert not leaks, leaks


def test_upstream_codes_are_relayed(relay):
    c = relay.session()
    assert c.auth_plain().code == 235
    assert c.cmd("MAIL FROM:<s@example.net>").code == 250
    r = c.cmd("RCPT TO:<reject@example.org>")
    assert r.code == 550, r  # the upstream's refusal, not a local 250
    assert c.cmd("RCPT TO:<fine@example.org>").code == 250
    r = c.cmd("DATA")
    assert r.code == 354
    c.send(h.stuff(b"x\r\n"))
    r = c.read_reply()
    assert r.code == 250 and r.raw.startswith(b"250 2.0.0 ")
    (m,) = relay.upstream.recorder.wait_messages(1)
    assert m.rcpt_tos == ["fine@example.org"]
    assert not c.provider_leaks()


def test_pipelining_replies_in_order(relay):
    c = relay.session()
    assert c.auth_plain().code == 235
    c.send(b"MAIL FROM:<p@example.net>\r\nRCPT TO:<one@example.org>\r\n"
           b"RCPT TO:<reject@example.org>\r\nRCPT TO:<two@example.org>\r\nDATA\r\n")
    codes = [c.read_reply().code for _ in range(5)]
    assert codes == [250, 250, 550, 250, 354]
    body = b"Subject: pipelined\r\n\r\nbody\r\n"
    c.send(h.stuff(body) + b"MAIL FROM:<p2@example.net>\r\nRCPT TO:<three@example.org>\r\nDATA\r\n")
    assert [c.read_reply().code for _ in range(4)] == [250, 250, 250, 354]
    c.send(h.stuff(body) + b"QUIT\r\n")
    assert [c.read_reply().code for _ in range(2)] == [250, 221]
    m1, m2 = relay.upstream.recorder.wait_messages(2)
    assert (m1.mail_from, m1.rcpt_tos, m1.data) == ("p@example.net", ["one@example.org", "two@example.org"], body)
    assert (m2.mail_from, m2.rcpt_tos, m2.data) == ("p2@example.net", ["three@example.org"], body)


def test_several_messages_one_session(relay_ii):
    c = relay_ii.session()
    assert c.auth_plain().code == 235
    bodies = [b"one\r\n", b"two\r\n", b""]
    for b in bodies:
        assert c.send_message(b).code == 250
        assert c.cmd("RSET").code == 250
    msgs = relay_ii.upstream.recorder.wait_messages(3)
    assert [m.data for m in msgs] == bodies
    # all in one upstream connection (relabel relays, it does not re-deliver)
    assert len([x for x in relay_ii.upstream.recorder.conns if x.commands]) == 1


def test_concurrent_sessions(relay_ii):
    clients = [relay_ii.session() for _ in range(8)]
    for i, c in enumerate(clients):
        assert c.auth_plain().code == 235
        assert c.cmd(f"MAIL FROM:<s{i}@example.net>").code == 250
    for i, c in enumerate(clients):
        assert c.cmd(f"RCPT TO:<r{i}@example.org>").code == 250
        assert c.cmd("DATA").code == 354
    for i, c in enumerate(clients):
        c.send(h.stuff(f"message {i}\r\n".encode()))
    for c in clients:
        assert c.read_reply().code == 250
    msgs = relay_ii.upstream.recorder.wait_messages(8)
    got = sorted((m.mail_from, m.rcpt_tos[0], m.data) for m in msgs)
    assert got == sorted((f"s{i}@example.net", f"r{i}@example.org", f"message {i}\r\n".encode())
                         for i in range(8))
