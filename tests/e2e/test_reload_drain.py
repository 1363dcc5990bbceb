"""
Reload (SIGHUP), certificate watching and graceful drain (SIGTERM/SIGINT).

Reload: SIGHUP re-reads the config and every certificate and key; success
logs "reload ok", failure "reload failed" plus "FILE:LINE: message" for each
problem and changes nothing.  New sessions get the new config, open ones keep
theirs (certificate, brand host name, upstream) to their end.  Listeners in
both configs keep their socket, removed ones are closed, added ones bound; an
address that cannot be bound fails the whole reload.

Watching: the directories of the certificate and key files are watched; a
rename over a file (certbot) or a symlink swap (Kubernetes) reloads after
watch_debounce, with the same all-or-nothing rule.

Drain: SIGTERM/SIGINT close the listeners at once; sessions between
transactions get "421 4.3.2 <host> Service shutting down"; a transaction in
progress may finish (its end-of-data reply is relayed, then 421); after
drain_timeout, or at a second signal, the rest are aborted without an end of
data upstream.  relabel exits 0 in every case.

Certificates are copied or generated into per-test directories: the shared
test certificate directory is never written.
"""

import os
import re
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import threading
import time
import traceback

import pytest

import harness as h

RELOAD_RE = re.compile(r"reload (ok|failed)")
SHUTDOWN_421 = re.compile(rb"^421 4\.3\.2 smtp\.example\.com .*shutting down", re.I)


# --------------------------------------------------------------------------
# certificates

EXT = """basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = serverAuth
subjectAltName = DNS:smtp.example.com,IP:127.0.0.1
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
"""


def gen_brand_cert(certs, out_dir, name):
    """A new P-256 key and a certificate for smtp.example.com from the test CA."""
    key = os.path.join(out_dir, name + ".key")
    csr = os.path.join(out_dir, name + ".csr")
    crt = os.path.join(out_dir, name + ".crt")
    ext = os.path.join(out_dir, name + ".ext")
    with open(ext, "w") as f:
        f.write(EXT)
    subprocess.run(["openssl", "req", "-new", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", key,
                    "-subj", "/CN=smtp.example.com", "-out", csr],
                   check=True, capture_output=True, timeout=30)
    subprocess.run(["openssl", "x509", "-req", "-in", csr,
                    "-CA", os.path.join(certs, "ca.crt"), "-CAkey", os.path.join(certs, "ca.key"),
                    "-set_serial", "0x" + secrets.token_hex(8), "-days", "30", "-sha256",
                    "-extfile", ext, "-out", crt],
                   check=True, capture_output=True, timeout=30)
    os.unlink(csr)
    os.unlink(ext)
    return crt, key


def cert_fp(crt_path):
    """sha256 of the DER of the first certificate in a PEM file."""
    with open(crt_path) as f:
        pem = f.read()
    m = re.search(r"-----BEGIN CERTIFICATE-----.*?-----END CERTIFICATE-----", pem, re.S)
    return h.sha256(ssl.PEM_cert_to_DER_cert(m.group(0)))


@pytest.fixture(scope="session")
def pairs(certs, tmp_path_factory):
    """{"v1": (crt, key), "v2": ..., "v3": ...}: v1 is the shared brand pair, v2/v3 new ones."""
    out = str(tmp_path_factory.mktemp("reload-certs"))
    got = {"v1": (os.path.join(certs, "brand.crt"), os.path.join(certs, "brand.key"))}
    for v in ("v2", "v3"):
        got[v] = gen_brand_cert(certs, out, "brand-" + v)
    fps = {v: cert_fp(c) for v, (c, _) in got.items()}
    assert len(set(fps.values())) == 3, fps
    return got


def install_pair(pair, crt_dst, key_dst):
    shutil.copyfile(pair[0], crt_dst)
    shutil.copyfile(pair[1], key_dst)


def served_fp(port, ctx, tls="implicit"):
    """Handshakes with the listener on port; returns the sha256 of the certificate it showed."""
    c = h.Client(port, ctx, tls=tls)
    try:
        if tls != "implicit":
            assert c.ehlo().code == 250
            c.starttls()
        assert c.greeting.code == 220, c.greeting
        der = c.ls.sock.getpeercert(binary_form=True)
        try:
            c.cmd("QUIT")
        except (h.ConnectionClosed, OSError):
            pass
        return h.sha256(der)
    finally:
        c.close()


# --------------------------------------------------------------------------
# config and reload

def std_listeners(ports):
    return {"smtps": {"listen": f"{h.LOCALHOST}:{ports['smtps']}", "tls": "implicit",
                      "brand": "example"},
            "submission": {"listen": f"{h.LOCALHOST}:{ports['submission']}", "tls": "starttls",
                           "brand": "example"}}


def build_config(certs, up_port, listeners, relabel_opts=None, brand_opts=None,
                 upstream_opts=None):
    """Like harness.relabel_config, but with any set of listeners (name -> keys)."""
    relabel = {"log_level": "debug", "command_timeout": "5s", "data_timeout": "5s",
               "upstream_connect_timeout": "3s", "upstream_timeout": "10s",
               "handshake_timeout": "5s"}
    relabel.update(relabel_opts or {})
    brand = {"hostname": h.BRAND_HOST, "cert": os.path.join(certs, "brand.crt"),
             "key": os.path.join(certs, "brand.key"), "upstream": "test"}
    brand.update(brand_opts or {})
    up = {"host": h.LOCALHOST, "port": str(up_port), "tls": "implicit",
          "verify_name": h.UPSTREAM_VERIFY_NAME, "ca_file": os.path.join(certs, "ca.crt"),
          "hide": "mailgun.org, postgun.com, mailgun"}
    up.update(upstream_opts or {})
    cfg = h.ConfigText()
    cfg.section("[relabel]", relabel)
    for name, opts in listeners.items():
        cfg.section(f'[listener "{name}"]', opts)
    cfg.section('[brand "example"]', brand)
    cfg.section('[upstream "test"]', up)
    return cfg


