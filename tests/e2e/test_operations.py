"""
Operations: SIGTERM with clients connected, privilege drop, an IPv6
listener, the default listeners shown by --check, and the command line.
"""

import os
import re
import signal
import socket

import pytest

import harness as h


def sigterm_and_wait(rl, timeout=h.TIMEOUT):
    os.kill(rl.pid, signal.SIGTERM)
    rc = rl.proc.wait(timeout)
    assert rc == 0, f"relabel exited {rc} after SIGTERM; log:\n{rl.log[-3000:]}"
    return rc


# --------------------------------------------------------------------------
# SIGTERM

@pytest.mark.parametrize("where", ["implicit-relay", "starttls-relay", "starttls-pre-tls"])
def test_sigterm_with_client_connected(upstream_factory, relabel_factory, client_ctx, where):
    up = upstream_factory("implicit")
    rl = relabel_factory(up.port, "implicit")
    if where == "implicit-relay":
        c = h.open_session(rl, "implicit", client_ctx)
    elif where == "starttls-relay":
        c = h.open_session(rl, "starttls", client_ctx)
    else:
        c = h.Client(rl.ports["submission"], client_ctx)
        assert c.ehlo().code == 250
    try:
        os.kill(rl.pid, signal.SIGTERM)
        r = c.read_reply()
        assert r.code == 421 and r.raw.startswith(b"421 4.3.2 smtp.example.com"), r
        assert c.closed(timeout=5)
    finally:
        c.close()
    assert rl.proc.wait(h.TIMEOUT) == 0, rl.log[-3000:]
    # the log reader thread may still be behind the exit: wait for the lines
    rl.wait_log(r"relabel stopped")
    rl.wait_log(r'session end .*reason="shutdown"')
    h.wait_for(up.recorder.all_closed, what="upstream session end")


def test_sigterm_mid_handshake_and_idle_listener(upstream_factory, relabel_factory):
    """A bare TCP client (no TLS yet) does not hold up the shutdown."""
    up = upstream_factory("implicit")
    rl = relabel_factory(up.port, "implicit")
    s = socket.create_connection((h.LOCALHOST, rl.ports["smtps"]), timeout=5)
    try:
        rl.wait_log(r"session start .*listener=smtps")
        sigterm_and_wait(rl, timeout=5)
        assert s.recv(100) == b""  # closed, nothing sent in the clear
    except ConnectionResetError:
        pass
    finally:
        s.close()
    # and nothing listens any more
    with pytest.raises(OSError):
        socket.create_connection((h.LOCALHOST, rl.ports["smtps"]), timeout=1).close()


def test_sigint_stops_cleanly(upstream_factory, relabel_factory, client_ctx):
    up = upstream_factory("implicit")
    rl = relabel_factory(up.port, "implicit")
    c = h.open_session(rl, "implicit", client_ctx)
    try:
        os.kill(rl.pid, signal.SIGINT)
        r = c.read_reply()
        assert r.code == 421 and r.raw.startswith(b"421 4.3.2"), r
    finally:
        c.close()
    assert rl.proc.wait(h.TIMEOUT) == 0, rl.log[-3000:]


def test_sighup_does_not_stop_relabel(upstream_factory, relabel_factory, client_ctx):
    # SIGHUP reloads; it must never kill the daemon or a running session.
    up = upstream_factory("implicit")
    rl = relabel_factory(up.port, "implicit")
    c = h.open_session(rl, "implicit", client_ctx)
    os.kill(rl.pid, signal.SIGHUP)
    h.wait_for(lambda: 'reload ok reason="SIGHUP"' in rl.log, what="reload log line")
    assert rl.proc.poll() is None
    assert c.auth_plain().code == 235
    assert c.send_message(b"after hup\r\n").code == 250
    assert c.cmd("QUIT").code == 221


# --------------------------------------------------------------------------
# privilege drop

