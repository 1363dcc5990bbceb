"""
Workers: `workers = auto | N` event loops, one thread each, every one with
its own listening sockets on every address (SO_REUSEPORT) and its own
sessions.  The limits hold for the whole process, reloads change every
worker's listeners all or nothing, and a drain waits for every worker.
(The rest of the suite runs with the default, `auto`: one per CPU.)
"""

import os
import re
import signal
import socket
import threading

import pytest

import harness as h


def worker_threads(pid):
    """Names of relabel's worker threads (from /proc)."""
    names = []
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/comm") as f:
                names.append(f.read().strip())
        except OSError:
            pass
    return sorted(n for n in names if n.startswith("relabel-w"))


def workers_seen(rl):
    return {int(m) for m in re.findall(r"session end .* worker=(\d+) ", rl.log)}


def quick_session(rl, ctx):
    c = h.open_session(rl, "implicit", ctx)
    try:
        assert c.cmd("NOOP").code == 250
        assert c.cmd("QUIT").code == 221
    finally:
        c.close()


@pytest.mark.parametrize("n", [1, 3])
def test_threads_and_sessions_spread(upstream_factory, relabel_factory, client_ctx, n):
    up = upstream_factory("implicit")
    rl = relabel_factory(up.port, "implicit", relabel_opts={"workers": str(n)})
    rl.wait_log(rf"relabel ready .* workers={n} ")
    want = [f"relabel-w{i}" for i in range(n)]
    h.wait_for(lambda: worker_threads(rl.pid) == want, what=f"threads {want}")
    # The kernel spreads connections by their addresses and ports: 60
    # sessions reach every worker (the chance that one gets none is
    # (2/3)^60 for three workers).
    for _ in range(60):
        quick_session(rl, client_ctx)
    h.wait_for(lambda: len(re.findall(r"session end", rl.log)) >= 60, what="60 session ends")
    assert workers_seen(rl) == set(range(n))


def test_per_address_limit_holds_across_workers(upstream_factory, relabel_factory, client_ctx):
    """max_connections_per_ip = 3 with 4 workers: wherever the sessions
    land, the fourth from one address is refused."""
    up = upstream_factory("implicit")
    rl = relabel_factory(up.port, "implicit",
                         relabel_opts={"workers": "4", "max_connections_per_ip": "3"})
    held = [h.Client(rl.ports["submission"], client_ctx) for _ in range(3)]
    try:
        assert all(c.greeting.code == 220 for c in held)
        for _ in range(5):
            over = h.Client(rl.ports["submission"])
            assert over.greeting.code == 421, over.greeting
            over.close()
        other = h.Client(rl.ports["submission"], source="127.0.0.2")
        assert other.greeting.code == 220
        other.close()
    finally:
        for c in held:
            c.close()
    h.wait_for(lambda: "max_connections_per_ip=3" in rl.log, what="refusal log line")

    def accepted():
        c = h.Client(rl.ports["submission"])
        try:
            return c.greeting.code == 220
        finally:
            c.close()
    h.wait_for(accepted, what="a session accepted once the others ended")


def test_total_limit_holds_across_workers(upstream_factory, relabel_factory, client_ctx):
    up = upstream_factory("implicit")
    rl = relabel_factory(up.port, "implicit",
                         relabel_opts={"workers": "4", "max_connections": "4"})
    held = [h.Client(rl.ports["submission"], client_ctx, source=f"127.0.0.{i + 2}")
            for i in range(4)]
    try:
        assert all(c.greeting.code == 220 for c in held)
        over = h.Client(rl.ports["submission"], source="127.0.0.9")
        assert over.greeting.code == 421, over.greeting
        over.close()
    finally:
        for c in held:
            c.close()
    rl.wait_log(r"too many connections \(max_connections=4\)")


