"""
Credential mapping: a brand with its own users (users = FILE).  relabel
answers AUTH itself (PLAIN and LOGIN, over TLS only), checks the password
hash off the event loop, and logs in upstream with the provider's
credential (upstream_user / upstream_password_file), which the brand's
customers never see.  The AioUpstream accepts only h.USER / h.PASSWORD:
here those are the provider's credential, the local users are others.
"""

import base64
import ctypes
import os
import re
import socket
import stat
import subprocess
import threading
import time
import urllib.request

import pytest

import harness as h

ALICE, ALICE_PW = "alice", "Wonderland-7f3e"
BOB, BOB_PW = "bob@shop.test", "B0b-only-example-com"
CAROL, CAROL_PW = "carol", "Car0l-added-later"
WRONG = "Not-the-password-91c2"


def hash_password(binary, password):
    res = subprocess.run([binary, "hash-password"], input=(password + "\n").encode(),
                         capture_output=True, timeout=30)
    assert res.returncode == 0, res
    out = res.stdout.decode().strip()
    assert out.startswith("$y$"), out
    return out


def costly_hash(password, count=8):
    """A yescrypt hash several times costlier than the default (count 5),
    made with libxcrypt directly: a check that blocked the loop would show."""
    lib = ctypes.CDLL("libcrypt.so.1")
    lib.crypt_gensalt.restype = ctypes.c_char_p
    lib.crypt_gensalt.argtypes = [ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p, ctypes.c_int]
    lib.crypt.restype = ctypes.c_char_p
    lib.crypt.argtypes = [ctypes.c_char_p, ctypes.c_char_p]
    salt = lib.crypt_gensalt(b"$y$", count, None, 0)
    return lib.crypt(password.encode(), salt).decode()


def write_secret(path, text, mode=0o600):
    with open(path, "w") as f:
        f.write(text)
    os.chmod(path, mode)
    return str(path)


def replace_file(path, text):
    """Written next to it, then renamed over it (as deploy tools do)."""
    tmp = str(path) + ".new"
    with open(tmp, "w") as f:
        f.write(text)
    os.chmod(tmp, 0o600)
    os.rename(tmp, path)


class Creds:
    def __init__(self, tmp_path, binary):
        self.dir = tmp_path
        self.binary = binary
        self.hashes = {ALICE: hash_password(binary, ALICE_PW), BOB: hash_password(binary, BOB_PW)}
        self.users = tmp_path / "users"
        self.password_file = tmp_path / "provider-password"
        self.write_users(f"# brand example's customers\n{ALICE}:{self.hashes[ALICE]}\n"
                         f"{BOB}:{self.hashes[BOB]}:shop.test, Example.COM\n")
        write_secret(self.password_file, h.PASSWORD + "\n")

    def write_users(self, text):
        write_secret(self.users, text)

    def brand_opts(self):
        return {"users": str(self.users), "upstream_user": h.USER,
                "upstream_password_file": str(self.password_file)}


@pytest.fixture
def creds(tmp_path, relabel_binary):
    return Creds(tmp_path, relabel_binary)


def start(relabel_factory, upstream_factory, creds, relabel_opts=None, listener_opts=None,
          metrics_opts=None, up_tls="implicit"):
    up = upstream_factory(up_tls)
    opts = {"log_level": "debug"}
    opts.update(relabel_opts or {})
    rl = relabel_factory(up.port, up_tls, relabel_opts=opts, listener_opts=listener_opts,
                         brand_opts=creds.brand_opts(), metrics_opts=metrics_opts)
    return up, rl


def tls_client(rl, client_ctx, mode="implicit"):
    c = h.open_session(rl, mode, client_ctx)
    return c


