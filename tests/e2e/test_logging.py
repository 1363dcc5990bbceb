"""
relabel's log: one line per message and per session, no provider text
after start-up, JSON format, plaintext AUTH warnings without secrets, and
client text escaped.
"""

import json
import re

import pytest

import harness as h

BODY = (b"From: a@example.net\r\nTo: b@example.org\r\nSubject: logged\r\n"
        b"Message-ID:\r\n <20261126.logged@example.net>\r\n\r\nHello, log.\r\n")


def after_ready(log):
    i = log.index(h.Relabel.READY)
    return log[log.index("\n", i) + 1:]


def session_end(rl, sid=None):
    rx = r"session end .*" if sid is None else rf"{sid} session end .*"
    rl.wait_log(rx)
    return [l for l in rl.log.splitlines() if re.search(rx, l)]


def kv(line):
    """key=value pairs of a log line (values may be "quoted")."""
    return {m.group(1): m.group(3) if m.group(3) is not None else m.group(2)
            for m in re.finditer(r'(\w+)=("((?:[^"\\]|\\.)*)"|\S*)', line)}


def test_message_and_session_lines(relay):
    c = relay.session()
    client_port = c.ls.sock.getsockname()[1]
    assert c.auth_plain().code == 235
    r = c.send_message(BODY, "logged@example.net", ["r1@example.org", "r2@example.org"])
    assert r.code == 250, r
    assert c.cmd("QUIT").code == 221
    assert c.closed()
    rl = relay.relabel
    (end,) = session_end(rl)
    log = rl.log
    msgs = [l for l in log.splitlines() if " message from=" in l]
    assert len(msgs) == 1, msgs
    m = re.search(r" info (\S+) message from=<logged@example\.net> rcpts=2 size=(\d+) "
                  r'message_id="<20261126\.logged@example\.net>" result="250 ([^"]*)"$', msgs[0])
    assert m, msgs[0]
    sid = m.group(1)
    assert int(m.group(2)) in (len(BODY), len(BODY) + 3), msgs[0]  # with or without ".\r\n"
    assert m.group(3).startswith("2.0.0 Great success"), msgs[0]
    assert not h.PROVIDER_RE.search(msgs[0].encode()), msgs[0]  # the upstream's host name is hidden
    assert end.split(" session end ")[0].endswith(sid), (end, sid)
    f = kv(end)
    assert f["client"] == f"127.0.0.1:{client_port}", end
    assert f["listener"] == ("smtps" if relay.client_mode == "implicit" else "submission"), end
    assert f["brand"] == "example", end
    assert f["tls"] == "TLSv1.2", end
    assert re.match(r"TLS-ECDHE-\w+-WITH-(AES-\d+-GCM|CHACHA20-POLY1305)-SHA\d+$", f["cipher"]), end
    assert f["upstream"] == f"127.0.0.1:{relay.upstream.port}", end
    assert f["up_tls"] == "TLSv1.2", end
    assert f["messages"] == "1", end
    assert f["reason"] == "quit", end
    assert int(f["in"]) > len(BODY) and int(f["out"]) > 0, end
    assert re.match(r"\d+\.\d{3}s$", f["duration"]), end


def test_two_messages_two_lines(relay_ii):
    c = relay_ii.session()
    assert c.auth_plain().code == 235
    assert c.send_message(b"one\r\n", "first@example.net").code == 250
    assert c.send_message(b"two\r\n", "second@example.net", ["ok@example.org"]).code == 250
    assert c.cmd("QUIT").code == 221
    (end,) = session_end(relay_ii.relabel)
    msgs = [l for l in relay_ii.relabel.log.splitlines() if " message from=" in l]
    assert [re.search(r"from=<([^>]*)>", l).group(1) for l in msgs] == ["first@example.net",
                                                                      "second@example.net"], msgs
    assert kv(end)["messages"] == "2", end


def test_no_provider_text_in_log_after_ready(relay):
    c = relay.session()
    assert c.auth_plain().code == 235
    assert c.send_message(BODY).code == 250
    c.cmd("RCPT TO:<reject@example.org>")  # the upstream's refusal names its host
    c.cmd("HELP")
    assert c.cmd("QUIT").code == 221
    assert c.closed()
    rl = relay.relabel
    session_end(rl)
    tail = after_ready(rl.log)
    assert "session end" in tail
    assert h.UPSTREAM_IDENT not in tail, tail
    assert h.UPSTREAM_HOSTNAME not in tail, tail
    leaks = [l for l in tail.splitlines() if h.PROVIDER_RE.search(l.encode())]
    assert not leaks, leaks