def write_config(rl, cfg):
    """Replaces relabel's config file atomically (the directory holds no certificate)."""
    tmp = rl.config_path + ".new"
    with open(tmp, "w") as f:
        f.write(cfg if isinstance(cfg, str) else cfg.text())
    os.replace(tmp, rl.config_path)
    if not isinstance(cfg, str):
        rl.config = cfg


def reload_count(rl):
    return len(RELOAD_RE.findall(rl.log))


def reload(rl, expect="ok", send=True, timeout=h.TIMEOUT, before=None):
    """SIGHUP (if send), waits for the next "reload ok|failed" line; returns the log offset
    from before the signal (rl.log[mark:] is everything logged since)."""
    if before is None:
        before = reload_count(rl)
    mark = len(rl.log)
    if send:
        os.kill(rl.pid, signal.SIGHUP)
    h.wait_for(lambda: reload_count(rl) > before or rl.proc.poll() is not None, timeout,
               what="a 'reload ok' or 'reload failed' log line")
    assert rl.proc.poll() is None, f"relabel exited ({rl.proc.returncode}); log:\n{rl.log[-3000:]}"
    new = rl.log[mark:]
    found = RELOAD_RE.findall(new)
    assert found and found[0] == expect, \
        f"expected 'reload {expect}', log since the signal:\n{new}"
    return mark


def refused(port, timeout=2.0):
    """True if a connection to 127.0.0.1:port is refused (or reset while connecting: the
    listener closed with it in its queue)."""
    try:
        s = socket.create_connection((h.LOCALHOST, port), timeout=timeout)
    except (ConnectionRefusedError, ConnectionResetError):
        return True
    s.close()
    return False


def listen_inode(port):
    """The inode of the socket listening on 127.0.0.1:port (from /proc/net/tcp), or None."""
    want = f"0100007F:{port:04X}"
    with open("/proc/net/tcp") as f:
        for line in f.readlines()[1:]:
            fields = line.split()
            if fields[1] == want and fields[3] == "0A":
                return fields[9]
    return None


def fd_targets(pid):
    out = {}
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            out[int(fd)] = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            pass
    return dict(sorted(out.items()))


def deliver(c, body, tag=""):
    r = c.send_message(body)
    assert r.code == 250, (tag, r)
    return r


def deliver_new_session(rl, ctx, tag):
    """A new implicit-TLS session delivers one message and quits; returns its body."""
    body = body_for(tag)
    c = h.open_session(rl, "implicit", ctx)
    try:
        deliver(c, body, tag)
        assert c.cmd("QUIT").code == 221
    finally:
        c.close()
    return body


def body_for(tag, size=0):
    head = f"Subject: {tag}\r\nMessage-ID: <{tag}@e2e.test>\r\n\r\n".encode()
    if size:
        return h.make_body(size, seed=tag.encode())
    return head + f"body of {tag}\r\n".encode()


def messages_by_data(up):
    return sorted(m.data for m in up.messages)


# --------------------------------------------------------------------------
# 1. reload with a new certificate