def proc_ids(pid):
    ids = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            k, _, v = line.partition(":")
            if k in ("Uid", "Gid", "Groups"):
                ids[k] = [int(x) for x in v.split()]
    return ids


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to drop privileges")
def test_user_nobody(upstream_factory, relabel_factory, client_ctx):
    import pwd
    try:
        nobody = pwd.getpwnam("nobody")
    except KeyError:
        pytest.skip("no user nobody")
    up = upstream_factory("implicit")
    rl = relabel_factory(up.port, "implicit", relabel_opts={"user": "nobody"})
    ids = proc_ids(rl.pid)
    assert ids["Uid"] == [nobody.pw_uid] * 4, ids  # real, effective, saved, filesystem
    assert ids["Gid"] == [nobody.pw_gid] * 4, ids
    assert ids["Groups"] in ([], [nobody.pw_gid]), ids
    assert "running as user nobody" in rl.log
    for mode in ("implicit", "starttls"):
        c = h.open_session(rl, mode, client_ctx)
        try:
            assert c.auth_plain().code == 235
            body = f"Subject: as nobody ({mode})\r\n\r\nunprivileged\r\n".encode()
            assert c.send_message(body).code == 250
            assert c.cmd("QUIT").code == 221
        finally:
            c.close()
    msgs = up.recorder.wait_messages(2)
    assert [m.data for m in msgs] == [b"Subject: as nobody (implicit)\r\n\r\nunprivileged\r\n",
                                      b"Subject: as nobody (starttls)\r\n\r\nunprivileged\r\n"]
    assert proc_ids(rl.pid)["Uid"] == [nobody.pw_uid] * 4


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to drop privileges")
def test_unknown_user_refuses_to_start(certs, relabel_binary, tmp_path):
    ports = {"smtps": h.free_port(), "submission": h.free_port()}
    cfg = h.relabel_config(certs, h.free_port(), "implicit", ports,
                           relabel_opts={"user": "no-such-user-e2e"})
    path = tmp_path / "nouser.ini"
    path.write_text(cfg.text())
    r = h.Relabel(relabel_binary, str(path), ports)
    with pytest.raises(AssertionError, match="did not log"):
        r.start(timeout=5)
    assert r.proc.returncode not in (None, 0)
    assert "no-such-user-e2e" in r.log


# --------------------------------------------------------------------------
# IPv6

def ipv6_loopback_port():
    """A free port on [::1], or None when ::1 cannot be bound here."""
    if not socket.has_ipv6:
        return None
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
            return s.getsockname()[1]
    except OSError:
        return None


def test_ipv6_loopback_listener(upstream_factory, relabel_factory, client_ctx):
    p6 = ipv6_loopback_port()
    if p6 is None:
        pytest.skip("::1 not available on this machine")
    up = upstream_factory("implicit")
    rl = relabel_factory(up.port, "implicit", listener_opts={"smtps": {"listen": f"[::1]:{p6}"}})
    assert re.search(rf"listening on \[::1\]:{p6} listener=smtps", rl.log), rl.log
    c = h.Client(p6, client_ctx, tls="implicit", host="::1")
    try:
        assert c.greeting.raw == b"220 smtp.example.com ESMTP ready\r\n"
        assert c.ehlo().code == 250
        assert c.auth_plain().code == 235
        assert c.send_message(b"over IPv6\r\n").code == 250
        assert c.cmd("QUIT").code == 221
        cport = c.ls.sock.getsockname()[1]
    finally:
        c.close()
    (m,) = up.recorder.wait_messages(1)
    assert m.data == b"over IPv6\r\n"
    line = rl.wait_log(r"session end .*listener=smtps.*").group(0)
    assert f"client=[::1]:{cport} " in line, line
    # the listener is IPv6 only: nothing on 127.0.0.1 at that port
    with pytest.raises(OSError):
        socket.create_connection((h.LOCALHOST, p6), timeout=1).close()


# --------------------------------------------------------------------------
# --check with the default listeners (never started: it would bind all addresses)