def login(c, how, user, password):
    """One AUTH exchange in the form named; returns the final reply."""
    if how == "plain-ir":
        return c.cmd("AUTH PLAIN " + h.plain_token(user, password))
    if how == "plain":
        r = c.cmd("AUTH PLAIN")
        assert r.code == 334 and r.raw == b"334 \r\n", r
        return c.cmd(h.plain_token(user, password))
    if how == "login-ir":
        r = c.cmd("AUTH LOGIN " + h.b64(user))
        assert r.code == 334 and r.raw == b"334 UGFzc3dvcmQ6\r\n", r
        return c.cmd(h.b64(password))
    assert how == "login"
    r = c.cmd("AUTH LOGIN")
    assert r.code == 334 and r.raw == b"334 VXNlcm5hbWU6\r\n", r
    r = c.cmd(h.b64(user))
    assert r.code == 334 and r.raw == b"334 UGFzc3dvcmQ6\r\n", r
    return c.cmd(h.b64(password))


def upstream_auth_payloads(up):
    """The decoded AUTH PLAIN payloads the upstream received."""
    out = []
    for cmd in up.recorder.commands:
        if cmd.verb == "AUTH":
            parts = cmd.line.strip().split()
            assert parts[1].upper() == b"PLAIN" and len(parts) == 3, cmd
            out.append(base64.b64decode(parts[2]))
    return out


def upstream_saw(up, text):
    raw = text.encode()
    lines = b"".join(c.line for c in up.recorder.commands)
    return raw in lines or base64.b64encode(raw) in lines


HOWS = ["plain-ir", "plain", "login-ir", "login"]


@pytest.mark.parametrize("how", HOWS)
@pytest.mark.parametrize("mode", ["implicit", "starttls"])
def test_local_user_logs_in_upstream_sees_provider_credential(relabel_factory, upstream_factory,
                                                             client_ctx, creds, how, mode):
    up, rl = start(relabel_factory, upstream_factory, creds)
    c = tls_client(rl, client_ctx, mode)
    caps = h.capabilities(c.replies[-1])
    assert caps.get("AUTH") == "PLAIN LOGIN", caps
    r = login(c, how, ALICE, ALICE_PW)
    assert r.raw == b"235 2.7.0 Authentication successful\r\n", r
    body = f"Subject: {how}\r\n\r\nvia a local user\r\n".encode()
    assert c.send_message(body).code == 250
    (m,) = up.recorder.wait_messages(1)
    assert m.data == body
    # The upstream logged in with the provider's credential, nothing else.
    assert m.auth_user == h.USER
    assert upstream_auth_payloads(up) == [b"\0" + h.USER.encode() + b"\0" + h.PASSWORD.encode()]
    for secret in (ALICE, ALICE_PW):
        assert not upstream_saw(up, secret), secret
    # Logged in: a second AUTH is refused locally.
    assert c.cmd("AUTH PLAIN " + h.plain_token(ALICE, ALICE_PW)).code == 503
    assert not c.provider_leaks()
    rl.wait_log(rf"client authenticated user=\"{ALICE}\" \(local\)")


@pytest.mark.parametrize("how", HOWS)
def test_bad_password_535_after_delay_then_retry(relabel_factory, upstream_factory, client_ctx,
                                                 creds, how):
    up, rl = start(relabel_factory, upstream_factory, creds)
    c = tls_client(rl, client_ctx)
    t0 = time.monotonic()
    r = login(c, how, ALICE, WRONG)
    waited = time.monotonic() - t0
    assert r.raw == b"535 5.7.8 Authentication credentials invalid\r\n", r
    assert waited >= 1.0, f"failure answered after {waited:.3f}s"
    # Nothing reached the upstream; the same connection may try again.
    assert not up.recorder.saw("AUTH")
    assert login(c, how, ALICE, ALICE_PW).code == 235
    assert c.send_message(b"Subject: retry\r\n\r\nok\r\n").code == 250
    rl.wait_log(rf"local authentication failed user=\"{ALICE}\"")


@pytest.mark.parametrize("user,password", [("nobody", ALICE_PW), ("ALICE", ALICE_PW),
                                           (ALICE, ""), ("", ALICE_PW)])
def test_unknown_user_or_empty_password(relabel_factory, upstream_factory, client_ctx, creds, user,
                                        password):
    up, rl = start(relabel_factory, upstream_factory, creds)
    c = tls_client(rl, client_ctx)
    t0 = time.monotonic()
    assert c.cmd("AUTH PLAIN " + h.plain_token(user, password)).code == 535
    assert time.monotonic() - t0 >= 1.0
    assert not up.recorder.saw("AUTH")