def test_reload_adds_listener_on_every_worker(upstream_factory, relabel_factory, client_ctx,
                                             free_ports):
    """A listener added by SIGHUP is served by every worker: many
    connections to it all get the greeting (none lands on a worker that
    did not bind it)."""
    up = upstream_factory("implicit")
    rl = relabel_factory(up.port, "implicit", relabel_opts={"workers": "3"})
    (port,) = free_ports(1)
    cfg = rl.config
    cfg.section('[listener "extra"]', {"listen": f"{h.LOCALHOST}:{port}", "tls": "starttls",
                                     "brand": "example"})
    with open(rl.config_path, "w") as f:
        f.write(cfg.text())
    os.kill(rl.pid, signal.SIGHUP)
    rl.wait_log(r"reload ok")
    for _ in range(30):
        c = h.Client(port)
        assert c.greeting.code == 220
        assert c.cmd("QUIT").code == 221
        c.close()
    assert len(re.findall(rf"listening on 127\.0\.0\.1:{port} ", rl.log)) == 3


def test_bad_reload_binds_nowhere(upstream_factory, relabel_factory, client_ctx, free_ports):
    """A reload with one address that cannot be bound changes no worker:
    the address that could be bound is not served either."""
    up = upstream_factory("implicit")
    rl = relabel_factory(up.port, "implicit", relabel_opts={"workers": "3"})
    good, taken = free_ports(2)
    blocker = socket.socket()
    blocker.bind((h.LOCALHOST, taken))
    blocker.listen(1)
    try:
        cfg = rl.config
        cfg.section('[listener "extra"]', {"listen": f"{h.LOCALHOST}:{good}, {h.LOCALHOST}:{taken}",
                                         "tls": "starttls", "brand": "example"})
        with open(rl.config_path, "w") as f:
            f.write(cfg.text())
        os.kill(rl.pid, signal.SIGHUP)
        rl.wait_log(r"reload failed reason=")
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection((h.LOCALHOST, good), timeout=2).close()
        quick_session(rl, client_ctx)
    finally:
        blocker.close()


def test_drain_waits_for_every_worker(upstream_factory, relabel_factory, client_ctx):
    """Transactions open on several workers when SIGTERM comes: each one
    finishes and is delivered, then relabel exits 0."""
    up = upstream_factory("implicit")
    rl = relabel_factory(up.port, "implicit", relabel_opts={"workers": "3", "drain_timeout": "20s"})
    clients = []
    for i in range(9):
        c = h.open_session(rl, "implicit", client_ctx)
        assert c.auth_plain().code == 235
        c.open_data(f"w{i}@example.net", ["r@example.org"])
        clients.append(c)
    os.kill(rl.pid, signal.SIGTERM)
    rl.wait_log(r"received \w+, draining")
    errors = []

    def finish(c, i):
        try:
            c.send(h.stuff(f"Subject: drain {i}\r\n\r\nbody\r\n".encode()))
            r = c.read_reply()
            if r.code != 250:
                errors.append(r)
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=finish, args=(c, i)) for i, c in enumerate(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(h.TIMEOUT)
    assert not errors, errors
    assert len(up.recorder.wait_messages(9)) == 9
    rl.proc.wait(h.TIMEOUT)
    assert rl.proc.returncode == 0, rl.log[-2000:]
    for c in clients:
        c.close()


@pytest.mark.parametrize("value, ok", [("auto", True), ("2", True), ("0", False), ("65", False),
                                       ("many", False)])
def test_workers_key(certs, relabel_binary, tmp_path, value, ok):
    cfg = h.relabel_config(certs, 2465, "implicit", {"smtps": 4465, "submission": 4587},
                           relabel_opts={"workers": value})
    path = tmp_path / "r.ini"
    path.write_text(cfg.text())
    res = h.run_tool([relabel_binary, "--check", "-c", str(path)])
    if ok:
        assert res.returncode == 0, res.stderr
    else:
        assert res.returncode == 1
        assert re.search(rb"r\.ini:\d+: invalid workers \"" + value.encode() +
                         rb"\" \(expected auto or a number from 1 to 64\)", res.stderr), res.stderr
