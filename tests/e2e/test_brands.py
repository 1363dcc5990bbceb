"""
Several brands on one relabel, chosen by the client's SNI.

The world (fixture `world`): three brands served on every listener,

  example  smtp.example.com; ECDSA brand.crt and RSA brand-rsa.crt; upstream A
  b        mail.brand-b.test and *.brand-b.test; brand-b.crt; upstream B (its own)
  c        smtp.brand-c.test; brand-c.crt; upstream A

with the listeners smtps (implicit TLS), submission (STARTTLS), strict and
strict-sub (the same two with sni_unknown = refuse) and legacy (STARTTLS,
require_tls = no), all with the default brand "example".  A (implicit TLS)
and B (STARTTLS) are separate fake upstreams that record what they get.

For each session the tests check the certificate (by fingerprint, and by a
client verifying it against the name it asked for), the name in the
greeting, EHLO and QUIT replies, and which upstream received the message.
Clients: Python ssl, openssl s_client -servername, curl --resolve.
"""

import hashlib
import os
import re
import secrets
import shutil
import signal
import ssl
import subprocess

import pytest

import harness as h

HOST_B = "mail.brand-b.test"
HOST_C = "smtp.brand-c.test"
UNKNOWN = "nobody.unknown.test"
BODY = b"From: a@example.net\r\nTo: b@example.org\r\nSubject: brands\r\n\r\nhello\r\n"


def text_fp(text):
    """sha256 of the DER of the first PEM certificate in text."""
    m = re.search(r"-----BEGIN CERTIFICATE-----.*?-----END CERTIFICATE-----", text, re.S)
    assert m, f"no certificate in {text[:200]!r}"
    return hashlib.sha256(ssl.PEM_cert_to_DER_cert(m.group(0))).hexdigest()


def pem_fp(path):
    with open(path) as f:
        return text_fp(f.read())


def crt(certs, name):
    return os.path.join(certs, name + ".crt")


def key(certs, name):
    return os.path.join(certs, name + ".key")


def no_verify_ctx():
    """Sees whatever certificate it is given (to look at the wrong ones too)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


class World:
    def __init__(self, certs, rl, up_a, up_b):
        self.certs = certs
        self.rl = rl
        self.a = up_a
        self.b = up_b
        self.fp = {n: pem_fp(crt(certs, n)) for n in ("brand", "brand-rsa", "brand-b", "brand-c")}

    def port(self, listener):
        return self.rl.ports[listener]


BRANDS = {
    # SNI sent -> (brand, hostname, certificate, upstream attribute)
    "smtp.example.com": ("example", h.BRAND_HOST, "brand", "a"),
    HOST_B: ("b", HOST_B, "brand-b", "b"),
    "relay.brand-b.test": ("b", HOST_B, "brand-b", "b"),  # the wildcard alias
    "SMTP.Brand-C.TEST": ("c", HOST_C, "brand-c", "a"),  # case does not matter
}


def brand_sections(certs, extra_b=None):
    b = {"hostname": HOST_B, "aliases": "*.brand-b.test", "cert": crt(certs, "brand-b"),
         "key": key(certs, "brand-b"), "upstream": "up-b"}
    b.update(extra_b or {})
    return {"b": b,
            "c": {"hostname": HOST_C, "cert": crt(certs, "brand-c"), "key": key(certs, "brand-c"),
                  "upstream": "test"}}


@pytest.fixture
def world(certs, upstream_factory, relabel_factory):
    up_a = upstream_factory("implicit")
    up_b = upstream_factory("starttls")
    rl = relabel_factory(
        up_a.port, "implicit",
        brand_opts={"cert_rsa": crt(certs, "brand-rsa"), "key_rsa": key(certs, "brand-rsa")},
        listener_opts={"strict": {"tls": "implicit", "sni_unknown": "refuse"},
                       "strict-sub": {"tls": "starttls", "sni_unknown": "refuse"},
                       "legacy": {"tls": "starttls", "require_tls": "no"}},
        brands=brand_sections(certs),
        upstreams={"up-b": h.upstream_section(certs, up_b.port, "starttls")})
    return World(certs, rl, up_a, up_b)


def open_tls(w, listener, sni, ctx):
    """A client whose TLS is up, on an implicit or STARTTLS listener."""
    if listener in ("smtps", "strict"):
        return h.Client(w.port(listener), ctx, tls="implicit", server_hostname=sni)
    c = h.Client(w.port(listener), ctx, server_hostname=sni)
    # Before TLS the listener's default brand speaks, whatever comes next.
    assert c.greeting.first.startswith(b"220 smtp.example.com "), c.greeting
    r = c.ehlo()
    assert r.first == b"250-smtp.example.com", r
    c.starttls()
    return c


def peer_fp(c):
    return hashlib.sha256(c.ls.sock.getpeercert(binary_form=True)).hexdigest()


def session_lines(rl, n):
    rx = re.compile(r"session end .*")
    h.wait_for(lambda: len(rx.findall(rl.log)) >= n, what=f"{n} session end lines")
    return rx.findall(rl.log)


def deliver(w, c, hostname, seed):
    """EHLO, AUTH, a message and QUIT, each answered in the brand's name."""
    r = c.ehlo()
    assert r.code == 250 and r.first == b"250-" + hostname.encode(), r
    assert c.auth_plain().code == 235
    body = BODY.replace(b"hello", seed.encode())
    r = c.send_message(body)
    assert r.code == 250, r
    r = c.cmd("QUIT")
    assert r.raw == f"221 2.0.0 {hostname} closing connection\r\n".encode(), r
    assert not c.provider_leaks(), c.provider_leaks()
    return body


