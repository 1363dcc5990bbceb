"""
Per-listener access lists (allow, deny) and the per-address connection
rate (max_connection_rate): checked on the client's address (the PROXY
header's behind a balancer) before any TLS work.  A refused client on a
STARTTLS listener gets 554 5.7.1 (access) or 421 4.7.0 (rate) and is
closed; on an implicit TLS listener it is closed without a byte.  Other
clients are not affected, and each refusal is logged with its reason.
127.0.0.x source addresses and ::1 stand in for different clients.
"""

import re
import socket
import ssl

import pytest

import harness as h
import proxy_header as pp

DENIED = b"554 5.7.1 smtp.example.com Access denied\r\n"
TOO_MANY = b"421 4.7.0 smtp.example.com Too many connections, try again later\r\n"


@pytest.fixture
def env(upstream_factory, relabel_factory):
    """make(smtps={...}, submission={...}, relabel_opts={...}, v6=False) ->
    (upstream, relabel); v6 adds [::1] on the same ports."""

    def make(smtps=None, submission=None, relabel_opts=None, v6=False):
        up = upstream_factory("implicit")
        lst = {"smtps": dict(smtps or {}), "submission": dict(submission or {})}
        opts = {"max_connection_rate": "0"}
        opts.update(relabel_opts or {})
        ports = {"smtps": h.free_port(), "submission": h.free_port()}
        for name in lst:
            lst[name]["listen"] = f"{h.LOCALHOST}:{ports[name]}" + (
                f", [::1]:{ports[name]}" if v6 else "")
        rl = relabel_factory(up.port, "implicit", relabel_opts=opts, listener_opts=lst)
        rl.ports = ports
        return up, rl

    return make


def connect(port, source=None, host=h.LOCALHOST, preamble=b""):
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    s = socket.socket(family, socket.SOCK_STREAM)
    s.settimeout(h.TIMEOUT)
    if source:
        s.bind((source, 0))
    s.connect((host, port))
    if preamble:
        s.sendall(preamble)
    return h.LineSock(s)


def first_line(port, **kw):
    """The server's first line (b"" if it closed at once) and whether it
    closed right after it.  Meant for refusals: a greeted connection makes
    it wait for its timeout."""
    ls = connect(port, **kw)
    try:
        line = ls.readline()
    except h.ConnectionClosed:
        ls.close()
        return b"", True
    try:
        ls.readline()
        closed = False
    except h.ConnectionClosed:
        closed = True
    except (socket.timeout, TimeoutError):
        closed = False
    ls.close()
    return line, closed


def greeted(port, **kw):
    ls = connect(port, **kw)
    try:
        return ls.readline().startswith(b"220 smtp.example.com ")
    except h.ConnectionClosed:
        return False
    finally:
        ls.close()


def tls_refused(port, ctx, source=None, host=h.LOCALHOST, preamble=b""):
    """True if an implicit TLS listener closes before completing a handshake."""
    s = socket.create_connection((host, port), timeout=h.TIMEOUT,
                                 source_address=(source, 0) if source else None)
    if preamble:
        s.sendall(preamble)
    try:
        t = ctx.wrap_socket(s, server_hostname=h.BRAND_HOST)
    except (ssl.SSLError, ConnectionError, OSError):
        s.close()
        return True
    t.close()
    return False


def tls_greeted(port, ctx, source=None, host=h.LOCALHOST, preamble=b""):
    c = h.Client(port, ctx, tls="implicit", source=source, host=host, preamble=preamble)
    ok = c.greeting.code == 220
    c.close()
    return ok


# --------------------------------------------------------------------------
# allow / deny on the socket's address

def test_deny_v4_on_starttls(env):
    up, rl = env(submission={"deny": "127.0.0.3/32, 10.0.0.0/8"})
    port = rl.ports["submission"]
    line, closed = first_line(port, source="127.0.0.3")
    assert line == DENIED and closed, line
    rl.wait_log(r'refused client=127\.0\.0\.3:\d+ listener=submission '
                r'reason="denied by deny 127\.0\.0\.3/32"')
    assert greeted(port, source="127.0.0.2")
    assert greeted(port)
    assert up.recorder.conns == []


def test_allow_v4_on_starttls(env, client_ctx):
    up, rl = env(submission={"allow": "127.0.0.2"})
    port = rl.ports["submission"]
    line, closed = first_line(port)
    assert line == DENIED and closed, line
    rl.wait_log(r'refused client=127\.0\.0\.1:\d+ listener=submission '
                r'reason="denied by allow \(no network matches\)"')
    assert greeted(port, source="127.0.0.2")
    # The other listener has no list and is open to everyone.
    assert tls_greeted(rl.ports["smtps"], client_ctx)


