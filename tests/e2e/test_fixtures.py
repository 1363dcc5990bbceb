"""
Checks of the harness itself, without relabel: the upstreams really speak
TLS with the test CA, record byte-exact, misbehave as asked; the clients'
command lines work; the process wrapper handles a well-behaved fake daemon.
If these fail, a failure elsewhere says nothing about relabel.
"""

import os
import ssl
import sys

import pytest

import harness as h


def up_ctx(certs):
    return h.client_context(certs)


def test_cert_set(certs):
    ctx = up_ctx(certs)
    # the CA vouches for the upstream and the brand; mismatch.key fits nothing
    for name in ("upstream", "brand"):
        h.server_context(certs, name)
    probe = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    with pytest.raises(ssl.SSLError):
        probe.load_cert_chain(os.path.join(certs, "brand.crt"), os.path.join(certs, "mismatch.key"))
    assert ctx.verify_mode == ssl.CERT_REQUIRED and ctx.check_hostname


@pytest.mark.parametrize("tls", ["implicit", "starttls"])
def test_aiosmtpd_upstream_smtplib(upstream_factory, certs, tls):
    up = upstream_factory(tls)
    body = b"Subject: t\r\n\r\n.leading dot\r\n..two dots\r\n8bit \xe9\xff\x80\r\n.\r\nend\r\n"
    if tls == "implicit":
        s = h.NamedSMTP_SSL(h.UPSTREAM_VERIFY_NAME, up.port, context=up_ctx(certs), timeout=h.TIMEOUT)
    else:
        s = h.NamedSMTP(h.UPSTREAM_VERIFY_NAME, up.port, timeout=h.TIMEOUT)
        code, _ = s.ehlo()
        assert "starttls" in s.esmtp_features and "auth" not in s.esmtp_features
        s.starttls(context=up_ctx(certs))
    try:
        code, msg = s.ehlo()
        assert code == 250 and msg.startswith(h.UPSTREAM_HOSTNAME.encode())
        assert "chunking" in s.esmtp_features and "pipelining" in s.esmtp_features
        assert s.esmtp_features["size"] == str(h.UPSTREAM_SIZE)
        assert set(s.esmtp_features["auth"].split()) >= {"PLAIN", "LOGIN"}
        assert "starttls" not in s.esmtp_features
        s.login(h.USER, h.PASSWORD)
        refused = s.sendmail("a@example.net", ["b@example.org", "c@example.org"], body)
        assert refused == {}
        code, msg = s.quit()
        assert (code, msg) == (221, h.UPSTREAM_QUIT[4:].encode())
    finally:
        s.close()
    (m,) = up.recorder.wait_messages(1)
    assert m.data == body
    assert m.mail_from == "a@example.net" and m.rcpt_tos == ["b@example.org", "c@example.org"]
    assert m.auth_user == h.USER and m.tls
    verbs = up.recorder.verbs()
    assert "AUTH" in verbs and "MAIL" in verbs and verbs.count("RCPT") == 2
    assert all(c.tls for c in up.recorder.commands if c.verb in ("AUTH", "MAIL", "RCPT", "DATA"))
    h.wait_for(up.recorder.all_closed, what="connection close recorded")


def test_aiosmtpd_upstream_raw_starttls_auth(upstream_factory, certs):
    up = upstream_factory("starttls", close_after_535=False)
    c = h.Client(up.port, up_ctx(certs), server_hostname=h.UPSTREAM_VERIFY_NAME)
    try:
        assert c.greeting.raw == f"220 {h.UPSTREAM_HOSTNAME} {h.UPSTREAM_IDENT}\r\n".encode()
        assert c.ehlo().code == 250
        assert c.cmd("MAIL FROM:<a@b>").code == 530
        c.starttls()
        caps = h.capabilities(c.ehlo())
        assert "STARTTLS" not in caps and "AUTH" in caps
        r = c.cmd("AUTH LOGIN")
        assert r.code == 334
        assert c.cmd(h.b64("user")).code == 334
        assert c.cmd(h.b64("wrong")).code == 535
        assert c.cmd("AUTH PLAIN").code == 334
        assert c.cmd(h.plain_token()).code == 235
        assert c.send_message(b"").code == 250
        assert c.cmd("RCPT TO:<reject@example.org>").code == 503  # no MAIL yet
        assert c.cmd("QUIT").code == 221
        assert c.closed()
    finally:
        c.close()
    (m,) = up.recorder.wait_messages(1)
    assert m.data == b""
    cmds = up.recorder.commands
    assert [x.verb for x in cmds if not x.tls] == ["EHLO", "MAIL", "STARTTLS"]
    assert c.provider_leaks()  # the fake really does say Mailgun