# --------------------------------------------------------------------------
# SNI chooses the certificate, the name and the upstream

@pytest.mark.parametrize("listener", ["smtps", "submission"])
def test_sni_chooses_brand(world, client_ctx, listener):
    w = world
    sent = {"a": [], "b": []}
    for i, (sni, (brand, hostname, cert, up)) in enumerate(BRANDS.items()):
        # client_ctx verifies the certificate against `sni`: only the brand's
        # own certificate can pass.
        c = open_tls(w, listener, sni, client_ctx)
        try:
            assert peer_fp(c) == w.fp[cert], sni
            if listener == "smtps":
                assert c.greeting.first == f"220 {hostname} ESMTP ready".encode(), c.greeting
            sent[up].append(deliver(w, c, hostname, f"{sni}-{i}"))
        finally:
            c.close()
        lines = session_lines(w.rl, i + 1)
        assert f" brand={brand} sni={sni} " in lines[-1], lines[-1]
    for up in ("a", "b"):
        got = getattr(w, up).recorder.wait_messages(len(sent[up]))
        assert sorted(m.data for m in got) == sorted(sent[up]), up
    assert len(w.a.messages) == 2 and len(w.b.messages) == 2
    # The upstream leg itself speaks for the brand: relabel's own EHLO to
    # the STARTTLS upstream B names brand b.
    assert w.b.recorder.commands[0].line == f"EHLO {HOST_B}\r\n".encode()


@pytest.mark.parametrize("sni", [None, UNKNOWN], ids=["no-sni", "unknown-sni"])
@pytest.mark.parametrize("listener", ["smtps", "submission"])
def test_default_brand(world, listener, sni):
    """No SNI, or a name no brand answers to (sni_unknown = default): the
    listener's default brand, its certificate and its upstream."""
    w = world
    c = open_tls(w, listener, sni, no_verify_ctx())
    try:
        assert peer_fp(c) == w.fp["brand"]
        deliver(w, c, h.BRAND_HOST, f"default-{sni}")
    finally:
        c.close()
    w.a.recorder.wait_messages(1)
    assert not w.b.messages
    assert f" brand=example sni={sni or '-'} " in session_lines(w.rl, 1)[-1]
    if sni is not None:
        # A client that checks the name refuses the default's certificate.
        with pytest.raises(ssl.SSLCertVerificationError):
            open_tls(w, listener, sni, h.client_context(w.certs))


@pytest.mark.parametrize("listener", ["strict", "strict-sub"])
def test_unknown_sni_refused(world, client_ctx, listener):
    w = world
    with pytest.raises(ssl.SSLError, match="UNRECOGNIZED_NAME"):
        open_tls(w, listener, UNKNOWN, no_verify_ctx())
    w.rl.wait_log(r"session end .*reason=\"client TLS handshake failed: TLS handshake refused: "
                  r"no brand answers to the name asked for \(sni_unknown = refuse\)\"")
    # Known names and clients without SNI are served as everywhere.
    c = open_tls(w, listener, "relay.brand-b.test", client_ctx)
    try:
        assert peer_fp(c) == w.fp["brand-b"]
        deliver(w, c, HOST_B, "strict-b")
    finally:
        c.close()
    c = open_tls(w, listener, None, no_verify_ctx())
    try:
        assert peer_fp(c) == w.fp["brand"]
        deliver(w, c, h.BRAND_HOST, "strict-none")
    finally:
        c.close()
    w.b.recorder.wait_messages(1)
    w.a.recorder.wait_messages(1)


