"""
PROXY protocol listeners (proxy_protocol, proxy_trusted): the header is
required from the trusted balancers and accepted only from them; its
source address is the client's in every log line and in the per-address
connection limit; a mail goes through end to end behind it, over implicit
TLS and STARTTLS.  127.0.0.2 stands in for the balancer, 127.0.0.3 for a
client that bypasses it; the addresses inside headers are documentation
networks that never touch a socket.
"""

import re
import socket
import time

import pytest

import harness as h
import proxy_header as pp

TRUSTED = {"proxy_protocol": "any", "proxy_trusted": f"10.0.0.0/8, {pp.BALANCER}/32, ::1/128"}
BODY = b"From: a@example.net\r\nTo: b@example.org\r\nSubject: via the balancer\r\n\r\nHello.\r\n"


@pytest.fixture
def env(upstream_factory, relabel_factory):
    """make(smtps={...}, submission={...}, relabel_opts={...}) -> (upstream, relabel)
    with both listeners behind the PROXY protocol unless told otherwise."""

    def make(smtps=None, submission=None, relabel_opts=None):
        up = upstream_factory("implicit")
        lst = {"smtps": dict(TRUSTED, **(smtps or {})),
               "submission": dict(TRUSTED, **(submission or {}))}
        opts = {"max_connection_rate": "0"}
        opts.update(relabel_opts or {})
        rl = relabel_factory(up.port, "implicit", relabel_opts=opts, listener_opts=lst)
        return up, rl

    return make


def kv(line):
    """key=value pairs of a log line (values may be "quoted")."""
    return {m.group(1): m.group(3) if m.group(3) is not None else m.group(2)
            for m in re.finditer(r'(\w+)=("((?:[^"\\]|\\.)*)"|\S*)', line)}


def end_line(rl, client):
    """The session end line of the session whose client is `client` (ip:port)."""
    m = rl.wait_log(rf"session end client={re.escape(client)} .*")
    return kv(m.group(0))


def send_mail(smtp, subject):
    smtp.ehlo("client.e2e.test")
    smtp.login(h.USER, h.PASSWORD)
    refused = smtp.sendmail("sender@example.net", ["rcpt@example.org"],
                            BODY.replace(b"via the balancer", subject.encode()))
    assert refused == {}
    smtp.quit()


# --------------------------------------------------------------------------
# a mail through the balancer

def test_v2_implicit_mail_end_to_end(env, client_ctx):
    up, rl = env()
    hdr = pp.v2("203.0.113.7", 50122, tlvs=[(pp.PP2_TYPE_AUTHORITY, b"smtp.example.com")])
    s = pp.ProxySMTP_SSL(hdr, host=h.BRAND_HOST, port=rl.ports["smtps"], context=client_ctx,
                         timeout=h.TIMEOUT)
    send_mail(s, "v2 implicit")
    (m,) = up.recorder.wait_messages(1)
    assert b"Subject: v2 implicit" in m.data and m.rcpt_tos == ["rcpt@example.org"]
    f = end_line(rl, "203.0.113.7:50122")
    assert f["proxy"] == "v2", f
    assert re.fullmatch(r"127\.0\.0\.2:\d+", f["via"]), f
    assert f["proxy_authority"] == "smtp.example.com", f
    assert f["listener"] == "smtps" and f["messages"] == "1" and f["tls"].startswith("TLS"), f


def test_v1_starttls_mail_end_to_end(env, client_ctx):
    up, rl = env()
    s = pp.ProxySMTP(pp.v1("198.51.100.20", 40001), host=h.BRAND_HOST,
                     port=rl.ports["submission"], timeout=h.TIMEOUT)
    s.ehlo("client.e2e.test")
    s.starttls(context=client_ctx)
    send_mail(s, "v1 starttls")
    (m,) = up.recorder.wait_messages(1)
    assert b"Subject: v1 starttls" in m.data
    f = end_line(rl, "198.51.100.20:40001")
    assert f["proxy"] == "v1" and f["listener"] == "submission" and f["messages"] == "1", f
    assert "proxy_authority" not in f, f


def test_v2_ipv6_client(env, client_ctx):
    up, rl = env()
    c = pp.client(rl, "smtps", pp.v2("2001:db8::7", 2525), client_ctx)
    assert c.greeting.code == 220
    assert c.cmd("QUIT").code == 221
    f = end_line(rl, "[2001:db8::7]:2525")
    assert f["proxy"] == "v2", f