def test_check_shows_default_listeners(certs, relabel_binary, tmp_path):
    cfg = h.ConfigText()
    cfg.section("[relabel]", {"log_level": "info"})
    cfg.section('[brand "example"]', {"hostname": h.BRAND_HOST,
                                      "cert": os.path.join(certs, "brand.crt"),
                                      "key": os.path.join(certs, "brand.key"),
                                      "upstream": "test"})
    cfg.section('[upstream "test"]', {"host": h.LOCALHOST, "port": "2465", "tls": "implicit",
                                      "verify_name": h.UPSTREAM_VERIFY_NAME,
                                      "ca_file": os.path.join(certs, "ca.crt")})
    path = tmp_path / "defaults.ini"
    path.write_text(cfg.text())
    res = h.run_check(relabel_binary, str(path))
    out = (res.stdout + res.stderr).decode("utf-8", "replace")
    assert res.returncode == 0, out
    lines = {m.group(1): m.group(0) for m in re.finditer(r"^\s*listener (\w+):.*$", out, re.M)}
    assert set(lines) == {"smtps", "submission"}, out
    smtps, sub = lines["smtps"], lines["submission"]
    assert "implicit" in smtps and "starttls" not in smtps, smtps
    assert "starttls" in sub, sub
    assert re.search(r"(?<![\d.])0\.0\.0\.0:465\b", smtps) and "[::]:465" in smtps, smtps
    assert re.search(r"(?<![\d.])0\.0\.0\.0:587\b", sub) and "[::]:587" in sub, sub
    assert ":587" not in smtps and ":465" not in sub, out
    assert "brand example" in smtps and "brand example" in sub, out


def test_check_two_brands_without_listeners_is_an_error(certs, relabel_binary, tmp_path):
    """The defaults exist only for exactly one brand."""
    cfg = h.ConfigText()
    for name, host in (("one", "smtp.example.com"), ("two", "smtp.example.net")):
        cfg.section(f'[brand "{name}"]', {"hostname": host,
                                          "cert": os.path.join(certs, "brand.crt"),
                                          "key": os.path.join(certs, "brand.key"),
                                          "upstream": "test"})
    cfg.section('[upstream "test"]', {"host": h.LOCALHOST, "port": "2465",
                                      "verify_name": h.UPSTREAM_VERIFY_NAME,
                                      "ca_file": os.path.join(certs, "ca.crt")})
    path = tmp_path / "twobrands.ini"
    path.write_text(cfg.text())
    res = h.run_check(relabel_binary, str(path))
    out = (res.stdout + res.stderr).decode("utf-8", "replace")
    assert res.returncode != 0, out
    # a missing section has no line of its own: "FILE: message" or "FILE:LINE: message"
    assert re.search(rf"^{re.escape(str(path))}:(\d+:)? .*listener.*brand", out, re.M), out


# --------------------------------------------------------------------------
# the command line

@pytest.mark.parametrize("flag", ["--version", "-V"])
def test_version(relabel_binary, flag):
    res = h.run_tool([relabel_binary, flag], timeout=10)
    assert res.returncode == 0, res
    assert re.match(rb"relabel \d+\.\d+\.\d+", res.stdout + res.stderr), res


@pytest.mark.parametrize("flag", ["--help", "-h"])
def test_help(relabel_binary, flag):
    res = h.run_tool([relabel_binary, flag], timeout=10)
    out = res.stdout + res.stderr
    assert res.returncode == 0, res
    assert b"usage: relabel" in out and b"--check" in out and b"--config" in out, out


@pytest.mark.parametrize("args", [["--bogus"], ["-x"], ["-c"], ["stray-argument"]],
                         ids=["long", "short", "c-without-file", "stray"])
def test_bad_command_line_exits_2(relabel_binary, args):
    res = h.run_tool([relabel_binary] + args, timeout=10)
    assert res.returncode == 2, res
    assert res.stderr.startswith(b"relabel: "), res.stderr


def test_missing_config_file(relabel_binary, tmp_path):
    res = h.run_tool([relabel_binary, "--check", "-c", str(tmp_path / "nope.ini")], timeout=10)
    assert res.returncode not in (0, None), res
    assert b"nope.ini" in res.stdout + res.stderr, res