# --------------------------------------------------------------------------
# one brand, two certificates

def rsa_only_ctx():
    ctx = no_verify_ctx()
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_ciphers("ECDHE+aRSA+AESGCM")
    return ctx


@pytest.mark.parametrize("listener", ["smtps", "submission"])
def test_dual_certificate(world, listener):
    w = world
    for sni in ("smtp.example.com", None):
        c = open_tls(w, listener, sni, rsa_only_ctx())
        try:
            assert peer_fp(c) == w.fp["brand-rsa"], sni
            assert "ECDHE-RSA" in c.ls.sock.cipher()[0]
            deliver(w, c, h.BRAND_HOST, f"rsa-{sni}")
        finally:
            c.close()
        c = open_tls(w, listener, sni, no_verify_ctx())
        try:
            assert peer_fp(c) == w.fp["brand"], sni
            assert "ECDHE-ECDSA" in c.ls.sock.cipher()[0]
        finally:
            c.close()
    # Brand b has no RSA certificate: an RSA-only client gets nothing.
    with pytest.raises(ssl.SSLError):
        open_tls(w, listener, HOST_B, rsa_only_ctx())
    w.a.recorder.wait_messages(2)


# --------------------------------------------------------------------------
# other clients

@pytest.mark.parametrize("listener", ["smtps", "submission"])
def test_openssl_s_client(world, listener):
    w = world
    args = ["openssl", "s_client", "-connect", f"{h.LOCALHOST}:{w.port(listener)}",
            "-servername", HOST_B, "-CAfile", os.path.join(w.certs, "ca.crt"),
            "-verify_hostname", HOST_B, "-verify_return_error", "-crlf", "-ign_eof"]
    if listener == "submission":
        args += ["-starttls", "smtp"]
    res = h.run_tool(args, timeout=30, input=b"EHLO s-client.test\nQUIT\n")
    out = res.stdout.decode("utf-8", "replace")
    assert res.returncode == 0, out + res.stderr.decode("utf-8", "replace")
    assert "Verify return code: 0 (ok)" in out, out
    assert text_fp(out) == w.fp["brand-b"]
    assert f"250-{HOST_B}\r" in out or f"250-{HOST_B}\n" in out, out
    assert f"221 2.0.0 {HOST_B} closing connection" in out, out
    if listener == "smtps":
        assert f"220 {HOST_B} ESMTP ready" in out, out
    # The session went to brand b's upstream only.
    h.wait_for(lambda: any(c.line == b"EHLO s-client.test\r\n" for c in w.b.recorder.commands),
               what="B to see the client's EHLO")
    assert not any(c.line.startswith(b"EHLO s-client") for c in w.a.recorder.commands)


@pytest.mark.parametrize("scheme", ["smtps", "smtp"])
def test_curl(world, tmp_path, scheme):
    w = world
    port = w.port("smtps" if scheme == "smtps" else "submission")
    for host, up in ((HOST_B, w.b), (HOST_C, w.a), (h.BRAND_HOST, w.a)):
        f = tmp_path / f"{host}.eml"
        body = BODY.replace(b"hello", host.encode())
        f.write_bytes(body)
        res = h.curl_send(port, scheme, host, os.path.join(w.certs, "ca.crt"), str(f),
                          "a@example.net", [f"rcpt@{host}"])
        assert res.returncode == 0, res.stderr
        h.wait_for(lambda: any(m.data == body for m in up.messages), what=f"{host} at its upstream")
    assert len(w.b.messages) == 1 and len(w.a.messages) == 2