def test_deny_wins_over_allow(env):
    up, rl = env(submission={"allow": "127.0.0.0/8", "deny": "127.0.0.3"})
    port = rl.ports["submission"]
    assert first_line(port, source="127.0.0.3")[0] == DENIED
    assert greeted(port, source="127.0.0.2")


def test_deny_on_implicit_closes_before_tls(env, client_ctx):
    up, rl = env(smtps={"deny": "127.0.0.3/32"})
    port = rl.ports["smtps"]
    s = socket.create_connection((h.LOCALHOST, port), timeout=h.TIMEOUT,
                                 source_address=("127.0.0.3", 0))
    assert pp.closed_without_reply(s)  # not a byte, not even a TLS alert
    s.close()
    assert tls_refused(port, client_ctx, source="127.0.0.3")
    rl.wait_log(r'refused client=127\.0\.0\.3:\d+ listener=smtps '
                r'reason="denied by deny 127\.0\.0\.3/32"')
    assert tls_greeted(port, client_ctx, source="127.0.0.2")


def test_v6_rules(env, client_ctx):
    up, rl = env(submission={"deny": "::1/128"}, smtps={"allow": "::1"}, v6=True)
    sub, smtps = rl.ports["submission"], rl.ports["smtps"]
    line, closed = first_line(sub, host="::1")
    assert line == DENIED and closed, line
    rl.wait_log(r'refused client=\[::1\]:\d+ listener=submission reason="denied by deny ::1/128"')
    assert greeted(sub)  # IPv4 is not matched by an IPv6 rule
    assert tls_greeted(smtps, client_ctx, host="::1")
    assert tls_refused(smtps, client_ctx)
    rl.wait_log(r'refused client=127\.0\.0\.1:\d+ listener=smtps '
                r'reason="denied by allow \(no network matches\)"')


# --------------------------------------------------------------------------
# allow / deny on the PROXY header's address

PROXIED = {"proxy_protocol": "any", "proxy_trusted": "127.0.0.2"}


def test_lists_match_the_header_address(env, client_ctx):
    up, rl = env(submission=dict(PROXIED, allow="203.0.113.0/24, 198.51.100.0/24, 2001:db8::/32",
                                 deny="198.51.100.0/24, 2001:db8:bad::/48"),
                 smtps=dict(PROXIED, deny="198.51.100.5"))
    sub = rl.ports["submission"]
    kw = {"source": pp.BALANCER}
    # The balancer (127.0.0.2) is in no list: only the header's address counts.
    assert greeted(sub, preamble=pp.v1("203.0.113.5", 1001), **kw)
    line, closed = first_line(sub, preamble=pp.v1("198.51.100.5", 1002), **kw)
    assert line == DENIED and closed, line
    rl.wait_log(r'refused client=198\.51\.100\.5:1002 listener=submission '
                r'reason="denied by deny 198\.51\.100\.0/24"')
    # An IPv4-mapped address meets the IPv4 rules.
    assert first_line(sub, preamble=pp.v1("::ffff:198.51.100.6", 1003), **kw)[0] == DENIED
    rl.wait_log(r'refused client=198\.51\.100\.6:1003 listener=submission')
    # IPv6 clients in the header.
    assert greeted(sub, preamble=pp.v2("2001:db8::1", 1004), **kw)
    assert first_line(sub, preamble=pp.v2("2001:db8:bad::1", 1005), **kw)[0] == DENIED
    assert first_line(sub, preamble=pp.v2("192.0.2.99", 1006), **kw)[0] == DENIED
    rl.wait_log(r'refused client=192\.0\.2\.99:1006 listener=submission '
                r'reason="denied by allow \(no network matches\)"')
    # Implicit TLS: closed before the handshake.
    smtps = rl.ports["smtps"]
    assert tls_refused(smtps, client_ctx, preamble=pp.v2("198.51.100.5", 1007), **kw)
    rl.wait_log(r'refused client=198\.51\.100\.5:1007 listener=smtps '
                r'reason="denied by deny 198\.51\.100\.5/32"')
    assert tls_greeted(smtps, client_ctx, preamble=pp.v2("198.51.100.6", 1008), **kw)


# --------------------------------------------------------------------------
# max_connection_rate