def test_authzid_of_someone_else_refused(relabel_factory, upstream_factory, client_ctx, creds):
    up, rl = start(relabel_factory, upstream_factory, creds)
    c = tls_client(rl, client_ctx)
    token = h.b64(f"{BOB}\0{ALICE}\0{ALICE_PW}")
    assert c.cmd("AUTH PLAIN " + token).code == 535
    token = h.b64(f"{ALICE}\0{ALICE}\0{ALICE_PW}")
    assert c.cmd("AUTH PLAIN " + token).code == 235


def test_cancel_bad_base64_and_unknown_mechanism(relabel_factory, upstream_factory, client_ctx,
                                                 creds):
    up, rl = start(relabel_factory, upstream_factory, creds)
    c = tls_client(rl, client_ctx)
    assert c.cmd("AUTH CRAM-MD5").raw.startswith(b"504 5.5.4")
    assert c.cmd("AUTH LOGIN").code == 334
    assert c.cmd("*").raw.startswith(b"501 5.0.0")
    assert c.cmd("AUTH PLAIN").code == 334
    assert c.cmd("%%%not-base64").raw.startswith(b"501 5.5.2")
    assert c.cmd("NOOP").code == 250
    assert login(c, "plain", ALICE, ALICE_PW).code == 235
    assert not up.recorder.saw("AUTH") or len(upstream_auth_payloads(up)) == 1


def test_failed_local_auth_counts_toward_max_errors(relabel_factory, upstream_factory, client_ctx,
                                                    creds):
    up, rl = start(relabel_factory, upstream_factory, creds, relabel_opts={"max_errors": "2"})
    c = tls_client(rl, client_ctx)
    assert c.auth_plain(ALICE, WRONG).code == 535
    assert c.auth_plain(ALICE, WRONG).code == 535
    r = c.cmd("NOOP")
    assert r.raw.startswith(b"421 4.7.0"), r
    assert c.closed()


def test_no_auth_before_tls_on_plaintext_listener(relabel_factory, upstream_factory, client_ctx,
                                                  creds):
    """require_tls = no lets plaintext clients relay, but a brand's own users
    log in over TLS only: AUTH is neither offered nor accepted before it."""
    up, rl = start(relabel_factory, upstream_factory, creds,
                   listener_opts={"submission": {"require_tls": "no"}})
    c = h.Client(rl.ports["submission"], client_ctx)
    r = c.ehlo()
    assert r.code == 250
    caps = h.capabilities(r)
    assert "AUTH" not in caps and "STARTTLS" in caps, caps
    for how in ("plain-ir", "login-ir"):
        line = ("AUTH PLAIN " + h.plain_token(ALICE, ALICE_PW) if how == "plain-ir"
                else "AUTH LOGIN " + h.b64(ALICE))
        r = c.cmd(line)
        assert r.raw.startswith(b"538 5.7.11"), r
    r = c.cmd("AUTH LOGIN")
    assert r.code == 538, r
    assert not up.recorder.saw("AUTH")
    c.starttls()
    caps = h.capabilities(c.ehlo())
    assert caps.get("AUTH") == "PLAIN LOGIN", caps
    assert c.auth_plain(ALICE, ALICE_PW).code == 235
    assert c.send_message(b"Subject: after starttls\r\n\r\nok\r\n").code == 250


def test_sender_domains(relabel_factory, upstream_factory, client_ctx, creds):
    up, rl = start(relabel_factory, upstream_factory, creds)
    c = tls_client(rl, client_ctx)
    assert c.auth_plain(BOB, BOB_PW).code == 235
    for bad in ("x@example.org", "x@sub.example.com", "x@example.com.evil.test", ""):
        r = c.cmd(f"MAIL FROM:<{bad}>")
        assert r.raw == b"553 5.7.1 Sender address not allowed for this user\r\n", (bad, r)
    assert c.send_message(b"Subject: ok domain\r\n\r\nok\r\n", mail_from="news@EXAMPLE.com").code \
        == 250
    assert c.send_message(b"Subject: ok domain 2\r\n\r\nok\r\n", mail_from="a@shop.test").code \
        == 250
    msgs = up.recorder.wait_messages(2)
    assert [m.mail_from for m in msgs] == ["news@EXAMPLE.com", "a@shop.test"]
    rl.wait_log(r"sender refused user=\"bob@shop.test\" from=<x@example.org>")
    # A user without domains may use any sender.
    c2 = tls_client(rl, client_ctx)
    assert c2.auth_plain(ALICE, ALICE_PW).code == 235
    assert c2.send_message(b"Subject: any\r\n\r\nok\r\n", mail_from="x@example.org").code == 250