def test_session_ticket_stays_with_its_brand(world, client_ctx):
    """A ticket from one brand does not resume a session under another: the
    client gets (and verifies) the other brand's certificate."""
    w = world
    c = open_tls(w, "smtps", h.BRAND_HOST, client_ctx)
    c.cmd("QUIT")
    sess = c.ls.sock.session
    c.close()
    c = h.Client(w.port("smtps"), client_ctx, tls="implicit", server_hostname=h.BRAND_HOST,
                 session=sess)
    assert c.ls.sock.session_reused  # the control: the same brand resumes
    c.close()
    c = h.Client(w.port("smtps"), client_ctx, tls="implicit", server_hostname=HOST_B,
                 session=sess)
    try:
        assert not c.ls.sock.session_reused
        assert peer_fp(c) == w.fp["brand-b"]
        assert c.greeting.first == f"220 {HOST_B} ESMTP ready".encode()
    finally:
        c.close()


# --------------------------------------------------------------------------
# require_tls = no: plaintext for the default brand, STARTTLS into another

def test_plaintext_then_starttls_moves_upstream(world, client_ctx):
    w = world
    # Plaintext only: the default brand and its upstream.
    c = h.Client(w.port("legacy"), client_ctx, server_hostname=HOST_B)
    try:
        assert c.greeting.first == b"220 smtp.example.com ESMTP ready"
        plain = deliver(w, c, h.BRAND_HOST, "plaintext")
    finally:
        c.close()
    assert [m.data for m in w.a.recorder.wait_messages(1)] == [plain]

    # Plaintext EHLO (relayed to A), then STARTTLS naming brand b: the rest
    # of the session is brand b's, on upstream B.
    c = h.Client(w.port("legacy"), client_ctx, server_hostname=HOST_B)
    try:
        r = c.ehlo("moving.client.test")
        assert r.first == b"250-smtp.example.com", r
        h.wait_for(lambda: any(x.line == b"EHLO moving.client.test\r\n"
                               for x in w.a.recorder.commands), what="A to see the plaintext EHLO")
        c.starttls()
        assert peer_fp(c) == w.fp["brand-b"]
        moved = deliver(w, c, HOST_B, "moved")
    finally:
        c.close()
    assert [m.data for m in w.b.recorder.wait_messages(1)] == [moved]
    assert len(w.a.messages) == 1
    line = session_lines(w.rl, 2)[-1]
    assert f" brand=b sni={HOST_B} " in line, line
    # The first upstream leg was let go (with a QUIT, which the fake may not
    # get to read before the close) after nothing but the EHLO.
    abandoned = w.a.recorder.conns[-1]
    h.wait_for(lambda: abandoned.closed, what="the abandoned upstream leg to close")
    assert abandoned.commands[0].line == b"EHLO moving.client.test\r\n"
    assert {x.verb for x in abandoned.commands} <= {"EHLO", "QUIT"}, abandoned.commands


# --------------------------------------------------------------------------
# --check

def write_cfg(tmp_path, cfg, name="relabel.ini"):
    p = tmp_path / name
    p.write_text(cfg.text())
    return str(p)


def check(relabel_binary, path):
    res = h.run_check(relabel_binary, path)
    return res.returncode, (res.stdout + res.stderr).decode("utf-8", "replace")


