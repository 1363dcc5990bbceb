"""msmtp (Debian package msmtp, GnuTLS) through relabel: implicit TLS and STARTTLS, AUTH PLAIN and LOGIN."""

import os
import shutil

import pytest

import harness as h

pytestmark = pytest.mark.skipif(shutil.which("msmtp") is None,
                                reason="msmtp not installed (Debian package msmtp)")

BODY = (b"From: msmtp <a@example.net>\r\nTo: b@example.org\r\nSubject: msmtp through relabel\r\n\r\n"
        b"Hello from msmtp.\r\n.a line with a dot\r\n..two dots\r\n\xc3\xa9 8-bit\r\n\r\nlast line\r\n")


def msmtp_send(tmp_path, certs, port, tls, auth, body=BODY, host_override=h.BRAND_HOST,
               rcpts=("b@example.org", "c@example.org")):
    conf = tmp_path / "msmtprc"
    lines = [
        "defaults",
        "timeout 20",
        "syslog off",
        "account relabel",
        f"host {h.LOCALHOST}",
        f"port {port}",
        "tls on",
        f"tls_starttls {'off' if tls == 'implicit' else 'on'}",
        f"tls_trust_file {os.path.join(certs, 'ca.crt')}",
        f"tls_host_override {host_override}",
        "domain client.msmtp.test",
        f"auth {auth}",
        f"user {h.USER}",
        f"password {h.PASSWORD}",
        "from a@example.net",
        "set_from_header off",   # deliver the message as given: no headers added
        "set_date_header off",
        "set_msgid_header off",
        "account default : relabel",
    ]
    conf.write_text("\n".join(lines) + "\n")
    conf.chmod(0o600)  # msmtp refuses a password in a file others can read
    args = ["msmtp", "-C", str(conf), "--debug", "-f", "a@example.net", "--"] + list(rcpts)
    return h.run_tool(args, timeout=60, input=body)


@pytest.mark.parametrize("up_mode", ["implicit", "starttls"])
@pytest.mark.parametrize("tls", ["implicit", "starttls"])
@pytest.mark.parametrize("auth", ["plain", "login"])
def test_msmtp_delivers_byte_exact(upstream_factory, relabel_factory, certs, tmp_path, tls, auth,
                                   up_mode):
    up = upstream_factory(up_mode)
    rl = relabel_factory(up.port, up_mode)
    port = rl.ports["smtps" if tls == "implicit" else "submission"]
    res = msmtp_send(tmp_path, certs, port, tls, auth)
    out = (res.stdout + res.stderr).decode("utf-8", "replace")
    assert res.returncode == 0, out[-4000:]
    (m,) = up.recorder.wait_messages(1)
    assert m.data == BODY, (m.data, BODY)
    assert m.mail_from == "a@example.net"
    assert m.rcpt_tos == ["b@example.org", "c@example.org"]
    assert m.auth_user == h.USER and m.tls
    auths = [x.line for x in up.recorder.commands if x.verb == "AUTH"]
    assert len(auths) == 1 and auths[0].upper().startswith(b"AUTH " + auth.upper().encode()), auths
    # msmtp --debug prints every server line as "<-- ...": none names the provider
    server_lines = [l for l in out.splitlines() if l.startswith("<-- ")]
    assert server_lines and server_lines[0].startswith("<-- 220 smtp.example.com "), out[-4000:]
    assert not [l for l in server_lines if h.PROVIDER_RE.search(l.encode())], server_lines
    # the password is never in relabel's log
    assert h.PASSWORD not in rl.log.replace(str(tmp_path), "")


def test_msmtp_checks_the_brand_name(upstream_factory, relabel_factory, certs, tmp_path):
    """Control: with another name msmtp's certificate check fails and nothing is sent."""
    up = upstream_factory("implicit")
    rl = relabel_factory(up.port, "implicit")
    res = msmtp_send(tmp_path, certs, rl.ports["smtps"], "implicit", "plain",
                     host_override="smtp.wrong.example")
    assert res.returncode != 0, res
    assert up.messages == []
    assert not up.recorder.saw("AUTH")