def test_upstream_refuses_provider_credential(relabel_factory, upstream_factory, client_ctx, creds,
                                              free_ports):
    write_secret(creds.password_file, "not-the-provider-password\n")
    (mport,) = free_ports(1)
    up, rl = start(relabel_factory, upstream_factory, creds,
                   metrics_opts={"listen": f"127.0.0.1:{mport}"})
    c = tls_client(rl, client_ctx)
    r = c.auth_plain(ALICE, ALICE_PW)
    assert r.raw.startswith(b"454 4.7.0 "), r
    assert all(x.code != 235 for x in c.replies)
    # The client's password was right: no delay, no error counted; it may
    # try again later.
    assert c.cmd("NOOP").code == 250
    rl.wait_log(r"warn .*upstream refused the provider credential of brand example "
                rf"\(upstream_user {h.USER}\): 535")
    assert upstream_auth_payloads(up) == [b"\0" + h.USER.encode() + b"\0not-the-provider-password"]
    c.close()
    # A wrong local password is a failure of its own kind.
    c = tls_client(rl, client_ctx)
    assert c.auth_plain(ALICE, WRONG).code == 535
    text = urllib.request.urlopen(f"http://127.0.0.1:{mport}/metrics", timeout=5).read().decode()
    assert 'relabel_local_auth_total{result="upstream_refused"} 1' in text, text
    assert 'relabel_local_auth_total{result="failure"} 1' in text
    assert 'relabel_local_auth_total{result="success"} 0' in text
    assert 'relabel_auth_total{result="success"} 0' in text
    assert "not-the-provider-password" not in rl.log


