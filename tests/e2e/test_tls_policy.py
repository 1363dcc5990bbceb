"""
The client-side TLS policy, seen by a real TLS client (openssl s_client):
TLS 1.2 only, ECDHE with AES-GCM or ChaCha20-Poly1305 only, the brand
certificate verifies for smtp.example.com on the implicit and the STARTTLS
port.
"""

import os
import re
import shutil

import pytest

import harness as h

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl CLI not installed")

GOOD_CIPHER_RE = re.compile(r"^ECDHE-(ECDSA|RSA)-(AES(128|256)-GCM-SHA(256|384)|CHACHA20-POLY1305)$")


def s_client(certs, port, extra=(), starttls=False, stdin=b"QUIT\n"):
    args = ["timeout", "10", "openssl", "s_client", "-connect", f"{h.LOCALHOST}:{port}",
            "-CAfile", os.path.join(certs, "ca.crt"), "-verify_hostname", h.BRAND_HOST,
            "-verify_return_error", "-servername", h.BRAND_HOST, "-brief", "-ign_eof", "-crlf"]
    if starttls:
        args += ["-starttls", "smtp"]
    args += list(extra)
    res = h.run_tool(args, timeout=15, input=stdin)
    return (res.returncode, res.stdout.decode("utf-8", "replace"),
            res.stderr.decode("utf-8", "replace"))


def brief(err):
    """-brief's summary lines ("Protocol version: TLSv1.2", ...) as a dict."""
    out = {}
    for line in err.splitlines():
        k, sep, v = line.partition(": ")
        if sep:
            out[k.strip()] = v.strip()
    return out


@pytest.fixture(params=["brand", "brand-rsa"])
def tls_relay(request, upstream_factory, relabel_factory, certs):
    """relabel with an ECDSA (the default) or an RSA brand certificate."""
    if request.param == "brand-rsa" and not os.path.exists(os.path.join(certs, "brand-rsa.crt")):
        pytest.skip("no RSA brand certificate in the test set")
    up = upstream_factory("implicit")
    rl = relabel_factory(up.port, "implicit",
                         brand_opts={"cert": os.path.join(certs, request.param + ".crt"),
                                     "key": os.path.join(certs, request.param + ".key")})
    rl.cert_kind = "RSA" if request.param == "brand-rsa" else "ECDSA"
    return rl


def test_implicit_handshake(tls_relay, certs):
    rc, out, err = s_client(certs, tls_relay.ports["smtps"])
    assert rc == 0, err
    info = brief(err)
    assert "CONNECTION ESTABLISHED" in err, err
    assert info.get("Protocol version") == "TLSv1.2", err
    assert GOOD_CIPHER_RE.match(info.get("Ciphersuite", "")), err
    assert info["Ciphersuite"].startswith(f"ECDHE-{tls_relay.cert_kind}-"), err
    assert info.get("Verification") == "OK" and info.get("Verified peername") == h.BRAND_HOST, err
    lines = out.splitlines()
    assert lines and lines[0].startswith("220 smtp.example.com "), out
    assert any(l.startswith("221 ") for l in lines), out
    assert not h.PROVIDER_RE.search(out.encode()), out


def test_starttls_handshake(tls_relay, certs):
    rc, out, err = s_client(certs, tls_relay.ports["submission"], starttls=True,
                            stdin=b"EHLO openssl.e2e.test\nQUIT\n")
    assert rc == 0, err
    info = brief(err)
    assert info.get("Protocol version") == "TLSv1.2", err
    assert GOOD_CIPHER_RE.match(info.get("Ciphersuite", "")), err
    assert info.get("Verification") == "OK", err
    lines = out.splitlines()
    # s_client consumed the greeting and the pre-TLS EHLO; this is the EHLO inside TLS
    assert lines and lines[0] == "250-smtp.example.com", out
    assert "250-STARTTLS" not in lines and "250 STARTTLS" not in lines, out
    assert any(l.startswith("221 ") for l in lines), out
    assert not h.PROVIDER_RE.search(out.encode()), out


