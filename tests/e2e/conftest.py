"""
Fixtures for the relabel end-to-end tests.  Run from the repository root:

    /usr/bin/python3 -m pytest tests/e2e            # everything
    /usr/bin/python3 -m pytest tests/e2e -m "not slow"

Environment:
    RELABEL_BIN          the daemon (default: build/relabel)
    RELABEL_CERT_SCRIPT  the certificate generator (default: certs/gen-test-certs.sh)

Fixtures (see harness.py for the classes):
    certs              session: directory made by certs/gen-test-certs.sh
    client_ctx         session: ssl.SSLContext trusting only the test CA, checking names
    upstream_factory   make(tls="implicit"|"starttls", cert="upstream", data_delay=0, port=None,
                       close_after_535=True)
                       -> a started AioUpstream (aiosmtpd, Mailgun look-alike; like Mailgun
                       it closes the connection after a failed AUTH)
    scripted_factory   make(**knobs) -> a started ScriptedUpstream (faults)
    relabel_factory    make(upstream_port, upstream_tls, relabel_opts=..., listener_opts=...,
                       brand_opts=..., upstream_opts=..., metrics_opts=None, brands=None,
                       upstreams=None, wrapper=None, start_timeout=10, stop_timeout=10)
                       (listener_opts naming a new listener adds it on a free port)
                       -> a started Relabel; stopped with SIGTERM at teardown, exit 0 asserted
    relay              parametrized over the four modes (client implicit/starttls x
                       upstream implicit/starttls): .session() gives a client at relay state
    relay_ii           the same, implicit listener + implicit upstream only
    free_ports         make(n) -> n free ports on 127.0.0.1
"""

import os
import subprocess

import pytest

import harness as h


@pytest.fixture(scope="session")
def certs(tmp_path_factory):
    script = os.environ.get("RELABEL_CERT_SCRIPT",
                            os.path.join(h.REPO_ROOT, "certs", "gen-test-certs.sh"))
    if not os.path.exists(script):
        pytest.fail(f"certificate generator {script} does not exist")
    out = str(tmp_path_factory.mktemp("certs"))
    res = subprocess.run(["bash", script, out], capture_output=True, timeout=120)
    if res.returncode != 0:
        pytest.fail(f"{script} failed ({res.returncode}): {res.stdout!r} {res.stderr!r}")
    for name in ("ca.crt", "ca.key", "upstream.crt", "upstream.key", "brand.crt", "brand.key",
                 "wrongname.crt", "wrongname.key", "expired.crt", "expired.key",
                 "unknownca.crt", "unknownca.key", "mismatch.key", "brand-rsa.crt",
                 "brand-rsa.key", "brand-b.crt", "brand-b.key", "brand-c.crt", "brand-c.key"):
        if not os.path.exists(os.path.join(out, name)):
            pytest.fail(f"{script} did not make {name}")
    return out


@pytest.fixture(scope="session")
def client_ctx(certs):
    return h.client_context(certs)


@pytest.fixture
def free_ports():
    return lambda n=1: [h.free_port() for _ in range(n)]


@pytest.fixture
def upstream_factory(certs):
    made = []

    def make(tls="implicit", cert="upstream", data_delay=0.0, port=None, close_after_535=True):
        up = h.AioUpstream(certs, tls=tls, cert=cert, data_delay=data_delay, port=port,
                           close_after_535=close_after_535)
        made.append(up)
        return up.start()

    yield make
    for up in made:
        up.stop()


@pytest.fixture
def scripted_factory(certs):
    made = []

    def make(**kwargs):
        up = h.ScriptedUpstream(certs, **kwargs)
        made.append(up)
        return up.start()

    yield make
    for up in made:
        up.stop()


@pytest.fixture(scope="session")
def relabel_binary():
    path = h.relabel_bin()
    if not os.access(path, os.X_OK):
        pytest.fail(f"relabel binary {path} not found (set RELABEL_BIN)")
    return path