def test_check_lists_names_and_warns(certs, relabel_binary, tmp_path):
    brands = brand_sections(certs, {"aliases": "*.brand-b.test, extra.example.net"})
    brands["c"]["upstream"] = "postmark"
    brands["d"] = {"hostname": "smtp.brand-d.test", "cert": crt(certs, "brand-c"),
                   "key": key(certs, "brand-c"), "upstream": "ses-eu-west-1"}
    cfg = h.relabel_config(certs, 2465, "implicit", {"smtps": 2001, "submission": 2002},
                           brand_opts={"cert_rsa": crt(certs, "brand-rsa"),
                                       "key_rsa": key(certs, "brand-rsa")},
                           listener_opts={"submission": {"sni_unknown": "refuse"}},
                           brands=brands,
                           upstreams={"up-b": h.upstream_section(certs, 2466, "starttls")})
    path = write_cfg(tmp_path, cfg)
    rc, out = check(relabel_binary, path)
    assert rc == 0, out
    assert re.search(r"listener smtps: .*brand example \(no SNI or unknown SNI\)", out), out
    assert re.search(r"listener submission: .*brand example \(no SNI; unknown SNI refused\)",
                     out), out
    for name, brand in (("*.brand-b.test", "b"), ("extra.example.net", "b"),
                        ("mail.brand-b.test", "b"), ("smtp.brand-c.test", "c"),
                        ("smtp.brand-d.test", "d"), ("smtp.example.com", "example")):
        assert f"\n    {name} -> brand {brand}\n" in out, (name, out)
    # Both certificates of the dual brand, with their key types.
    assert re.search(rf"certificate {re.escape(crt(certs, 'brand'))}: .* key=ECDSA", out), out
    assert re.search(rf"certificate {re.escape(crt(certs, 'brand-rsa'))}: .* key=RSA", out), out
    # Names no certificate covers, at the line that names them.
    b = '[brand "b"]'
    assert (f"warning: {path}:{cfg.line_of(b, 'aliases')}: certificate {crt(certs, 'brand-b')} "
            f"does not cover alias extra.example.net") in out, out
    assert f"does not cover alias *.brand-b.test" not in out, out
    d = '[brand "d"]'
    assert (f"warning: {path}:{cfg.line_of(d, 'cert')}: certificate {crt(certs, 'brand-c')} "
            f"does not cover hostname smtp.brand-d.test") in out, out
    assert out.count("does not cover") == 2, out
    # Presets in use, with their facts.
    assert ("upstream postmark: smtp.postmarkapp.com:587 tls starttls, verify "
            "smtp.postmarkapp.com against system CAs, max message 10485760 bytes") in out, out
    assert ("upstream ses-eu-west-1: email-smtp.eu-west-1.amazonaws.com:465 tls implicit, verify "
            "email-smtp.eu-west-1.amazonaws.com against system CAs, max message 41943040 "
            "bytes") in out, out


def assert_error_at(relabel_binary, path, line, text):
    rc, out = check(relabel_binary, path)
    assert rc != 0, out
    assert f"{path}:{line}: " in out and text in out, (line, text, out)


def test_check_brand_errors(certs, relabel_binary, tmp_path):
    ports = {"smtps": 2001, "submission": 2002}
    b = '[brand "b"]'
    # A name claimed by two brands.
    cfg = h.relabel_config(certs, 2465, "implicit", ports,
                           brands=brand_sections(certs, {"aliases": "*.brand-b.test, "
                                                                    "SMTP.example.com"}),
                           upstreams={"up-b": h.upstream_section(certs, 2466)})
    assert_error_at(relabel_binary, write_cfg(tmp_path, cfg), cfg.line_of(b, "aliases"),
                    'name smtp.example.com is already claimed by brand "example"')
    # cert_rsa holding an EC key; two RSA certificates.
    for cert, cert_rsa, text in (("brand", "brand-c", "already has an ECDSA certificate"),
                                 ("brand-rsa", "brand-c", "holds an EC key"),
                                 ("brand-rsa", "brand-rsa", "already has an RSA certificate")):
        cfg = h.relabel_config(certs, 2465, "implicit", ports,
                               brand_opts={"cert": crt(certs, cert), "key": key(certs, cert),
                                           "cert_rsa": crt(certs, cert_rsa),
                                           "key_rsa": key(certs, cert_rsa)})
        assert_error_at(relabel_binary, write_cfg(tmp_path, cfg),
                        cfg.line_of('[brand "example"]', "cert_rsa"), text)
    # An unknown preset family member.
    cfg = h.relabel_config(certs, 2465, "implicit", ports, brand_opts={"upstream": "ses-mars-1"})
    assert_error_at(relabel_binary, write_cfg(tmp_path, cfg),
                    cfg.line_of('[brand "example"]', "upstream"), "is not an AWS region name")


# --------------------------------------------------------------------------
# reload