def test_rate_refuses_the_next_connection_on_starttls(env):
    up, rl = env(relabel_opts={"max_connection_rate": "3"})
    port = rl.ports["submission"]
    for _ in range(3):
        assert greeted(port)
    line, closed = first_line(port)
    assert line == TOO_MANY and closed, line
    rl.wait_log(r'refused client=127\.0\.0\.1:\d+ listener=submission '
                r'reason="too many new connections \(max_connection_rate=3 per minute\)"')
    # Another address has its own count; the limited one stays limited.
    for _ in range(3):
        assert greeted(port, source="127.0.0.2")
    assert first_line(port)[0] == TOO_MANY
    assert first_line(port, source="127.0.0.2")[0] == TOO_MANY
    assert greeted(port, source="127.0.0.3")


def test_rate_on_implicit_closes_before_tls(env, client_ctx):
    up, rl = env(relabel_opts={"max_connection_rate": "2"})
    port = rl.ports["smtps"]
    assert tls_greeted(port, client_ctx)
    assert tls_greeted(port, client_ctx)
    assert tls_refused(port, client_ctx)
    rl.wait_log(r'refused client=127\.0\.0\.1:\d+ listener=smtps '
                r'reason="too many new connections \(max_connection_rate=2 per minute\)"')
    assert tls_greeted(port, client_ctx, source="127.0.0.2")


def test_rate_counts_the_header_address(env):
    up, rl = env(relabel_opts={"max_connection_rate": "2"}, submission=PROXIED)
    port = rl.ports["submission"]
    kw = {"source": pp.BALANCER}
    assert greeted(port, preamble=pp.v1("203.0.113.9", 2001), **kw)
    assert greeted(port, preamble=pp.v1("203.0.113.9", 2002), **kw)
    assert first_line(port, preamble=pp.v1("203.0.113.9", 2003), **kw)[0] == TOO_MANY
    rl.wait_log(r'refused client=203\.0\.113\.9:2003 listener=submission '
                r'reason="too many new connections')
    # The balancer's own address is never the one counted.
    for i in range(5):
        assert greeted(port, preamble=pp.v1(f"203.0.113.{20 + i}", 2010 + i), **kw)


def test_rate_off(env):
    up, rl = env(relabel_opts={"max_connection_rate": "0"})
    port = rl.ports["submission"]
    for _ in range(20):
        assert greeted(port)


# --------------------------------------------------------------------------
# configuration

def write(tmp_path, cfg):
    p = tmp_path / "relabel.ini"
    p.write_text(cfg.text())
    return str(p)


def base(certs, **kw):
    return h.relabel_config(certs, 2465, "implicit", {"smtps": 2001, "submission": 2002}, **kw)


@pytest.mark.parametrize("section,opts,key,message", [
    ('[listener "smtps"]', {"listener_opts": {"smtps": {"allow": "10.0.0.0/33"}}}, "allow",
     'invalid allow: "10.0.0.0/33": the prefix length is not a number from 0 to 32'),
    ('[listener "smtps"]', {"listener_opts": {"smtps": {"deny": "10.0.0.0/8,, ::1"}}}, "deny",
     "invalid deny: empty item in the list"),
    ('[listener "submission"]', {"listener_opts": {"submission": {"deny": "2001:db8::1/32"}}},
     "deny", 'invalid deny: "2001:db8::1/32": bits are set after the prefix'),
    ("[relabel]", {"relabel_opts": {"max_connection_rate": "lots"}}, "max_connection_rate",
     'invalid max_connection_rate "lots" (expected a number from 0 to 1000000)'),
])
def test_config_errors(certs, relabel_binary, tmp_path, section, opts, key, message):
    cfg = base(certs, **opts)
    path = write(tmp_path, cfg)
    res = h.run_check(relabel_binary, path)
    out = (res.stdout + res.stderr).decode("utf-8", "replace")
    assert res.returncode != 0, out
    assert f"{path}:{cfg.line_of(section, key)}: {message}" in out, out


def test_check_shows_lists_and_rate(certs, relabel_binary, tmp_path):
    cfg = base(certs, relabel_opts={"max_connection_rate": "30"},
               listener_opts={"submission": {"allow": "192.0.2.0/24 ::1", "deny": "192.0.2.7"}})
    res = h.run_check(relabel_binary, write(tmp_path, cfg))
    out = res.stdout.decode()
    assert res.returncode == 0, out
    sub = out[out.index("  listener submission:"):]
    assert re.match(r"  listener submission:[^\n]*\n    allow 192\.0\.2\.0/24, ::1/128\n"
                    r"    deny 192\.0\.2\.7/32\n", sub), out
    assert "  max_connection_rate: 30 per minute per client address\n" in out, out
