"""Real clients through relabel: python smtplib, curl, swaks."""

import os

import pytest

import harness as h

BODY = (b"From: Client <a@example.net>\r\nTo: b@example.org\r\nSubject: real client\r\n\r\n"
        b"Hello from a real client.\r\n.a line with a dot\r\n\xc3\xa9 8-bit\r\n")


@pytest.mark.parametrize("server_name", [h.BRAND_HOST, h.LOCALHOST], ids=["sni-name", "ip-san"])
def test_smtplib(relay, client_ctx, server_name):
    if relay.client_mode == "implicit":
        s = h.NamedSMTP_SSL(server_name, relay.relabel.ports["smtps"], context=client_ctx,
                            timeout=h.TIMEOUT)
    else:
        s = h.NamedSMTP(server_name, relay.relabel.ports["submission"], timeout=h.TIMEOUT)
        code, msg = s.ehlo()
        assert code == 250 and msg.startswith(b"smtp.example.com")
        assert "starttls" in s.esmtp_features and "auth" not in s.esmtp_features
        s.starttls(context=client_ctx)
    try:
        code, msg = s.ehlo()
        assert code == 250 and msg.split(b"\n")[0] == b"smtp.example.com"
        assert b"mailgun" not in msg.lower()
        s.login(h.USER, h.PASSWORD)
        assert s.sendmail("a@example.net", ["b@example.org", "c@example.org"], BODY) == {}
        code, msg = s.quit()
        assert code == 221 and b"mailgun" not in msg.lower()
    finally:
        s.close()
    (m,) = relay.upstream.recorder.wait_messages(1)
    assert m.data == BODY and m.rcpt_tos == ["b@example.org", "c@example.org"]
    assert m.auth_user == h.USER


@pytest.mark.parametrize("up_mode", ["implicit", "starttls"])
@pytest.mark.parametrize("scheme", ["smtps", "smtp"])
@pytest.mark.parametrize("mech", ["PLAIN", "LOGIN"])
def test_curl(upstream_factory, relabel_factory, certs, tmp_path, scheme, up_mode, mech):
    up = upstream_factory(up_mode)
    rl = relabel_factory(up.port, up_mode)
    f = tmp_path / "msg.eml"
    f.write_bytes(BODY)
    port = rl.ports["smtps" if scheme == "smtps" else "submission"]
    res = h.curl_send(port, scheme, h.BRAND_HOST, os.path.join(certs, "ca.crt"), str(f),
                      "a@example.net", ["b@example.org"], extra=["--login-options", f"AUTH={mech}"])
    assert res.returncode == 0, res.stderr
    (m,) = up.recorder.wait_messages(1)
    assert m.data == BODY and m.mail_from == "a@example.net" and m.auth_user == h.USER


def test_curl_rejects_wrong_brand_name(upstream_factory, relabel_factory, certs, tmp_path):
    """The brand certificate really is checked: another name must fail in curl."""
    up = upstream_factory("implicit")
    rl = relabel_factory(up.port, "implicit")
    f = tmp_path / "msg.eml"
    f.write_bytes(BODY)
    res = h.curl_send(rl.ports["smtps"], "smtps", "smtp.wrong.example", os.path.join(certs, "ca.crt"),
                      str(f), "a@example.net", ["b@example.org"])
    assert res.returncode != 0
    assert up.messages == []


@pytest.mark.parametrize("up_mode", ["implicit", "starttls"])
@pytest.mark.parametrize("tls", ["implicit", "starttls"])
@pytest.mark.parametrize("auth", ["PLAIN", "LOGIN"])
def test_swaks(upstream_factory, relabel_factory, certs, tls, auth, up_mode):
    up = upstream_factory(up_mode)
    rl = relabel_factory(up.port, up_mode)
    port = rl.ports["smtps" if tls == "implicit" else "submission"]
    res = h.swaks_send(port, tls, os.path.join(certs, "ca.crt"), h.BRAND_HOST, "a@example.net",
                       "b@example.org", auth=auth, header="X-E2E: swaks through relabel")
    out = res.stdout.decode("utf-8", "replace")
    assert res.returncode == 0, out[-3000:]
    (m,) = up.recorder.wait_messages(1)
    assert b"X-E2E: swaks through relabel\r\n" in m.data
    assert m.mail_from == "a@example.net" and m.auth_user == h.USER
    # swaks prints every server line it received ("<-" / "<~"): none names the provider
    server_lines = [l for l in out.splitlines() if l.lstrip().startswith(("<-", "<~", "<**", "<~*"))]
    assert server_lines
    assert not [l for l in server_lines if h.PROVIDER_RE.search(l.encode())], server_lines