def test_reload_new_certificate(certs, pairs, upstream_factory, relabel_factory, client_ctx,
                                tmp_path):
    up = upstream_factory("implicit")
    rl = relabel_factory(up.port, "implicit")
    v1, v2 = cert_fp(pairs["v1"][0]), cert_fp(pairs["v2"][0])
    assert served_fp(rl.ports["smtps"], client_ctx) == v1
    assert served_fp(rl.ports["submission"], client_ctx, "starttls") == v1

    # open before the reload: one idle after EHLO, one in the middle of DATA
    idle = h.open_session(rl, "implicit", client_ctx)
    idle_fp = h.sha256(idle.ls.sock.getpeercert(binary_form=True))
    mid = h.open_session(rl, "starttls", client_ctx)
    mid_body = body_for("mid-data-across-reload", 64 * 1024)
    wire = h.stuff(mid_body)
    assert mid.cmd("MAIL FROM:<mid@example.net>").code == 250
    assert mid.cmd("RCPT TO:<rcpt@example.org>").code == 250
    assert mid.cmd("DATA").code == 354
    mid.send(wire[: len(wire) // 2])

    cfg = build_config(certs, up.port, std_listeners(rl.ports),
                       brand_opts={"cert": pairs["v2"][0], "key": pairs["v2"][1]})
    write_config(rl, cfg)
    reload(rl, "ok")

    # new handshakes: the new certificate, on both listener kinds
    assert served_fp(rl.ports["smtps"], client_ctx) == v2
    assert served_fp(rl.ports["submission"], client_ctx, "starttls") == v2

    # the old sessions carry on with the old one, to QUIT
    assert idle_fp == v1
    try:
        mid.send(wire[len(wire) // 2:])
        r = mid.read_reply()
        assert r.code == 250, r
        assert mid.cmd("QUIT").code == 221
        idle_body = body_for("idle-across-reload")
        deliver(idle, idle_body)
        assert idle.ehlo().first.startswith(b"250-smtp.example.com")
        assert idle.cmd("QUIT").code == 221
    finally:
        idle.close()
        mid.close()
    # and a new session delivers too
    new_body = deliver_new_session(rl, client_ctx, "after-reload")
    up.recorder.wait_messages(3)
    assert messages_by_data(up) == sorted([mid_body, idle_body, new_body])
    assert rl.proc.poll() is None



def start_with_pair(pairs, upstream_factory, relabel_factory, tmp_path, debounce):
    """relabel serving pair v1 from tmp_path/tls, watching with `debounce`.
    Returns (upstream, relabel, cert path, key path)."""
    tls = tmp_path / "tls"
    tls.mkdir()
    crt, key = str(tls / "brand.crt"), str(tls / "brand.key")
    install_pair(pairs["v1"], crt, key)
    up = upstream_factory("implicit")
    rl = relabel_factory(up.port, "implicit", relabel_opts={"watch_debounce": debounce},
                         brand_opts={"cert": crt, "key": key})
    return up, rl, crt, key

def test_sighup_rereads_files_with_config_unchanged(certs, pairs, upstream_factory,
                                                   relabel_factory, client_ctx, tmp_path):
    """Same config, certificate and key rewritten in place: SIGHUP serves the new pair (the
    watcher's debounce is set to its 60 s maximum, so only the signal can explain it)."""
    up, rl, crt, key = start_with_pair(pairs, upstream_factory, relabel_factory, tmp_path,
                                       "60s")
    assert served_fp(rl.ports["smtps"], client_ctx) == cert_fp(pairs["v1"][0])
    install_pair(pairs["v3"], crt, key)  # in place: truncate and write
    time.sleep(0.2)
    assert served_fp(rl.ports["smtps"], client_ctx) == cert_fp(pairs["v1"][0])
    reload(rl, "ok")
    assert served_fp(rl.ports["smtps"], client_ctx) == cert_fp(pairs["v3"][0])
    # (teardown: SIGTERM with the 60 s debounce timer still pending must exit 0 at once)


def test_reload_open_session_keeps_hostname_and_upstream(certs, upstream_factory,
                                                        relabel_factory, client_ctx):
    """A reload that moves the brand to another host name and upstream: only new sessions move."""
    up_a = upstream_factory("implicit")
    up_b = upstream_factory("implicit")
    rl = relabel_factory(up_a.port, "implicit")
    old = h.open_session(rl, "implicit", client_ctx)
    cfg = build_config(certs, up_b.port, std_listeners(rl.ports),
                       brand_opts={"hostname": "mail.example.net"})
    write_config(rl, cfg)
    reload(rl, "ok")
    new = h.open_session(rl, "implicit", client_ctx, ehlo=False)
    try:
        assert new.greeting.raw.startswith(b"220 mail.example.net "), new.greeting
        assert new.ehlo().first.startswith(b"250-mail.example.net"), new.replies[-1]
        new_body = body_for("new-session-new-upstream")
        deliver(new, new_body)
        r = new.cmd("QUIT")
        assert r.code == 221 and b"mail.example.net" in r.raw, r

        assert old.ehlo().first.startswith(b"250-smtp.example.com"), old.replies[-1]
        old_body = body_for("old-session-old-upstream")
        deliver(old, old_body)
        r = old.cmd("QUIT")
        assert r.code == 221 and b"smtp.example.com" in r.raw, r
    finally:
        new.close()
        old.close()
    up_a.recorder.wait_messages(1)
    up_b.recorder.wait_messages(1)
    assert [m.data for m in up_a.messages] == [old_body]
    assert [m.data for m in up_b.messages] == [new_body]


# --------------------------------------------------------------------------
# 2. reload under traffic

def test_reload_under_traffic(certs, pairs, upstream_factory, relabel_factory, client_ctx):
    up = upstream_factory("implicit")
    opts = {"command_timeout": "30s", "data_timeout": "30s"}
    rl = relabel_factory(up.port, "implicit", relabel_opts=opts)
    n_idle, n_slow, n_starting = 8, 8, 8
    lock = threading.Lock()
    errors, sent, acks = [], [], []
    in_place = threading.Semaphore(0)
    reloads_done = threading.Event()
    started_sessions = [0]

    def guard(fn, name):
        def run():
            try:
                fn(name)
            except Exception as e:  # noqa: BLE001 - every failure is reported
                with lock:
                    errors.append(f"{name}: {e!r}\n{traceback.format_exc()}")
                in_place.release()
        return threading.Thread(target=run, name=name, daemon=True)

    def record(body, r):
        with lock:
            sent.append(body)
            acks.append(r)

    def idle(name):
        mode = "implicit" if name.endswith(("0", "2", "4", "6")) else "starttls"
        c = h.open_session(rl, mode, client_ctx)
        try:
            in_place.release()
            assert reloads_done.wait(60), "reloads never finished"
            body = body_for(name)
            r = c.send_message(body)
            record(body, r)
            assert r.code == 250, r
            assert c.cmd("QUIT").code == 221
        finally:
            c.close()

    def slow(name):
        mode = "starttls" if name.endswith(("0", "2", "4", "6")) else "implicit"
        c = h.open_session(rl, mode, client_ctx)
        try:
            assert c.cmd(f"MAIL FROM:<{name}@example.net>").code == 250
            assert c.cmd("RCPT TO:<rcpt@example.org>").code == 250
            assert c.cmd("DATA").code == 354
            body = body_for(name, 48 * 1024)
            wire = h.stuff(body)
            head, tail = wire[:-100], wire[-100:]
            step = len(head) // 30 + 1
            in_place.release()
            for i in range(0, len(head), step):
                c.send(head[i:i + step])
                time.sleep(0.1)
            assert reloads_done.wait(60), "reloads never finished"
            c.send(tail)
            r = c.read_reply()
            record(body, r)
            assert r.code == 250, r
            assert c.cmd("QUIT").code == 221
        finally:
            c.close()

    def starting(name):
        i = 0
        while not reloads_done.is_set():
            mode = "implicit" if i % 2 == 0 else "starttls"
            c = h.open_session(rl, mode, client_ctx)
            try:
                body = body_for(f"{name}-{i}")
                r = c.send_message(body)
                record(body, r)
                assert r.code == 250, r
                assert c.cmd("QUIT").code == 221
            finally:
                c.close()
            with lock:
                started_sessions[0] += 1
            i += 1

    threads = ([guard(idle, f"idle{i}") for i in range(n_idle)]
               + [guard(slow, f"slow{i}") for i in range(n_slow)]
               + [guard(starting, f"starting{i}") for i in range(n_starting)])
    for t in threads:
        t.start()
    try:
        for _ in range(n_idle + n_slow):
            assert in_place.acquire(timeout=20), "sessions did not get in place"
        assert not errors, "\n".join(errors)
        versions = ["v2", "v3", "v1", "v2"]
        for v in versions:
            cfg = build_config(certs, up.port, std_listeners(rl.ports), relabel_opts=opts,
                               brand_opts={"cert": pairs[v][0], "key": pairs[v][1]})
            write_config(rl, cfg)
            reload(rl, "ok")
            time.sleep(0.3)
        # the last reload is in force for new handshakes
        assert served_fp(rl.ports["smtps"], client_ctx) == cert_fp(pairs[versions[-1]][0])
    finally:
        reloads_done.set()
        for t in threads:
            t.join(60)
    assert not [t.name for t in threads if t.is_alive()], "client threads still running"
    assert not errors, "\n".join(errors)
    assert rl.proc.poll() is None, rl.log[-3000:]
    assert started_sessions[0] >= n_starting, started_sessions
    assert all(r.code == 250 for r in acks)
    up.recorder.wait_messages(len(sent), timeout=15)
    time.sleep(0.2)
    got = messages_by_data(up)
    assert len(got) == len(sent) and got == sorted(sent), \
        f"{len(sent)} messages acknowledged, upstream recorded {len(got)} (or different bytes)"


# --------------------------------------------------------------------------
# 3. bad reloads change nothing

BAD_KINDS = ["syntax", "unknown-key", "missing-key", "unreadable-key", "key-mismatch",
             "expired-cert", "bad-ca-file", "missing-ca-file"]


@pytest.mark.parametrize("kind", BAD_KINDS)
def test_bad_reload_changes_nothing(certs, pairs, upstream_factory, relabel_factory, client_ctx,
                                    tmp_path, kind):
    up = upstream_factory("implicit")
    rl = relabel_factory(up.port, "implicit")
    v1 = cert_fp(pairs["v1"][0])
    before = h.open_session(rl, "implicit", client_ctx)

    # every bad config also asks for the v2 certificate: it must not be served
    brand = {"cert": pairs["v2"][0], "key": pairs["v2"][1]}
    relabel, upstream = {}, {}
    bad_dir = tmp_path / "bad"
    bad_dir.mkdir()
    if kind == "unknown-key":
        relabel["no_such_key"] = "1"
    elif kind == "missing-key":
        brand["key"] = str(bad_dir / "no-such.key")
    elif kind == "unreadable-key":
        # a directory cannot be read as a file, even by root
        (bad_dir / "dir.key").mkdir()
        brand["key"] = str(bad_dir / "dir.key")
    elif kind == "key-mismatch":
        brand["key"] = os.path.join(certs, "mismatch.key")
    elif kind == "expired-cert":
        brand = {"cert": os.path.join(certs, "expired.crt"),
                 "key": os.path.join(certs, "expired.key")}
    elif kind == "bad-ca-file":
        (bad_dir / "garbage-ca.crt").write_text(
            "-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydGlmaWNhdGU=\n-----END CERTIFICATE-----\n")
        upstream["ca_file"] = str(bad_dir / "garbage-ca.crt")
    elif kind == "missing-ca-file":
        upstream["ca_file"] = str(bad_dir / "no-such-ca.crt")
    cfg = build_config(certs, up.port, std_listeners(rl.ports), relabel_opts=relabel,
                       brand_opts=brand, upstream_opts=upstream)
    text = cfg.text()
    b, u = '[brand "example"]', '[upstream "test"]'
    if kind == "syntax":
        text += "this line is not ini at all\n"
        lines = [text.count("\n")]
    else:
        where = {"unknown-key": [("[relabel]", "no_such_key")],
                 "missing-key": [(b, "key")],
                 "unreadable-key": [(b, "key")],
                 "key-mismatch": [(b, "key"), (b, "cert")],
                 "expired-cert": [(b, "cert"), (b, "key")],
                 "bad-ca-file": [(u, "ca_file")],
                 "missing-ca-file": [(u, "ca_file")]}[kind]
        lines = [cfg.line_of(*w) for w in where]
    write_config(rl, text)
    mark = reload(rl, "failed")
    path = re.escape(rl.config_path)
    h.wait_for(lambda: re.search(rf"{path}:\d+: \S", rl.log[mark:]),
               what="a FILE:LINE: message in the log")
    time.sleep(0.1)
    since = rl.log[mark:]
    found = {int(m) for m in re.findall(rf"{path}:(\d+): \S", since)}
    assert found & set(lines), f"expected {rl.config_path}:{lines}: in the log:\n{since}"
    err_lines = [l for l in since.splitlines() if re.search(rf"{path}:\d+:", l)]
    assert all(re.search(r"\berror\b|\"level\":\s*\"error\"", l, re.I) for l in err_lines), \
        err_lines
    assert rl.proc.poll() is None

    # nothing changed: old certificate, old sessions, deliveries
    assert served_fp(rl.ports["smtps"], client_ctx) == v1
    assert served_fp(rl.ports["submission"], client_ctx, "starttls") == v1
    c = h.open_session(rl, "implicit", client_ctx)
    try:
        b1, b2 = body_for(f"{kind}-new"), body_for(f"{kind}-old")
        deliver(c, b1)
        assert c.cmd("QUIT").code == 221
        deliver(before, b2)
        assert before.cmd("QUIT").code == 221
    finally:
        c.close()
        before.close()
    up.recorder.wait_messages(2)
    assert messages_by_data(up) == sorted([b1, b2])

    # a good config afterwards is taken
    good = build_config(certs, up.port, std_listeners(rl.ports),
                        brand_opts={"cert": pairs["v2"][0], "key": pairs["v2"][1]})
    write_config(rl, good)
    reload(rl, "ok")
    assert served_fp(rl.ports["smtps"], client_ctx) == cert_fp(pairs["v2"][0])


# --------------------------------------------------------------------------
# 4. listeners added, removed, and one that cannot be bound

def test_reload_listener_changes(certs, pairs, upstream_factory, relabel_factory, client_ctx):
    up = upstream_factory("implicit")
    rl = relabel_factory(up.port, "implicit")
    v1 = cert_fp(pairs["v1"][0])
    on_removed = h.open_session(rl, "starttls", client_ctx)  # on "submission"
    extra_port = h.free_port()
    listeners = std_listeners(rl.ports)
    del listeners["submission"]
    listeners["extra"] = {"listen": f"{h.LOCALHOST}:{extra_port}", "tls": "implicit",
                          "brand": "example"}
    kept_inode = listen_inode(rl.ports["smtps"])
    assert kept_inode is not None
    write_config(rl, build_config(certs, up.port, listeners))
    reload(rl, "ok")
    # kept: the very same socket (never closed and bound again)
    assert listen_inode(rl.ports["smtps"]) == kept_inode, "the kept listener's socket changed"
    bodies = []

    # added: accepts and relays
    c = h.Client(extra_port, client_ctx, tls="implicit")
    try:
        assert c.greeting.raw.startswith(b"220 smtp.example.com "), c.greeting
        assert c.ehlo().code == 250
        bodies.append(body_for("on-added-listener"))
        deliver(c, bodies[-1])
        assert c.cmd("QUIT").code == 221
    finally:
        c.close()
    # removed: refused, but its open session carries on
    assert refused(rl.ports["submission"]), "the removed listener still accepts"
    try:
        bodies.append(body_for("open-on-removed-listener"))
        deliver(on_removed, bodies[-1])
        assert on_removed.cmd("QUIT").code == 221
    finally:
        on_removed.close()
    # kept: still serving
    assert served_fp(rl.ports["smtps"], client_ctx) == v1

    # an address already in use: the whole reload fails (the new certificate too)
    busy_port = h.free_port()
    blocker = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        blocker.bind((h.LOCALHOST, busy_port))
        blocker.listen(1)
        listeners2 = dict(listeners)
        del listeners2["extra"]  # a removal that must not happen either
        listeners2["busy"] = {"listen": f"{h.LOCALHOST}:{busy_port}", "tls": "implicit",
                              "brand": "example"}
        listeners2["submission"] = std_listeners(rl.ports)["submission"]
        cfg = build_config(certs, up.port, listeners2,
                           brand_opts={"cert": pairs["v2"][0], "key": pairs["v2"][1]})
        write_config(rl, cfg)
        mark = reload(rl, "failed")
        h.wait_for(lambda: str(busy_port) in rl.log[mark:],
                   what=f"the busy port {busy_port} named in the log")
        assert served_fp(rl.ports["smtps"], client_ctx) == v1
        assert served_fp(extra_port, client_ctx) == v1
        assert listen_inode(rl.ports["smtps"]) == kept_inode
        assert refused(rl.ports["submission"]), "a failed reload bound a listener"
        c = h.open_session(rl, "implicit", client_ctx)
        try:
            bodies.append(body_for("after-failed-bind"))
            deliver(c, bodies[-1])
            assert c.cmd("QUIT").code == 221
        finally:
            c.close()
    finally:
        blocker.close()
    up.recorder.wait_messages(len(bodies))
    assert messages_by_data(up) == sorted(bodies)


def test_reload_kept_address_new_settings_renamed_and_readded(certs, upstream_factory,
                                                              relabel_factory, client_ctx):
    """Same address, other settings (implicit -> starttls, another name): the socket stays,
    new connections get the new settings, the open session keeps implicit TLS.  A listener
    removed by one reload can be added back by the next."""
    up = upstream_factory("implicit")
    rl = relabel_factory(up.port, "implicit")
    old = h.open_session(rl, "implicit", client_ctx)
    inode = listen_inode(rl.ports["smtps"])
    listeners = std_listeners(rl.ports)
    listeners["renamed"] = {"listen": f"{h.LOCALHOST}:{rl.ports['smtps']}", "tls": "starttls",
                            "brand": "example"}
    del listeners["smtps"]
    write_config(rl, build_config(certs, up.port, listeners))
    reload(rl, "ok")
    assert listen_inode(rl.ports["smtps"]) == inode, "the socket of a kept address changed"
    bodies = []
    c = h.Client(rl.ports["smtps"], client_ctx)  # plaintext greeting now
    try:
        assert c.greeting.code == 220, c.greeting
        assert c.ehlo().code == 250
        c.starttls()
        assert c.ehlo().code == 250
        bodies.append(body_for("starttls-on-former-implicit-port"))
        deliver(c, bodies[-1])
        assert c.cmd("QUIT").code == 221
    finally:
        c.close()
    rl.wait_log(r"session end .*listener=renamed")
    try:
        bodies.append(body_for("implicit-session-from-before"))
        deliver(old, bodies[-1])
        assert old.cmd("QUIT").code == 221
    finally:
        old.close()

    # remove "submission", then add it back
    del listeners["submission"]
    write_config(rl, build_config(certs, up.port, listeners))
    reload(rl, "ok")
    assert refused(rl.ports["submission"])
    listeners["submission"] = std_listeners(rl.ports)["submission"]
    write_config(rl, build_config(certs, up.port, listeners))
    reload(rl, "ok")
    c = h.open_session(rl, "starttls", client_ctx)
    try:
        bodies.append(body_for("on-readded-listener"))
        deliver(c, bodies[-1])
        assert c.cmd("QUIT").code == 221
    finally:
        c.close()
    up.recorder.wait_messages(len(bodies))
    assert messages_by_data(up) == sorted(bodies)


def test_many_reloads_leak_nothing(certs, pairs, upstream_factory, relabel_factory, client_ctx):
    """60 reloads (certificates and a listener coming and going): descriptors back to where
    they were, memory growth bounded."""
    up = upstream_factory("implicit")
    rl = relabel_factory(up.port, "implicit")
    extra_port = h.free_port()

    def cfg(i):
        listeners = std_listeners(rl.ports)
        if i % 2:
            listeners["extra"] = {"listen": f"{h.LOCALHOST}:{extra_port}", "tls": "implicit",
                                  "brand": "example"}
        v = ("v1", "v2", "v3")[i % 3]
        return build_config(certs, up.port, listeners,
                            brand_opts={"cert": pairs[v][0], "key": pairs[v][1]})

    for i in range(6):  # warm up allocator arenas
        write_config(rl, cfg(i))
        reload(rl, "ok")
    write_config(rl, cfg(0))
    reload(rl, "ok")
    fds, rss = rl.fd_count(), rl.rss_kb()
    for i in range(1, 61):
        write_config(rl, cfg(i))
        reload(rl, "ok")
    write_config(rl, cfg(0))
    reload(rl, "ok")
    assert refused(extra_port)
    try:
        h.wait_for(lambda: rl.fd_count() == fds, 3, interval=0.05, what="descriptors")
    except AssertionError:
        raise AssertionError(f"descriptors: {fds} before, {rl.fd_count()} after 60 reloads: "
                             f"{fd_targets(rl.pid)}")
    assert served_fp(rl.ports["smtps"], client_ctx) == cert_fp(pairs["v1"][0])
    # (AddressSanitizer's quarantine keeps freed memory: RSS means nothing there)
    if not os.environ.get("RELABEL_SANITIZED"):
        grown = rl.rss_kb() - rss
        assert grown < 4096, f"RSS grew by {grown} kB over 60 reloads"


# --------------------------------------------------------------------------
# 5. watched certificate files

def _wait_served(rl, ctx, fp, timeout=8.0, what="the new certificate", mark=0):
    try:
        h.wait_for(lambda: served_fp(rl.ports["smtps"], ctx) == fp, timeout, interval=0.2,
                   what=what)
    except AssertionError as e:
        lines = [l for l in rl.log[mark:].splitlines()
                 if re.search(r"reload|watch|changed|error|warn", l, re.I)]
        raise AssertionError(f"{e}; reload/watch/error lines since the change:\n"
                             + "\n".join(lines[-40:]))


def test_watch_rename_over_cert(certs, pairs, upstream_factory, relabel_factory, client_ctx,
                                tmp_path):
    up, rl, crt, key = start_with_pair(pairs, upstream_factory, relabel_factory, tmp_path,
                                       "300ms")
    assert served_fp(rl.ports["smtps"], client_ctx) == cert_fp(pairs["v1"][0])
    held = h.open_session(rl, "implicit", client_ctx)
    before = reload_count(rl)
    mark = len(rl.log)
    # certbot-style: write new files, rename them over the old ones
    shutil.copyfile(pairs["v2"][1], key + ".new")
    shutil.copyfile(pairs["v2"][0], crt + ".new")
    os.rename(key + ".new", key)
    os.rename(crt + ".new", crt)
    assert "SIGHUP" not in rl.log[reload(rl, "ok", send=False, timeout=6):]
    _wait_served(rl, client_ctx, cert_fp(pairs["v2"][0]))
    time.sleep(1.0)
    n = reload_count(rl) - before
    assert n == 1, f"one burst of changes, {n} reloads (no debounce?):\n{rl.log[mark:]}"
    try:
        body = body_for("held-across-watch-reload")
        deliver(held, body)
        assert held.cmd("QUIT").code == 221
    finally:
        held.close()
    assert [m.data for m in up.recorder.wait_messages(1)] == [body]


def test_watch_debounce_waits_for_slow_in_place_writes(certs, pairs, upstream_factory,
                                                       relabel_factory, client_ctx, tmp_path):
    """Key and certificate rewritten in place in small pieces, 120 ms apart (each gap
    shorter than watch_debounce = 400ms): one reload, after the last piece, and it works."""
    up, rl, crt, key = start_with_pair(pairs, upstream_factory, relabel_factory, tmp_path,
                                       "400ms")
    before = reload_count(rl)
    mark = len(rl.log)
    for src, dst in ((pairs["v2"][1], key), (pairs["v2"][0], crt)):
        with open(src, "rb") as f:
            data = f.read()
        with open(dst, "wb") as f:
            for i in range(0, len(data), 200):
                f.write(data[i:i + 200])
                f.flush()
                time.sleep(0.12)
    reload(rl, "ok", send=False, timeout=6, before=before)
    _wait_served(rl, client_ctx, cert_fp(pairs["v2"][0]), mark=mark)
    time.sleep(0.8)
    found = RELOAD_RE.findall(rl.log[mark:])
    assert found == ["ok"], f"reloads during slow writes: {found}:\n" + "\n".join(
        l for l in rl.log[mark:].splitlines() if "reload" in l)


def test_watch_bad_file_changes_nothing(certs, pairs, upstream_factory, relabel_factory,
                                        client_ctx, tmp_path):
    up, rl, crt, key = start_with_pair(pairs, upstream_factory, relabel_factory, tmp_path,
                                       "300ms")
    v1 = cert_fp(pairs["v1"][0])
    # a key that does not belong to the certificate, renamed over the good one
    shutil.copyfile(os.path.join(certs, "mismatch.key"), key + ".new")
    os.rename(key + ".new", key)
    reload(rl, "failed", send=False, timeout=6)
    assert served_fp(rl.ports["smtps"], client_ctx) == v1
    body = deliver_new_session(rl, client_ctx, "after-bad-watch")
    # the matching certificate arrives: now it reloads
    shutil.copyfile(pairs["v3"][1], key + ".new")
    shutil.copyfile(pairs["v3"][0], crt + ".new")
    os.rename(key + ".new", key)
    os.rename(crt + ".new", crt)
    reload(rl, "ok", send=False, timeout=6)
    _wait_served(rl, client_ctx, cert_fp(pairs["v3"][0]))
    assert [m.data for m in up.recorder.wait_messages(1)] == [body]


@pytest.mark.parametrize("layout", ["current-dir-symlink", "kubernetes-data-symlink"])
def test_watch_symlink_swap(certs, pairs, upstream_factory, relabel_factory, client_ctx,
                            tmp_path, layout):
    base = tmp_path / "secret"
    base.mkdir()
    if layout == "current-dir-symlink":
        # dir/current -> v1/, config names dir/current/brand.crt
        (base / "v1").mkdir()
        install_pair(pairs["v1"], str(base / "v1" / "brand.crt"), str(base / "v1" / "brand.key"))
        os.symlink("v1", base / "current")
        crt, key = str(base / "current" / "brand.crt"), str(base / "current" / "brand.key")
        new_dir, link = base / "v2", "current"
        names = ("brand.crt", "brand.key")
    else:
        # what a Kubernetes Secret volume looks like: tls.crt -> ..data/tls.crt,
        # ..data -> ..2024_01_01_00_00_00.1
        old_dir = base / "..2024_01_01_00_00_00.1"
        old_dir.mkdir()
        install_pair(pairs["v1"], str(old_dir / "tls.crt"), str(old_dir / "tls.key"))
        os.symlink(old_dir.name, base / "..data")
        os.symlink("..data/tls.crt", base / "tls.crt")
        os.symlink("..data/tls.key", base / "tls.key")
        crt, key = str(base / "tls.crt"), str(base / "tls.key")
        new_dir, link = base / "..2024_02_01_00_00_00.2", "..data"
        names = ("tls.crt", "tls.key")
    up = upstream_factory("implicit")
    rl = relabel_factory(up.port, "implicit", relabel_opts={"watch_debounce": "300ms"},
                         brand_opts={"cert": crt, "key": key})
    assert served_fp(rl.ports["smtps"], client_ctx) == cert_fp(pairs["v1"][0])
    mark = len(rl.log)
    new_dir.mkdir()
    install_pair(pairs["v2"], str(new_dir / names[0]), str(new_dir / names[1]))
    os.symlink(new_dir.name, base / (link + ".tmp"))
    os.rename(base / (link + ".tmp"), base / link)
    if layout == "kubernetes-data-symlink":
        shutil.rmtree(base / "..2024_01_01_00_00_00.1")
    _wait_served(rl, client_ctx, cert_fp(pairs["v2"][0]), what="the swapped-in certificate",
                 mark=mark)
    assert "reload ok" in rl.log[mark:], rl.log[mark:]
    body = deliver_new_session(rl, client_ctx, f"after-{layout}")
    assert [m.data for m in up.recorder.wait_messages(1)] == [body]


# --------------------------------------------------------------------------
# drain helpers

def start_mid_data(rl, ctx, body, mode="implicit", part=0.5):
    """A session inside DATA with the first part of the stuffed body sent; returns (c, rest)."""
    c = h.open_session(rl, mode, ctx)
    assert c.cmd("MAIL FROM:<drain@example.net>").code == 250
    assert c.cmd("RCPT TO:<rcpt@example.org>").code == 250
    r = c.cmd("DATA")
    assert r.code == 354, r
    wire = h.stuff(body)
    cut = int(len(wire) * part)
    c.send(wire[:cut])
    return c, wire[cut:]


def read_421_or_close(c, timeout=h.TIMEOUT):
    """The replies a closing session got: [] when it was just closed."""
    c.ls.settimeout(timeout)
    got = []
    try:
        while True:
            got.append(c.read_reply())
    except h.ConnectionClosed:
        return got
    except (socket.timeout, TimeoutError):
        raise AssertionError(f"session neither closed nor answered within {timeout}s: {got}")


def assert_shutdown_421(r):
    assert r.code == 421 and SHUTDOWN_421.match(r.raw), r


def wait_exit_0(rl, timeout=h.TIMEOUT):
    try:
        rc = rl.proc.wait(timeout)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"relabel still running {timeout}s later; log:\n{rl.log[-3000:]}")
    assert rc == 0, f"relabel exited {rc}; log:\n{rl.log[-3000:]}"


def wait_draining(rl, timeout=5.0):
    """Waits until the smtps listener refuses connections (the drain has begun)."""
    h.wait_for(lambda: refused(rl.ports["smtps"], 1.0), timeout, interval=0.02,
               what="listeners closed after the signal")


# --------------------------------------------------------------------------
# 6. drain: idle sessions closed, transactions finish

def test_drain_idle_and_mid_transaction(upstream_factory, relabel_factory, client_ctx):
    up = upstream_factory("implicit")
    rl = relabel_factory(up.port, "implicit")
    idle = h.open_session(rl, "implicit", client_ctx)
    idle_st = h.open_session(rl, "starttls", client_ctx)
    # after MAIL and RCPT were accepted, before DATA
    after_rcpt = h.open_session(rl, "implicit", client_ctx)
    assert after_rcpt.cmd("MAIL FROM:<rcpt-state@example.net>").code == 250
    assert after_rcpt.cmd("RCPT TO:<rcpt@example.org>").code == 250
    mid_body = body_for("drain-mid-data", 96 * 1024)
    mid, rest = start_mid_data(rl, client_ctx, mid_body, "starttls")
    time.sleep(0.2)
    try:
        os.kill(rl.pid, signal.SIGTERM)
        # between transactions: 421 at once, then closed
        for c in (idle, idle_st):
            r = c.read_reply()
            assert_shutdown_421(r)
            assert c.closed(timeout=5)
        # the listeners are gone
        assert refused(rl.ports["smtps"]), "new connection accepted after SIGTERM"
        assert refused(rl.ports["submission"]), "new connection accepted after SIGTERM"
        # inside DATA: the message finishes with the upstream's 250, then 421
        mid.send(rest)
        r = mid.read_reply()
        assert r.code == 250 and b"Great success" in r.raw, r
        assert_shutdown_421(mid.read_reply())
        assert mid.closed(timeout=5)
        # after RCPT: DATA and the message still go through
        r = after_rcpt.cmd("DATA")
        assert r.code == 354, r
        rcpt_body = body_for("drain-after-rcpt")
        after_rcpt.send(h.stuff(rcpt_body))
        r = after_rcpt.read_reply()
        assert r.code == 250, r
        assert_shutdown_421(after_rcpt.read_reply())
        assert after_rcpt.closed(timeout=5)
    finally:
        for c in (idle, idle_st, after_rcpt, mid):
            c.close()
    wait_exit_0(rl)
    assert messages_by_data(up) == sorted([mid_body, rcpt_body])


def test_drain_waiting_for_end_of_data_reply(upstream_factory, relabel_factory, client_ctx):
    """SIGTERM while the upstream is still deciding on the message: its 250 is relayed."""
    up = upstream_factory("implicit", data_delay=1.5)
    rl = relabel_factory(up.port, "implicit")
    c = h.open_session(rl, "implicit", client_ctx)
    body = body_for("drain-waiting-for-dot-reply")
    try:
        assert c.cmd("MAIL FROM:<wait@example.net>").code == 250
        assert c.cmd("RCPT TO:<rcpt@example.org>").code == 250
        assert c.cmd("DATA").code == 354
        c.send(h.stuff(body))
        time.sleep(0.4)  # the end of data is upstream, its reply 1.1 s away
        os.kill(rl.pid, signal.SIGTERM)
        r = c.read_reply()
        assert r.code == 250 and b"Great success" in r.raw, r
        assert_shutdown_421(c.read_reply())
        assert c.closed(timeout=5)
    finally:
        c.close()
    wait_exit_0(rl)
    assert [m.data for m in up.messages] == [body]


def test_sighup_while_draining_binds_nothing(certs, upstream_factory, relabel_factory,
                                            client_ctx):
    up = upstream_factory("implicit")
    rl = relabel_factory(up.port, "implicit")
    body = body_for("hup-during-drain", 16 * 1024)
    c, rest = start_mid_data(rl, client_ctx, body)
    try:
        os.kill(rl.pid, signal.SIGTERM)
        wait_draining(rl)
        os.kill(rl.pid, signal.SIGHUP)
        time.sleep(0.5)
        assert rl.proc.poll() is None, "the drain ended the transaction early"
        assert refused(rl.ports["smtps"]) and refused(rl.ports["submission"]), \
            "SIGHUP during the drain opened listeners again"
        c.send(rest)
        r = c.read_reply()
        assert r.code == 250, r
        assert_shutdown_421(c.read_reply())
    finally:
        c.close()
    wait_exit_0(rl)
    assert [m.data for m in up.messages] == [body]


# --------------------------------------------------------------------------
# 7. drain timeout

@pytest.mark.parametrize("source", ["start", "reload"])
def test_drain_timeout_aborts_without_end_of_data(certs, upstream_factory, relabel_factory,
                                                  client_ctx, source):
    """drain_timeout = 1s, from the config relabel started with or from a reload."""
    up = upstream_factory("implicit")
    if source == "start":
        rl = relabel_factory(up.port, "implicit", relabel_opts={"drain_timeout": "1s"})
    else:
        rl = relabel_factory(up.port, "implicit")
        write_config(rl, build_config(certs, up.port, std_listeners(rl.ports),
                                      relabel_opts={"drain_timeout": "1s"}))
        reload(rl, "ok")
    body = body_for("never-finished", 32 * 1024)
    c, _ = start_mid_data(rl, client_ctx, body)
    try:
        time.sleep(0.2)
        t0 = time.monotonic()
        os.kill(rl.pid, signal.SIGTERM)
        got = read_421_or_close(c, timeout=6)
        elapsed = time.monotonic() - t0
    finally:
        c.close()
    assert 0.7 <= elapsed <= 4.0, f"session ended {elapsed:.2f}s after SIGTERM, drain_timeout 1s"
    assert not [r for r in got if r.code < 400], f"a positive reply for an aborted message: {got}"
    assert all(r.code == 421 and r.raw.startswith(b"421 4.3.2") for r in got), got
    wait_exit_0(rl, timeout=5)
    h.wait_for(up.recorder.all_closed, what="upstream connection closed")
    time.sleep(0.3)
    assert up.messages == [], f"the upstream received an end of data: {up.messages}"


# --------------------------------------------------------------------------
# 8. second signal

@pytest.mark.parametrize("signals", [(signal.SIGTERM, signal.SIGTERM),
                                     (signal.SIGTERM, signal.SIGINT)],
                         ids=["term-term", "term-int"])
def test_second_signal_aborts_at_once(upstream_factory, relabel_factory, client_ctx, signals):
    up = upstream_factory("implicit")
    rl = relabel_factory(up.port, "implicit")  # drain_timeout: the default 30 s
    body = body_for("cut-by-second-signal", 32 * 1024)
    c, _ = start_mid_data(rl, client_ctx, body)
    try:
        time.sleep(0.2)
        os.kill(rl.pid, signals[0])
        wait_draining(rl)
        time.sleep(0.3)
        assert rl.proc.poll() is None, "relabel exited before its transaction finished"
        t1 = time.monotonic()
        os.kill(rl.pid, signals[1])
        wait_exit_0(rl, timeout=5)
        took = time.monotonic() - t1
        got = read_421_or_close(c, timeout=5)
    finally:
        c.close()
    assert took < 2.0, f"exit {took:.2f}s after the second signal"
    assert not [r for r in got if r.code < 400], f"a positive reply for an aborted message: {got}"
    assert all(r.code == 421 for r in got), got
    time.sleep(0.3)
    assert up.messages == [], f"the upstream received an end of data: {up.messages}"


# --------------------------------------------------------------------------
# 9. no new transaction while draining

@pytest.mark.parametrize("how", ["pipelined", "after-reply"])
def test_draining_session_cannot_start_new_transaction(upstream_factory, relabel_factory,
                                                       client_ctx, how):
    up = upstream_factory("implicit")
    rl = relabel_factory(up.port, "implicit")
    body = body_for(f"last-message-{how}", 16 * 1024)
    c, rest = start_mid_data(rl, client_ctx, body)
    try:
        os.kill(rl.pid, signal.SIGTERM)
        wait_draining(rl)
        mail = b"MAIL FROM:<second@example.net>\r\n"
        if how == "pipelined":
            c.send(rest + mail)
            r = c.read_reply()
            assert r.code == 250, r
        else:
            c.send(rest)
            r = c.read_reply()
            assert r.code == 250, r
            try:
                c.send(mail)
            except OSError:
                pass  # already closed after its 421: fine, the 421 is read below
        got = read_421_or_close(c, timeout=5)
    finally:
        c.close()
    assert got, "closed without a 421"
    assert_shutdown_421(got[0])
    assert all(r.code == 421 for r in got), got
    wait_exit_0(rl)
    assert [m.data for m in up.messages] == [body]
    assert up.recorder.verbs().count("MAIL") == 1, up.recorder.verbs()


def test_draining_session_rset_ends_it(upstream_factory, relabel_factory, client_ctx):
    """Inside a transaction at SIGTERM, the client abandons it with RSET: now between
    transactions, it gets 421 4.3.2 and is closed (it cannot hold the drain open)."""
    up = upstream_factory("implicit")
    rl = relabel_factory(up.port, "implicit")
    c = h.open_session(rl, "implicit", client_ctx)
    try:
        assert c.cmd("MAIL FROM:<abandon@example.net>").code == 250
        os.kill(rl.pid, signal.SIGTERM)
        wait_draining(rl)
        assert c.cmd("NOOP").code == 250  # still inside the transaction
        assert c.cmd("RSET").code == 250
        got = read_421_or_close(c, timeout=5)
    finally:
        c.close()
    assert got and all(r.code == 421 for r in got), got
    assert_shutdown_421(got[0])
    wait_exit_0(rl)
    assert up.messages == []