def test_concurrent_checks_do_not_stall_other_sessions(relabel_factory, upstream_factory,
                                                       client_ctx, creds):
    """Eight password checks, each several times costlier than usual, on one
    worker: a NOOP on another session is answered at once all along (a
    check run on the event loop would hold it for their sum)."""
    n = 8
    users = [(f"user{i}", f"Pw-{i}-{os.getpid()}") for i in range(n)]
    t0 = time.monotonic()
    hashes = [costly_hash(pw) for _, pw in users]
    one = (time.monotonic() - t0) / n
    creds.write_users("".join(f"{u}:{hh}\n" for (u, _), hh in zip(users, hashes)))
    up, rl = start(relabel_factory, upstream_factory, creds, relabel_opts={"workers": "1", "max_junk_commands": "100000"})
    clients = [tls_client(rl, client_ctx) for _ in range(n)]
    probe = tls_client(rl, client_ctx)
    results = [None] * n
    started = threading.Barrier(n + 1)

    def auth(i):
        started.wait()
        results[i] = clients[i].auth_plain(*users[i]).code

    threads = [threading.Thread(target=auth, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    started.wait()
    worst = 0.0
    while any(t.is_alive() for t in threads):
        t1 = time.monotonic()
        assert probe.cmd("NOOP").code == 250
        worst = max(worst, time.monotonic() - t1)
        time.sleep(0.005)
    for t in threads:
        t.join()
    assert results == [235] * n
    # On the loop the probe would wait for their sum, n * one; off it,
    # only for the scheduling noise of a shared machine.  Half the sum
    # tells the two apart with room for that noise.
    assert one * n > 0.4, f"checks too cheap to tell ({one:.3f}s each)"
    assert worst < one * n / 2, f"NOOP waited {worst:.3f}s (one check {one:.3f}s)"


def test_reload_with_changed_users_file(relabel_factory, upstream_factory, client_ctx, creds):
    up, rl = start(relabel_factory, upstream_factory, creds,
                   relabel_opts={"watch_debounce": "200ms"})
    c = tls_client(rl, client_ctx)
    assert c.auth_plain(ALICE, ALICE_PW).code == 235
    c.close()
    carol_hash = hash_password(creds.binary, CAROL_PW)
    new_alice = "Changed-alice-4c8a"
    replace_file(creds.users, f"{CAROL}:{carol_hash}\n"
                              f"{ALICE}:{hash_password(creds.binary, new_alice)}\n")
    rl.wait_log(r"reload ok")
    c = tls_client(rl, client_ctx)
    assert c.auth_plain(CAROL, CAROL_PW).code == 235
    c = tls_client(rl, client_ctx)
    assert c.auth_plain(ALICE, ALICE_PW).code == 535
    assert c.auth_plain(ALICE, new_alice).code == 235
    c = tls_client(rl, client_ctx)
    assert c.auth_plain(BOB, BOB_PW).code == 535  # gone
    # A broken file is refused as a whole, with its FILE:LINE; the running
    # users stay.
    replace_file(creds.users, f"{CAROL}:{carol_hash}\n"
                              "mallory:$1$abcdefgh$abcdefghijklmnopqrstuv\n")
    rl.wait_log(rf"reload failed.*{re.escape(str(creds.users))}:2: user \"mallory\": hash method "
                "not accepted")
    assert "$1$abcdefgh" not in rl.log
    c = tls_client(rl, client_ctx)
    assert c.auth_plain(ALICE, new_alice).code == 235


def test_hash_password_helper(relabel_binary, tmp_path):
    a = hash_password(relabel_binary, "same password")
    b = hash_password(relabel_binary, "same password")
    assert a != b  # a random salt each time
    assert re.fullmatch(r"\$y\$[./A-Za-z0-9]+\$[./A-Za-z0-9]+\$[./A-Za-z0-9]{43}", a), a
    for given in (b"", b"\n", b"\r\n"):
        res = subprocess.run([relabel_binary, "hash-password"], input=given, capture_output=True,
                             timeout=10)
        assert res.returncode != 0, given
        assert res.stdout == b""
        assert b"relabel: hash-password:" in res.stderr
    # The last line may come without a line end.
    res = subprocess.run([relabel_binary, "hash-password"], input=b"no newline",
                         capture_output=True, timeout=10)
    assert res.returncode == 0 and res.stdout.startswith(b"$y$")
    # --help names it.
    res = subprocess.run([relabel_binary, "--help"], capture_output=True, timeout=10)
    assert b"hash-password" in res.stdout


def write_config(certs, creds, tmp_path, **brand):
    ports = {"smtps": h.free_port(), "submission": h.free_port()}
    opts = creds.brand_opts()
    opts.update(brand)
    cfg = h.relabel_config(certs, h.free_port(), "implicit", ports, brand_opts=opts)
    path = tmp_path / "check.ini"
    path.write_text(cfg.text())
    return str(path), cfg


def test_check_warns_about_loose_permissions(certs, relabel_binary, creds, tmp_path):
    path, cfg = write_config(certs, creds, tmp_path)
    res = h.run_check(relabel_binary, path)
    assert res.returncode == 0, res
    out = res.stdout.decode()
    assert "brand example: own users (2 in" in out, out
    assert "warning" not in out, out
    os.chmod(creds.password_file, 0o644)
    os.chmod(creds.users, 0o644)
    res = h.run_check(relabel_binary, path)
    assert res.returncode == 0, res
    out = res.stdout.decode()
    line = cfg.line_of('[brand "example"]', "upstream_password_file")
    assert (f"warning: {path}:{line}: upstream_password_file {creds.password_file} is readable "
            "by every user") in out, out
    line = cfg.line_of('[brand "example"]', "users")
    assert f"warning: {path}:{line}: users {creds.users} is readable by every user" in out, out
    assert h.PASSWORD not in out and creds.hashes[ALICE] not in out


def test_check_config_errors(certs, relabel_binary, creds, tmp_path):
    creds.write_users(f"{ALICE}:{creds.hashes[ALICE]}\n# old\nold:$1$abcdefgh$abcdefghijklmnopqrstuv\n"
                      f"{ALICE}:{creds.hashes[BOB]}\n")
    path, cfg = write_config(certs, creds, tmp_path)
    res = h.run_check(relabel_binary, path)
    assert res.returncode == 1
    err = res.stderr.decode()
    assert f'{creds.users}:3: user "old": hash method not accepted' in err, err
    # Two errors need both lines; the first line of a duplicate is named.
    write_secret(creds.users, f"{ALICE}:{creds.hashes[ALICE]}\n{ALICE}:{creds.hashes[BOB]}\n")
    res = h.run_check(relabel_binary, path)
    assert res.returncode == 1
    assert f'{creds.users}:2: user "{ALICE}" already defined on line 1' in res.stderr.decode()
    for secret in (creds.hashes[ALICE], creds.hashes[BOB]):
        assert secret not in res.stderr.decode() + res.stdout.decode()
    # users without the provider's credential, or the reverse.
    write_secret(creds.users, f"{ALICE}:{creds.hashes[ALICE]}\n")
    path, cfg = write_config(certs, creds, tmp_path, upstream_password_file=None)
    res = h.run_check(relabel_binary, path)
    line = cfg.line_of('[brand "example"]', "users")
    assert res.returncode == 1
    assert f"{path}:{line}: users needs upstream_user and upstream_password_file" in \
        res.stderr.decode()
    path, cfg = write_config(certs, creds, tmp_path, users=None)
    res = h.run_check(relabel_binary, path)
    line = cfg.line_of('[brand "example"]', "upstream_user")
    assert res.returncode == 1
    assert f"{path}:{line}: upstream_user and upstream_password_file apply only with users" in \
        res.stderr.decode()
    # An empty provider password file.
    write_secret(creds.password_file, "\n")
    path, cfg = write_config(certs, creds, tmp_path)
    res = h.run_check(relabel_binary, path)
    line = cfg.line_of('[brand "example"]', "upstream_password_file")
    assert res.returncode == 1
    assert f"{path}:{line}: upstream_password_file" in res.stderr.decode()


def test_logs_free_of_secrets(relabel_factory, upstream_factory, client_ctx, creds):
    """Debug level, every AUTH form, good and bad passwords, the provider's
    login: no password, base64 of one, PLAIN token or hash in the log."""
    up, rl = start(relabel_factory, upstream_factory, creds, relabel_opts={"log_level": "debug"})
    for how in HOWS:
        c = tls_client(rl, client_ctx)
        assert login(c, how, ALICE, WRONG).code == 535
        assert login(c, how, ALICE, ALICE_PW).code == 235
        assert c.send_message(b"Subject: s\r\n\r\nx\r\n").code == 250
        c.cmd("QUIT")
        c.close()
    h.wait_for(lambda: rl.log.count("session end") >= len(HOWS), what="sessions ended")
    log = rl.log
    assert " debug " in log
    for secret in (ALICE_PW, WRONG, h.PASSWORD):
        assert not re.search(rf"(?<![A-Za-z0-9_]){re.escape(secret)}(?![A-Za-z0-9_])", log), secret
        assert h.b64(secret) not in log
        assert h.plain_token(ALICE, secret) not in log
    provider = base64.b64encode(b"\0" + h.USER.encode() + b"\0" + h.PASSWORD.encode()).decode()
    assert provider not in log
    for hh in creds.hashes.values():
        assert hh not in log and hh.split("$")[-1] not in log


def test_mail_before_local_login_is_530(relabel_factory, upstream_factory, client_ctx, creds):
    """A brand with its own users: MAIL without a login is answered 530
    5.7.0 by relabel and never reaches the upstream (which has no login on
    that leg either); after the login the same MAIL goes through."""
    up, rl = start(relabel_factory, upstream_factory, creds)
    c = tls_client(rl, client_ctx)
    r = c.cmd("MAIL FROM:<early@example.com>")
    assert r.raw == b"530 5.7.0 Authentication required\r\n", r
    assert "MAIL" not in up.recorder.verbs()
    assert login(c, "plain-ir", ALICE, ALICE_PW).code == 235
    assert c.send_message(b"Subject: after login\r\n\r\nok\r\n").code == 250
    assert len(up.recorder.wait_messages(1)) == 1