@pytest.mark.parametrize("cipher", ["ECDHE-ECDSA-AES256-GCM-SHA384", "ECDHE-ECDSA-AES128-GCM-SHA256",
                                    "ECDHE-ECDSA-CHACHA20-POLY1305"])
def test_each_good_cipher_is_offered(upstream_factory, relabel_factory, certs, cipher):
    up = upstream_factory("implicit")
    rl = relabel_factory(up.port, "implicit")
    rc, out, err = s_client(certs, rl.ports["smtps"], extra=["-tls1_2", "-cipher", cipher])
    assert rc == 0, err
    assert brief(err).get("Ciphersuite") == cipher, err
    assert out.startswith("220 smtp.example.com "), out


def assert_refused(rl, rc, out, err):
    assert rc != 0, (out, err)
    assert "CONNECTION ESTABLISHED" not in err, err
    assert "220 " not in out, out  # no SMTP greeting over a refused handshake
    rl.wait_log(r"session end .*reason=\"client TLS handshake failed")


@pytest.mark.parametrize("port_kind", ["implicit", "starttls"])
@pytest.mark.parametrize("proto", ["-tls1", "-tls1_1", "-tls1_3"])
def test_old_and_new_protocol_versions_refused(upstream_factory, relabel_factory, certs, proto,
                                               port_kind):
    up = upstream_factory("implicit")
    rl = relabel_factory(up.port, "implicit")
    # OpenSSL 3 needs security level 0 to even offer TLS 1.0/1.1
    extra = [proto] + (["-cipher", "DEFAULT:@SECLEVEL=0"] if proto in ("-tls1", "-tls1_1") else [])
    port = rl.ports["smtps" if port_kind == "implicit" else "submission"]
    rc, out, err = s_client(certs, port, extra=extra, starttls=port_kind == "starttls")
    assert_refused(rl, rc, out, err)
    assert up.recorder.conns == []


@pytest.mark.parametrize("cipher,cert", [
    ("ECDHE-ECDSA-AES128-SHA", "brand"),        # CBC
    ("ECDHE-ECDSA-AES256-SHA384", "brand"),     # CBC
    ("ECDHE-RSA-AES128-SHA", "brand-rsa"),      # CBC
    ("AES128-GCM-SHA256", "brand-rsa"),         # static RSA key exchange
    ("AES256-GCM-SHA384", "brand-rsa"),         # static RSA key exchange
    ("DHE-RSA-AES128-GCM-SHA256", "brand-rsa"),  # finite-field DHE
])
def test_weak_ciphers_refused(upstream_factory, relabel_factory, certs, cipher, cert):
    if not os.path.exists(os.path.join(certs, cert + ".crt")):
        pytest.skip(f"no {cert} certificate in the test set")
    up = upstream_factory("implicit")
    rl = relabel_factory(up.port, "implicit",
                         brand_opts={"cert": os.path.join(certs, cert + ".crt"),
                                     "key": os.path.join(certs, cert + ".key")})
    rc, out, err = s_client(certs, rl.ports["smtps"], extra=["-tls1_2", "-cipher", cipher])
    assert_refused(rl, rc, out, err)
    # the same certificate does work with a good suite (the refusal is the cipher's)
    good = "ECDHE-RSA-AES128-GCM-SHA256" if cert == "brand-rsa" else "ECDHE-ECDSA-AES128-GCM-SHA256"
    rc, out, err = s_client(certs, rl.ports["smtps"], extra=["-tls1_2", "-cipher", good])
    assert rc == 0 and brief(err).get("Ciphersuite") == good, err


def test_wrong_name_fails_verification(upstream_factory, relabel_factory, certs):
    """Control: s_client's name check is real, so the passes above mean something."""
    up = upstream_factory("implicit")
    rl = relabel_factory(up.port, "implicit")
    args = ["timeout", "10", "openssl", "s_client", "-connect", f"{h.LOCALHOST}:{rl.ports['smtps']}",
            "-CAfile", os.path.join(certs, "ca.crt"), "-verify_hostname", "smtp.wrong.example",
            "-verify_return_error", "-servername", "smtp.wrong.example", "-brief"]
    res = h.run_tool(args, timeout=15, input=b"QUIT\n")
    assert res.returncode != 0, res.stderr