@pytest.fixture
def relabel_factory(certs, relabel_binary, tmp_path):
    made = []

    def make(upstream_port, upstream_tls="implicit", relabel_opts=None, listener_opts=None,
             brand_opts=None, upstream_opts=None, metrics_opts=None, brands=None, upstreams=None,
             wrapper=None, start_timeout=h.TIMEOUT, stop_timeout=h.TIMEOUT):
        ports = {"smtps": h.free_port(), "submission": h.free_port()}
        for name in listener_opts or {}:
            ports.setdefault(name, h.free_port())
        cfg = h.relabel_config(certs, upstream_port, upstream_tls, ports, relabel_opts,
                               listener_opts, brand_opts, upstream_opts, metrics_opts, brands,
                               upstreams)
        path = str(tmp_path / f"relabel-{len(made)}.ini")
        with open(path, "w") as f:
            f.write(cfg.text())
        r = h.Relabel(relabel_binary, path, ports, wrapper=wrapper)
        r.config = cfg
        r.stop_timeout = stop_timeout
        made.append(r)
        return r.start(timeout=start_timeout)

    yield make
    problems = []
    for r in made:
        rc, killed = r.stop(timeout=r.stop_timeout)
        if killed or rc != 0:
            problems.append(f"relabel pid {r.pid}: exit code {rc}{' (SIGKILL)' if killed else ''}"
                            f" after SIGTERM; log tail:\n{r.log[-4000:]}")
    if problems:
        pytest.fail("\n".join(problems))


class Relay:
    def __init__(self, client_mode, up_mode, upstream, relabel, ctx):
        self.client_mode = client_mode
        self.up_mode = up_mode
        self.upstream = upstream
        self.relabel = relabel
        self.ctx = ctx
        self.clients = []

    def session(self, ehlo=True):
        c = h.open_session(self.relabel, self.client_mode, self.ctx, ehlo)
        self.clients.append(c)
        return c

    def connect(self, listener=None, tls=None):
        """A bare client (greeting read) on the mode's listener, or the one named."""
        listener = listener or ("smtps" if self.client_mode == "implicit" else "submission")
        if tls is None:
            tls = "implicit" if listener == "smtps" else None
        c = h.Client(self.relabel.ports[listener], self.ctx, tls=tls)
        self.clients.append(c)
        return c

    def close_clients(self):
        for c in self.clients:
            c.close()


def _relay(request, upstream_factory, relabel_factory, client_ctx, client_mode, up_mode):
    marker = request.node.get_closest_marker("relabel_opts")
    opts = dict(marker.kwargs) if marker else {}
    data_delay = opts.pop("data_delay", 0.0)
    up = upstream_factory(up_mode, data_delay=data_delay)
    rl = relabel_factory(up.port, up_mode, **opts)
    relay = Relay(client_mode, up_mode, up, rl, client_ctx)
    return relay


@pytest.fixture(params=h.MODES, ids=h.MODE_IDS)
def relay(request, upstream_factory, relabel_factory, client_ctx):
    r = _relay(request, upstream_factory, relabel_factory, client_ctx, *request.param)
    yield r
    r.close_clients()


@pytest.fixture
def relay_ii(request, upstream_factory, relabel_factory, client_ctx):
    r = _relay(request, upstream_factory, relabel_factory, client_ctx, "implicit", "implicit")
    yield r
    r.close_clients()


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "testssl: TLS audit with testssl.sh (slow); deselect with -m \"not testssl\"")
    config.addinivalue_line(
        "markers", "valgrind: relabel under valgrind memcheck (slow); deselect with "
                   "-m \"not valgrind\"")
    config.addinivalue_line(
        "markers", "relabel_opts(**kw): options for the relay fixtures' relabel_factory call "
                   "(relabel_opts=, listener_opts=, ...; data_delay= for the upstream)")


@pytest.fixture(params=["implicit", "starttls"], ids=["up-implicit", "up-starttls"])
def relay_st(request, upstream_factory, relabel_factory, client_ctx):
    """STARTTLS listener, both upstream modes."""
    r = _relay(request, upstream_factory, relabel_factory, client_ctx, "starttls", request.param)
    yield r
    r.close_clients()
