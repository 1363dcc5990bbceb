"""
Memory safety: relabel (the normal build, build/relabel unless
RELABEL_VALGRIND_BIN says otherwise) under valgrind memcheck for a slice of
the suite: the implicit and the STARTTLS listener, AUTH, messages (one with
bare LFs to normalise), a STARTTLS command injection refused, an upstream
reset mid-session, a client reset mid-DATA, an over-long line, an idle
timeout; then SIGTERM.  Asserts exit code 0, "ERROR SUMMARY: 0 errors" and
no definitely-lost bytes: every handle closed, every buffer freed.

Skip with -m "not valgrind".
"""

import os
import re
import shutil
import time

import pytest

import harness as h

VALGRIND = shutil.which("valgrind")

pytestmark = [pytest.mark.valgrind,
              pytest.mark.skipif(VALGRIND is None, reason="valgrind not installed")]

WRAPPER = [VALGRIND or "valgrind", "--tool=memcheck", "--leak-check=full",
           "--errors-for-leak-kinds=definite", "--error-exitcode=99", "--track-fds=no",
           "--num-callers=30"]
SLOW = {"command_timeout": "20s", "data_timeout": "20s", "handshake_timeout": "20s",
        "upstream_connect_timeout": "20s", "upstream_timeout": "20s", "log_level": "info"}


def valgrind_binary():
    path = os.environ.get("RELABEL_VALGRIND_BIN", os.path.join(h.REPO_ROOT, "build", "relabel"))
    if not os.path.isabs(path):
        path = os.path.join(h.REPO_ROOT, path)
    return path


def message(c, body):
    assert c.auth_plain().code == 235
    r = c.send_message(body)
    assert r.code == 250, r
    assert c.cmd("QUIT").code == 221
    assert c.closed(timeout=20)
    c.close()


def test_valgrind_slice(certs, client_ctx, scripted_factory, tmp_path):
    binary = valgrind_binary()
    if not os.access(binary, os.X_OK):
        pytest.fail(f"{binary} not found (build with ninja -C build)")
    up = scripted_factory(tls="starttls")
    ports = {"smtps": h.free_port(), "submission": h.free_port()}
    cfg = h.relabel_config(certs, up.port, "starttls", ports, relabel_opts=SLOW)
    path = str(tmp_path / "relabel-valgrind.ini")
    with open(path, "w") as f:
        f.write(cfg.text())
    rl = h.Relabel(binary, path, ports, wrapper=WRAPPER)
    rl.start(timeout=60)
    idles = []
    try:
        # 1. implicit TLS, AUTH, a message
        c = h.Client(ports["smtps"], client_ctx, tls="implicit", timeout=30)
        assert c.ehlo().code == 250
        message(c, b"Subject: valgrind 1\r\n\r\nimplicit\r\n")

        # 2. STARTTLS listener, a message with bare LFs (normalised)
        c = h.Client(ports["submission"], client_ctx, timeout=30)
        assert c.ehlo().code == 250
        c.starttls()
        assert c.ehlo().code == 250
        message(c, b"Subject: valgrind 2\r\n\r\nbare\nlf\n.dot\r\n")

        # 3. STARTTLS command injection: refused and closed
        c = h.Client(ports["submission"], client_ctx, timeout=30)
        assert c.ehlo().code == 250
        c.send(b"STARTTLS\r\nNOOP\r\n")
        r = c.read_reply()
        assert r.code == 554, r
        assert c.closed(timeout=20)
        c.close()

        # 4. upstream reset at RCPT: 421, never a 250
        up.arm(h.Fault("RCPT", "rst"))
        c = h.Client(ports["smtps"], client_ctx, tls="implicit", timeout=30)
        assert c.ehlo().code == 250
        assert c.auth_plain().code == 235
        assert c.cmd("MAIL FROM:<s@example.net>").code == 250
        r = c.cmd("RCPT TO:<r@example.org>")
        assert r.code == 421, r
        assert c.closed(timeout=20)
        c.close()

        # 5. client RST mid-DATA
        c = h.Client(ports["smtps"], client_ctx, tls="implicit", timeout=30)
        assert c.ehlo().code == 250
        assert c.auth_plain().code == 235
        assert c.cmd("MAIL FROM:<s@example.net>").code == 250
        assert c.cmd("RCPT TO:<r@example.org>").code == 250
        assert c.cmd("DATA").code == 354
        c.send(h.make_body(200 * 1024)[:150 * 1024])
        c.ls.reset()

        # 6. an over-long line, then a pipelined burst, then an idle client
        c = h.Client(ports["submission"], client_ctx, timeout=30)
        r = c.cmd("NOOP " + "x" * 100000)
        assert r.code == 500, r
        c.send(b"NOOP\r\n" * 50)
        for _ in range(50):
            assert c.read_reply().code == 250
        idles.append(h.Client(ports["smtps"], client_ctx, tls="implicit", timeout=30))
        c.close()

        # 7. a last normal session, with the idle one still open at shutdown
        c = h.Client(ports["smtps"], client_ctx, tls="implicit", timeout=30)
        assert c.ehlo().code == 250
        message(c, b"Subject: valgrind 3\r\n\r\nlast\r\n")
        h.wait_for(lambda: len(up.messages) >= 3, timeout=20, what="3 upstream messages")
        time.sleep(1)
    finally:
        rc, killed = rl.stop(timeout=60)
        for c in idles:
            c.close()
    log = rl.log
    summary = re.findall(r"ERROR SUMMARY: (\d+) errors", log)
    definitely = re.findall(r"definitely lost: ([\d,]+) bytes", log)
    tail = log[-6000:]
    assert not killed, f"relabel under valgrind did not stop on SIGTERM:\n{tail}"
    assert summary, f"no valgrind summary in the output:\n{tail}"
    assert "HEAP SUMMARY" in log, f"valgrind did no leak check:\n{tail}"
    assert definitely or "All heap blocks were freed" in log, tail
    assert summary[-1] == "0", f"valgrind found errors:\n{log[-20000:]}"
    assert all(d.replace(",", "") == "0" for d in definitely), \
        f"definitely lost: {definitely}\n{log[-20000:]}"
    assert rc == 0, f"exit code {rc}:\n{tail}"
    delivered = [m for m in up.messages if m.reply == 250]
    assert len(delivered) == 3, up.messages
    assert not any(h.has_bare_cr_lf(m.data) for m in delivered)
    print("\n".join(re.findall(r"==\d+== +(?:ERROR SUMMARY|definitely lost|in use at exit|"
                                r"All heap blocks).*", log)))