def test_aiosmtpd_upstream_closes_after_535_like_mailgun(upstream_factory, certs):
    up = upstream_factory("implicit")
    c = h.Client(up.port, up_ctx(certs), tls="implicit", server_hostname=h.UPSTREAM_VERIFY_NAME)
    try:
        assert c.ehlo().code == 250
        assert c.cmd("AUTH PLAIN " + h.plain_token(h.USER, "wrong")).code == 535
        assert c.closed()
    finally:
        c.close()
    assert up.recorder.auth_closes == 1


@pytest.mark.parametrize("cert", ["wrongname", "expired", "unknownca"])
def test_bad_certificates_fail_verification(upstream_factory, certs, cert):
    up = upstream_factory("implicit", cert=cert)
    with pytest.raises(ssl.SSLCertVerificationError):
        h.Client(up.port, up_ctx(certs), tls="implicit", server_hostname=h.UPSTREAM_VERIFY_NAME)
    good = upstream_factory("implicit")
    c = h.Client(good.port, up_ctx(certs), tls="implicit", server_hostname=h.UPSTREAM_VERIFY_NAME)
    c.close()


def test_scripted_no_starttls_and_injection(scripted_factory, certs):
    up = scripted_factory(tls="starttls", offer_starttls=False)
    c = h.Client(up.port, up_ctx(certs), server_hostname=h.UPSTREAM_VERIFY_NAME)
    try:
        assert "STARTTLS" not in h.capabilities(c.ehlo())
        assert c.cmd("STARTTLS").code == 503
    finally:
        c.close()

    up = scripted_factory(tls="starttls", starttls_extra=b"250 2.1.0 injected\r\n")
    c = h.Client(up.port, up_ctx(certs), server_hostname=h.UPSTREAM_VERIFY_NAME)
    try:
        assert "STARTTLS" in h.capabilities(c.ehlo())
        c.send(b"STARTTLS\r\n")
        assert c.read_reply().code == 220
        if not c.ls.buf:
            c.ls._fill()  # blocks at most TIMEOUT
        assert bytes(c.ls.buf) == b"250 2.1.0 injected\r\n"
    finally:
        c.close()


def test_scripted_full_session_both_modes(scripted_factory, certs):
    for tls in ("implicit", "starttls"):
        up = scripted_factory(tls=tls)
        c = h.Client(up.port, up_ctx(certs), tls="implicit" if tls == "implicit" else None,
                     server_hostname=h.UPSTREAM_VERIFY_NAME)
        try:
            if tls == "starttls":
                c.ehlo()
                c.starttls()
            assert "AUTH" in h.capabilities(c.ehlo())
            assert c.cmd("AUTH LOGIN " + h.b64("user")).code == 334
            assert c.cmd(h.b64("secret")).code == 235
            body = b"x\r\n.\r\n..\r\n.y\r\n"
            # pipelined: everything in one write
            c.send(b"MAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nDATA\r\n")
            assert [c.read_reply().code for _ in range(3)] == [250, 250, 354]
            c.send(h.stuff(body) + b"QUIT\r\n")
            assert c.read_reply().code == 250
            assert c.read_reply().code == 221
        finally:
            c.close()
        (m,) = up.recorder.wait_messages(1)
        assert m.data == body and m.auth_user == "user" and m.rcpt_tos == ["c@d"]


def test_scripted_reset_mid_data(scripted_factory, certs):
    up = scripted_factory(tls="implicit", data_mode="reset", reset_after=32 * 1024)
    c = h.Client(up.port, up_ctx(certs), tls="implicit", server_hostname=h.UPSTREAM_VERIFY_NAME)
    try:
        c.ehlo()
        c.cmd("MAIL FROM:<a@b>")
        c.cmd("RCPT TO:<c@d>")
        assert c.cmd("DATA").code == 354
        with pytest.raises((h.ConnectionClosed, OSError)):
            c.send(h.stuff(h.make_body(4 * 1024 * 1024)))
            c.read_reply()
    finally:
        c.close()
    assert up.messages == []
    h.wait_for(lambda: any("reset after" in n for x in up.recorder.conns for n in x.notes))