def gen_cert(certs, out_dir, name, host, rsa=False):
    """A new key and certificate for `host` from the test CA, in out_dir."""
    key_path = os.path.join(out_dir, name + ".key")
    csr = os.path.join(out_dir, name + ".csr")
    crt_path = os.path.join(out_dir, name + ".crt")
    ext = os.path.join(out_dir, name + ".ext")
    with open(ext, "w") as f:
        f.write("basicConstraints = critical, CA:FALSE\n"
                f"keyUsage = critical, digitalSignature{', keyEncipherment' if rsa else ''}\n"
                "extendedKeyUsage = serverAuth\n"
                f"subjectAltName = DNS:{host}\n")
    newkey = ["-newkey", "rsa:2048"] if rsa else ["-newkey", "ec", "-pkeyopt",
                                                   "ec_paramgen_curve:prime256v1"]
    subprocess.run(["openssl", "req", "-new", *newkey, "-nodes", "-keyout", key_path,
                    "-subj", f"/CN={host}", "-out", csr],
                   check=True, capture_output=True, timeout=60)
    subprocess.run(["openssl", "x509", "-req", "-in", csr, "-CA", os.path.join(certs, "ca.crt"),
                    "-CAkey", os.path.join(certs, "ca.key"), "-set_serial",
                    "0x" + secrets.token_hex(8), "-days", "30", "-sha256", "-extfile", ext,
                    "-out", crt_path],
                   check=True, capture_output=True, timeout=60)
    os.unlink(csr)
    os.unlink(ext)
    return crt_path, key_path


def replace_files(src_crt, src_key, dst_crt, dst_key):
    """Renames new files over the old ones, as certbot does."""
    shutil.copy(src_key, dst_key + ".new")
    shutil.copy(src_crt, dst_crt + ".new")
    os.rename(dst_key + ".new", dst_key)
    os.rename(dst_crt + ".new", dst_crt)


def test_reload_switches_brand_certificates(certs, upstream_factory, relabel_factory, tmp_path,
                                            client_ctx):
    """Brand b's certificate is replaced on disk (a watched directory of a
    brand that is not the default), then the default brand's RSA certificate
    (cert_rsa, in a directory of its own); each reload serves the new one to
    new clients, and leaves every other certificate as it was."""
    dir_b, dir_rsa, new = tmp_path / "b", tmp_path / "rsa", tmp_path / "new"
    for d in (dir_b, dir_rsa, new):
        d.mkdir()
    b_crt, b_key = str(dir_b / "b.crt"), str(dir_b / "b.key")
    r_crt, r_key = str(dir_rsa / "r.crt"), str(dir_rsa / "r.key")
    shutil.copy(crt(certs, "brand-b"), b_crt)
    shutil.copy(key(certs, "brand-b"), b_key)
    shutil.copy(crt(certs, "brand-rsa"), r_crt)
    shutil.copy(key(certs, "brand-rsa"), r_key)
    up_a = upstream_factory("implicit")
    up_b = upstream_factory("implicit")
    rl = relabel_factory(
        up_a.port, "implicit", relabel_opts={"watch_debounce": "200ms"},
        brand_opts={"cert_rsa": r_crt, "key_rsa": r_key},
        brands=brand_sections(certs, {"cert": b_crt, "key": b_key}),
        upstreams={"up-b": h.upstream_section(certs, up_b.port)})
    w = World(certs, rl, up_a, up_b)

    def fps():
        out = {}
        for name, sni, ctx in (("b", HOST_B, client_ctx), ("ecdsa", h.BRAND_HOST, client_ctx),
                               ("rsa", h.BRAND_HOST, rsa_only_ctx())):
            c = h.Client(w.port("smtps"), ctx, tls="implicit", server_hostname=sni)
            out[name] = peer_fp(c)
            c.close()
        return out

    before = fps()
    assert before == {"b": w.fp["brand-b"], "ecdsa": w.fp["brand"], "rsa": w.fp["brand-rsa"]}

    replace_files(*gen_cert(certs, str(new), "b2", HOST_B), b_crt, b_key)
    rl.wait_log(r"reload ok reason=\"files changed\"")
    after_b = fps()
    assert after_b == {"b": pem_fp(b_crt), "ecdsa": before["ecdsa"], "rsa": before["rsa"]}
    assert after_b["b"] != before["b"]

    replace_files(*gen_cert(certs, str(new), "r2", h.BRAND_HOST, rsa=True), r_crt, r_key)
    h.wait_for(lambda: rl.log.count("reload ok") >= 2, what="a reload for cert_rsa")
    after_rsa = fps()
    assert after_rsa == {"b": after_b["b"], "ecdsa": before["ecdsa"], "rsa": pem_fp(r_crt)}
    assert after_rsa["rsa"] != before["rsa"]

    # SIGHUP with a broken brand b keeps everything as it was.
    with open(b_key, "w") as f:
        f.write("not a key\n")
    os.kill(rl.pid, signal.SIGHUP)
    rl.wait_log(r"reload failed .*the running configuration is kept")
    assert fps() == after_rsa