@pytest.mark.relabel_opts(relabel_opts={"log_format": "json"})
def test_json_log_format(relay):
    c = relay.session()
    assert c.auth_plain().code == 235
    # client text with quotes, backslashes and control bytes must not break the JSON
    c.cmd(b'MAIL FROM:<"q\\"x\x01\x1b[31m"@example.net>')
    c.cmd("RSET")
    assert c.send_message(BODY, "json@example.net").code == 250
    c.cmd(b"NOOP \x7f\xff\xc3\xa9")
    assert c.cmd("QUIT").code == 221
    assert c.closed()
    rl = relay.relabel
    rl.wait_log(r"session end")
    rl.stop()  # so the start-up and shutdown lines are all in
    lines = rl.log.splitlines()
    assert len(lines) > 5
    objs = []
    for line in lines:
        try:
            o = json.loads(line)
        except ValueError as e:
            raise AssertionError(f"not a JSON line: {line!r} ({e})")
        assert isinstance(o, dict), line
        assert {"time", "level", "msg"} <= set(o), line
        assert re.match(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$", o["time"]), line
        assert o["level"] in ("debug", "info", "warn", "warning", "error"), line
        assert "\x1b" not in o["msg"] and "\x01" not in o["msg"], line
        objs.append(o)
    msgs = [o["msg"] for o in objs]
    assert any(h.Relabel.READY in m for m in msgs)
    assert len([m for m in msgs if re.search(r"message from=<json@example\.net> rcpts=1 .*result=\"250 ", m)]) == 1
    assert any("session end" in m and 'reason="quit"' in m for m in msgs), msgs


@pytest.mark.relabel_opts(listener_opts={"submission": {"require_tls": "no"}})
@pytest.mark.parametrize("how", ["plain-ir", "plain", "login-ir", "login"])
def test_plaintext_auth_warning_without_password(relay_st, how):
    c = relay_st.connect()
    client_port = c.ls.sock.getsockname()[1]
    assert c.ehlo().code == 250
    token = h.plain_token()
    if how == "plain-ir":
        r = c.cmd("AUTH PLAIN " + token)
    elif how == "plain":
        assert c.cmd("AUTH PLAIN").code == 334
        r = c.cmd(token)
    elif how == "login-ir":
        assert c.cmd("AUTH LOGIN " + h.b64(h.USER)).code == 334
        r = c.cmd(h.b64(h.PASSWORD))
    else:
        assert c.cmd("AUTH LOGIN").code == 334
        assert c.cmd(h.b64(h.USER)).code == 334
        r = c.cmd(h.b64(h.PASSWORD))
    assert r.code == 235, r
    assert c.send_message(b"plaintext auth\r\n").code == 250
    assert c.cmd("QUIT").code == 221
    rl = relay_st.relabel
    session_end(rl)
    log = rl.log
    warn = [l for l in log.splitlines() if "plaintext AUTH" in l]
    assert len(warn) == 1, warn
    assert re.search(r" warn\w* \S+ plaintext AUTH user=\"user\" client=127\.0\.0\.1:" + str(client_port)
                     + r" listener=submission$", warn[0]), warn
    assert token not in log
    assert h.b64(h.PASSWORD) not in log
    assert not re.search(rf"(?<![A-Za-z0-9_]){h.PASSWORD}(?![A-Za-z0-9_])", log)


def test_no_plaintext_auth_warning_over_tls(relay_st):
    c = relay_st.connect()
    c.ehlo()
    c.starttls()
    c.ehlo()
    assert c.auth_plain().code == 235
    assert c.cmd("QUIT").code == 221
    session_end(relay_st.relabel)
    assert "plaintext AUTH" not in relay_st.relabel.log


@pytest.mark.relabel_opts(listener_opts={"submission": {"require_tls": "no"}})
def test_plaintext_auth_user_is_escaped(relay_st):
    c = relay_st.connect()
    c.ehlo()
    c.cmd("AUTH PLAIN " + h.plain_token("ev\x1b[2Jil\"\nx", "pw-not-logged"))
    c.cmd("QUIT")
    session_end(relay_st.relabel)
    log = relay_st.relabel.log
    (warn,) = [l for l in log.splitlines() if "plaintext AUTH" in l]
    assert "\x1b" not in log
    assert 'user="ev\\x1b[2Jil\\x22\\x0ax"' in warn, warn
    assert "pw-not-logged" not in log


@pytest.mark.parametrize("where", ["relay", "pre-tls"])
def test_client_control_bytes_escaped(relay_st, where):
    c = relay_st.connect()
    c.ehlo()
    if where == "relay":
        c.starttls()
        c.ehlo()
        assert c.auth_plain().code == 235
    c.cmd(b"MAIL FROM:<a\x1b[31m@b>")
    c.cmd(b"EHLO evil\x07\x1b]0;title\x07")
    c.cmd(b"XYZZY \x1b[1mbold\x08")
    c.cmd("QUIT")
    session_end(relay_st.relabel)
    log = relay_st.relabel.log
    for raw in ("\x1b", "\x07", "\x08"):
        assert raw not in log, [l for l in log.splitlines() if raw in l]
    if where == "relay":
        assert "a\\x1b[31m@b" in log, log[-3000:]


@pytest.mark.relabel_opts(upstream_opts={"max_message_size": "1M"})
@pytest.mark.parametrize("how", ["too-big", "client-gone"])
def test_session_end_names_upstream_tls_after_aborted_data(relay_ii, how):
    """The session line shows both legs' TLS however the session ended (DESIGN: Close)."""
    c = relay_ii.session()
    assert c.auth_plain().code == 235
    assert c.cmd("MAIL FROM:<abort@example.net>").code == 250
    assert c.cmd("RCPT TO:<r@example.org>").code == 250
    assert c.cmd("DATA").code == 354
    if how == "too-big":
        c.send(h.stuff(h.make_body(1100 * 1024)))
        assert c.read_reply().code == 552
    else:
        c.send(b"Subject: cut\r\n\r\nhalf a message\r\n")
        c.close()
    (end,) = session_end(relay_ii.relabel)
    f = kv(end)
    assert f["upstream"] == f"127.0.0.1:{relay_ii.upstream.port}", end
    assert f["tls"] == "TLSv1.2", end
    assert f["up_tls"] == "TLSv1.2", end
    assert f["up_cipher"] != "none", end
    assert f["messages"] == "0", end
    assert relay_ii.upstream.messages == []


def auth_exchange(c, how, user, password):
    """One AUTH in the given form; returns the final reply."""
    token = h.plain_token(user, password)
    if how == "plain-ir":
        return c.cmd("AUTH PLAIN " + token)
    if how == "plain":
        assert c.cmd("AUTH PLAIN").code == 334
        return c.cmd(token)
    if how == "login-ir":
        assert c.cmd("AUTH LOGIN " + h.b64(user)).code == 334
        return c.cmd(h.b64(password))
    assert c.cmd("AUTH LOGIN").code == 334
    assert c.cmd(h.b64(user)).code == 334
    return c.cmd(h.b64(password))


@pytest.mark.relabel_opts(relabel_opts={"log_level": "debug"})
@pytest.mark.parametrize("how", ["plain-ir", "plain", "login-ir", "login"])
def test_no_secret_at_debug_level(relay, how):
    """The most verbose log, every leg mode, each AUTH form, a good and a
    refused password: neither password appears, nor its base64, nor the
    PLAIN token."""
    wrong = "Wr0ng-pass-7d1f"
    c = relay.session()
    assert auth_exchange(c, how, h.USER, h.PASSWORD).code == 235
    assert c.send_message(b"after auth\r\n").code == 250
    assert c.cmd("QUIT").code == 221
    c.close()
    c = relay.session()
    assert auth_exchange(c, how, h.USER, wrong).code == 535
    c.close()
    rl = relay.relabel
    h.wait_for(lambda: len(session_end(rl)) == 2, what="both sessions ended")
    log = rl.log
    assert " debug " in log or '"debug"' in log  # the level really is debug
    for secret in (h.PASSWORD, wrong):
        assert not re.search(rf"(?<![A-Za-z0-9_]){secret}(?![A-Za-z0-9_])", log), secret
        assert h.b64(secret) not in log
        assert h.plain_token(h.USER, secret) not in log