def test_scripted_slow_reader_drop_and_stall(scripted_factory, certs):
    up = scripted_factory(tls="implicit", data_mode="slow", slow_rate=4 * 1024 * 1024)
    body = h.make_body(2 * 1024 * 1024)
    c = h.Client(up.port, up_ctx(certs), tls="implicit", server_hostname=h.UPSTREAM_VERIFY_NAME)
    t0 = h.time.monotonic()
    try:
        c.ehlo()
        assert c.send_message(body).code == 250
    finally:
        c.close()
    assert h.time.monotonic() - t0 >= 0.4  # 2 MB at 4 MB/s
    assert up.messages[0].data == body

    up = scripted_factory(tls="implicit", drop_on="RCPT")
    c = h.Client(up.port, up_ctx(certs), tls="implicit", server_hostname=h.UPSTREAM_VERIFY_NAME)
    try:
        c.ehlo()
        assert c.cmd("MAIL FROM:<a@b>").code == 250
        with pytest.raises(h.ConnectionClosed):
            c.cmd("RCPT TO:<c@d>")
    finally:
        c.close()

    up = scripted_factory(tls="implicit", stall_on="MAIL")
    c = h.Client(up.port, up_ctx(certs), tls="implicit", server_hostname=h.UPSTREAM_VERIFY_NAME,
                 timeout=0.5)
    try:
        c.ehlo()
        with pytest.raises((TimeoutError, h.socket.timeout)):
            c.cmd("MAIL FROM:<a@b>")
    finally:
        c.close()


@pytest.mark.parametrize("scheme", ["smtps", "smtp"])
def test_curl_against_upstream(upstream_factory, certs, tmp_path, scheme):
    up = upstream_factory("implicit" if scheme == "smtps" else "starttls")
    body = b"From: a@example.net\r\nSubject: curl\r\n\r\nline\r\n.dot line\r\n"
    f = tmp_path / "msg.eml"
    f.write_bytes(body)
    res = h.curl_send(up.port, scheme, h.UPSTREAM_VERIFY_NAME, os.path.join(certs, "ca.crt"),
                      str(f), "a@example.net", ["b@example.org"])
    assert res.returncode == 0, res.stderr
    (m,) = up.recorder.wait_messages(1)
    assert m.data == body and m.auth_user == h.USER


@pytest.mark.parametrize("tls,auth", [("implicit", "PLAIN"), ("starttls", "LOGIN")])
def test_swaks_against_upstream(upstream_factory, certs, tls, auth):
    up = upstream_factory(tls)
    res = h.swaks_send(up.port, tls, os.path.join(certs, "ca.crt"), h.UPSTREAM_VERIFY_NAME,
                       "a@example.net", "b@example.org", auth=auth, header="X-E2E: swaks")
    assert res.returncode == 0, res.stdout[-2000:]
    (m,) = up.recorder.wait_messages(1)
    assert b"X-E2E: swaks\r\n" in m.data and m.auth_user == h.USER
    # swaks 20201014's --tls-verify checks the chain (not the name): an unknown
    # CA must make it fail, or its runs against relabel would prove nothing
    bad = upstream_factory(tls, cert="unknownca")
    res = h.swaks_send(bad.port, tls, os.path.join(certs, "ca.crt"), h.UPSTREAM_VERIFY_NAME,
                       "a@example.net", "b@example.org", auth=auth)
    assert res.returncode != 0
    assert bad.messages == []


def test_config_text_line_numbers(certs):
    cfg = h.relabel_config(certs, 2525, "implicit", {"smtps": 1, "submission": 2},
                           relabel_opts={"bogus": "1"})
    lines = cfg.text().splitlines()
    assert lines[cfg.line_of("[relabel]", "bogus") - 1] == "bogus = 1"
    assert lines[cfg.line_of('[brand "example"]', "key") - 1].startswith("key = ")
    assert lines[cfg.line_of('[upstream "test"]') - 1] == '[upstream "test"]'


FAKE_DAEMON = r"""
import signal, sys, time
signal.signal(signal.SIGTERM, lambda *a: sys.exit(0))
print("started", file=sys.stderr, flush=True)
print("info relabel ready", file=sys.stderr, flush=True)
while True:
    time.sleep(1)
"""


def test_process_wrapper_with_fake_daemon(tmp_path):
    script = tmp_path / "fake-relabel"
    script.write_text(f"#!{sys.executable}\n" + FAKE_DAEMON)
    script.chmod(0o755)
    r = h.Relabel(str(script), str(tmp_path / "none.ini"), {}).start()
    assert r.rss_kb() > 0
    assert "started" in r.log
    assert r.stop() == (0, False)

    bad = tmp_path / "never-ready"
    bad.write_text("#!/bin/sh\necho oops >&2\nexit 3\n")
    bad.chmod(0o755)
    with pytest.raises(AssertionError, match="oops"):
        h.Relabel(str(bad), str(tmp_path / "none.ini"), {}).start()