def test_v1_ipv4_mapped_client_is_ipv4(env, client_ctx):
    up, rl = env()
    c = pp.client(rl, "smtps", pp.v1("::ffff:198.51.100.9", 3333), client_ctx)
    assert c.greeting.code == 220
    c.cmd("QUIT")
    end_line(rl, "198.51.100.9:3333")


# --------------------------------------------------------------------------
# the header arrives in pieces, or with the client's first bytes

@pytest.mark.parametrize("version", ["v1", "v2"])
def test_header_split_across_writes(env, client_ctx, version):
    up, rl = env()
    hdr = pp.v1("203.0.113.31", 3131) if version == "v1" else pp.v2("203.0.113.31", 3131)
    s = pp.connect(rl.ports["submission"])
    # Three pieces, the signature itself cut in two, with pauses so that
    # each arrives as a read of its own.
    for piece in (hdr[:3], hdr[3:9], hdr[9:]):
        s.sendall(piece)
        time.sleep(0.1)
    ls = h.LineSock(s)
    assert ls.readline().startswith(b"220 smtp.example.com "), "no greeting"
    ls.send(b"QUIT\r\n")
    assert ls.readline().startswith(b"221 ")
    ls.close()
    f = end_line(rl, "203.0.113.31:3131")
    assert f["proxy"] == version, f


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_header_and_client_hello_in_one_write(env, client_ctx, version):
    up, rl = env()
    hdr = pp.v1("203.0.113.32", 3232) if version == "v1" else pp.v2("203.0.113.32", 3232)
    t = pp.BioTLS(pp.connect(rl.ports["smtps"]), client_ctx, send_first=hdr)
    assert t.readline().startswith(b"220 smtp.example.com ")
    t.send(b"EHLO client.e2e.test\r\n")
    line = t.readline()
    while line[3:4] == b"-":
        line = t.readline()
    assert line.startswith(b"250 "), line
    t.send(b"QUIT\r\n")
    assert t.readline().startswith(b"221 ")
    t.sock.close()
    f = end_line(rl, "203.0.113.32:3232")
    assert f["proxy"] == version and f["tls"].startswith("TLS"), f


def test_commands_right_after_the_header_starttls(env):
    # A client behind the balancer that talks before the greeting: its
    # commands are read like any pipelined ones, after the greeting.
    up, rl = env()
    s = pp.connect(rl.ports["submission"])
    s.sendall(pp.v1("203.0.113.33", 3333) + b"EHLO early.e2e.test\r\nNOOP\r\n")
    ls = h.LineSock(s)
    assert ls.readline().startswith(b"220 smtp.example.com ")
    lines = [ls.readline()]
    while lines[-1][3:4] == b"-":
        lines.append(ls.readline())
    assert lines[0].startswith(b"250-smtp.example.com") and lines[-1] == b"250 STARTTLS\r\n"
    assert ls.readline().startswith(b"250 2.0.0")
    ls.close()


# --------------------------------------------------------------------------
# trust, malformed headers, timeouts

@pytest.mark.parametrize("listener", ["smtps", "submission"])
def test_untrusted_source_is_closed(env, client_ctx, listener):
    up, rl = env()
    s = pp.connect(rl.ports[listener], source=pp.STRANGER)
    s.sendall(pp.v1("203.0.113.40", 4040))
    assert pp.closed_without_reply(s)
    s.close()
    m = rl.wait_log(rf"refused client=127\.0\.0\.3:\d+ listener={listener} "
                    r'reason="not a trusted PROXY protocol source \(proxy_trusted\)"')
    assert m
    # The balancer is still served, and no upstream connection was made.
    c = pp.client(rl, listener, pp.v1("203.0.113.41", 4141),
                  client_ctx)
    assert c.greeting.code == 220
    c.close()
    assert up.recorder.conns == []


def test_direct_client_without_header_from_untrusted(env):
    # An ordinary client that reaches a PROXY listener directly hears nothing.
    up, rl = env()
    s = pp.connect(rl.ports["submission"], source="127.0.0.1")
    assert pp.closed_without_reply(s)
    s.close()
    rl.wait_log(r"refused client=127\.0\.0\.1:\d+ listener=submission .*proxy_trusted")


@pytest.mark.parametrize("data,reason", [
    (b"PROXY TCP4 203.0.113.300 192.0.2.1 1 2\r\n", "malformed PROXY header"),
    (b"PROXY TCP4 203.0.113.1 192.0.2.1 1\r\n", "malformed PROXY header"),
    (b"EHLO client.e2e.test\r\n", "malformed PROXY header"),
    (b"\r\n\r\n\x00\r\nQUIT\n\x31\x11\x00\x0c" + bytes(12), "malformed PROXY header"),
    (pp.V2_SIG + b"\x21\x11\xff\xff", "malformed PROXY header"),
    (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", "malformed PROXY header"),
], ids=["v1-bad-address", "v1-missing-port", "smtp", "v2-version-3", "v2-too-long",
        "tls-hello"])
@pytest.mark.parametrize("listener", ["smtps", "submission"])
def test_malformed_header_is_closed(env, data, reason, listener):
    up, rl = env()
    s = pp.connect(rl.ports[listener])
    s.sendall(data)
    assert pp.closed_without_reply(s)
    s.close()
    rl.wait_log(rf'refused via=127\.0\.0\.2:\d+ listener={listener} reason="{reason}"')
    rl.wait_log(rf'session end client=- via=127\.0\.0\.2:\d+ listener={listener} .*'
                rf'reason="{reason}"')
    assert up.recorder.conns == []


def test_version_not_allowed(env, client_ctx):
    up, rl = env(smtps={"proxy_protocol": "v2"}, submission={"proxy_protocol": "v1"})
    s = pp.connect(rl.ports["smtps"])
    s.sendall(pp.v1("203.0.113.50", 5050))
    assert pp.closed_without_reply(s)
    rl.wait_log(r'listener=smtps reason="PROXY v1 header not allowed \(proxy_protocol = v2\)"')
    s = pp.connect(rl.ports["submission"])
    s.sendall(pp.v2("203.0.113.51", 5151))
    assert pp.closed_without_reply(s)
    rl.wait_log(r'listener=submission reason="PROXY v2 header not allowed '
                r'\(proxy_protocol = v1\)"')
    # The start of a header of the wrong version is refused at once.
    s = pp.connect(rl.ports["smtps"])
    s.sendall(b"PROXY TCP4 203.0.113")
    assert pp.closed_without_reply(s, timeout=3)
    # (each refusal shows in its "refused" line and its "session end" line)
    h.wait_for(lambda: rl.log.count('reason="PROXY v1 header not allowed (proxy_protocol = v2)"')
               == 2 * 2, what="the second refusal logged")
    # The allowed versions still work.
    c = pp.client(rl, "smtps", pp.v2("203.0.113.52", 5252), client_ctx)
    assert c.greeting.code == 220
    c = pp.client(rl, "submission", pp.v1("203.0.113.53", 5353))
    assert c.greeting.code == 220


@pytest.mark.parametrize("listener", ["smtps", "submission"])
def test_missing_header_times_out(env, listener):
    up, rl = env(relabel_opts={"handshake_timeout": "1s"})
    s = pp.connect(rl.ports[listener])
    s.sendall(b"PROXY TCP4 203.0.113.60")  # a valid start, never finished
    t0 = time.monotonic()
    assert pp.closed_without_reply(s, timeout=8)
    took = time.monotonic() - t0
    assert 0.8 <= took < 5, took
    rl.wait_log(rf'session end client=- via=127\.0\.0\.2:\d+ listener={listener} .*'
                r'reason="no PROXY header within handshake_timeout"')


def test_closed_before_the_header_ends(env):
    up, rl = env()
    s = pp.connect(rl.ports["submission"])
    s.sendall(pp.v2("203.0.113.61", 6161)[:20])
    s.shutdown(socket.SHUT_WR)
    assert pp.closed_without_reply(s)
    rl.wait_log(r'session end client=- via=127\.0\.0\.2:\d+ listener=submission .*'
                r'reason="closed before the end of the PROXY header"')


# --------------------------------------------------------------------------
# LOCAL / UNKNOWN, TLVs

@pytest.mark.parametrize("hdr,kind", [(pp.v2_local(), "v2-local"), (pp.v1_unknown(), "v1-unknown")])
def test_local_header_keeps_the_balancer_address(env, client_ctx, hdr, kind):
    up, rl = env()
    c = pp.client(rl, "smtps", hdr, client_ctx)
    port = c.ls.sock.getsockname()[1]
    assert c.greeting.code == 220
    assert c.cmd("QUIT").code == 221
    f = end_line(rl, f"127.0.0.2:{port}")
    assert f["proxy"] == kind and f["via"] == f"127.0.0.2:{port}", f


def test_authority_tlv_is_logged_escaped(env, client_ctx):
    up, rl = env()
    hdr = pp.v2("203.0.113.70", 7070, tlvs=[(pp.PP2_TYPE_NOOP, b"\x00\x00"),
                                            (pp.PP2_TYPE_AUTHORITY, b'mail.ex"ample\x01 x\\')])
    c = pp.client(rl, "submission", hdr)
    assert c.greeting.code == 220
    c.cmd("QUIT")
    line = rl.wait_log(r"session end client=203\.0\.113\.70:7070 .*").group(0)
    assert r'proxy_authority="mail.ex\x22ample\x01 x\x5c"' in line, line


# --------------------------------------------------------------------------
# the header's address is the client's everywhere

def test_per_ip_limit_counts_the_header_address(env, client_ctx):
    up, rl = env(relabel_opts={"max_connections_per_ip": "2"})
    held = [pp.client(rl, "submission", pp.v1("198.51.100.10", 1000 + i)) for i in range(2)]
    assert all(c.greeting.code == 220 for c in held)
    over = pp.client(rl, "submission", pp.v1("198.51.100.10", 1002))
    assert over.greeting.raw.startswith(b"421 4.7.0 smtp.example.com Too many connections"), \
        over.greeting
    assert over.closed()
    rl.wait_log(r'refused client=198\.51\.100\.10:1002 listener=submission '
                r'reason="too many connections from 198\.51\.100\.10:1002 '
                r'\(max_connections_per_ip=2\)"')
    # Another client behind the same balancer is counted on its own: the
    # balancer's address is never the one counted.
    other = pp.client(rl, "submission", pp.v1("198.51.100.11", 1100))
    assert other.greeting.code == 220
    for c in held + [other]:
        c.close()


def test_plaintext_auth_warning_names_the_header_address(env):
    # require_tls = no: the migration warning is about the real client.
    up, rl = env(submission={"require_tls": "no"})
    c = pp.client(rl, "submission", pp.v1("203.0.113.80", 8080))
    assert c.ehlo().code == 250
    assert c.auth_plain().code == 235
    c.cmd("QUIT")
    rl.wait_log(r'plaintext AUTH user="user" client=203\.0\.113\.80:8080 listener=submission')


# --------------------------------------------------------------------------
# configuration

def write(tmp_path, cfg):
    p = tmp_path / "relabel.ini"
    p.write_text(cfg.text())
    return str(p)


def check(relabel_binary, path):
    res = h.run_check(relabel_binary, path)
    return res.returncode, (res.stdout + res.stderr).decode("utf-8", "replace")


def base(certs, listener_opts):
    return h.relabel_config(certs, 2465, "implicit", {"smtps": 2001, "submission": 2002},
                            listener_opts=listener_opts)


@pytest.mark.parametrize("opts,key,message", [
    ({"proxy_protocol": "v2"}, "proxy_protocol", "proxy_protocol needs proxy_trusted"),
    ({"proxy_trusted": "10.0.0.0/8"}, "proxy_trusted", "proxy_trusted needs proxy_protocol"),
    ({"proxy_protocol": "v3", "proxy_trusted": "10.0.0.0/8"}, "proxy_protocol",
     'invalid proxy_protocol "v3" (expected no, v1, v2 or any)'),
    ({"proxy_protocol": "v1", "proxy_trusted": "10.0.0.1/8"}, "proxy_trusted",
     'invalid proxy_trusted: "10.0.0.1/8": bits are set after the prefix'),
    ({"proxy_protocol": "v1", "proxy_trusted": "10.0.0.0/8, balancer.example"}, "proxy_trusted",
     'invalid proxy_trusted: "balancer.example": not an IPv4 or IPv6 address'),
])
def test_config_errors(certs, relabel_binary, tmp_path, opts, key, message):
    cfg = base(certs, {"submission": opts})
    path = write(tmp_path, cfg)
    rc, out = check(relabel_binary, path)
    assert rc != 0, out
    line = cfg.line_of('[listener "submission"]', key)
    assert f"{path}:{line}: {message}" in out, out


def test_check_shows_proxy_settings(certs, relabel_binary, tmp_path):
    cfg = base(certs, {"smtps": {"proxy_protocol": "v2",
                                 "proxy_trusted": "10.0.0.0/8 127.0.0.2, ::1"},
                       "submission": {"proxy_protocol": "any", "proxy_trusted": "0.0.0.0/0"}})
    rc, out = check(relabel_binary, write(tmp_path, cfg))
    assert rc == 0, out
    assert "    proxy_protocol v2 from 10.0.0.0/8, 127.0.0.2/32, ::1/128\n" in out, out
    assert "    proxy_protocol v1 or v2 from 0.0.0.0/0\n" in out, out
