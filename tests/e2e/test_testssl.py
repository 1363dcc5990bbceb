"""
TLS audit with testssl.sh (Debian package testssl.sh, command `testssl`)
against the implicit listener and, with --starttls smtp, against the
STARTTLS listener.  Fails on any finding rated MEDIUM, HIGH or CRITICAL
(or a WARN/FATAL: a check that could not run), except those explained by
the private test CA and certificate alone (EXCEPTIONS, each with its
reason).  Also asserts: SSLv2/SSLv3/TLS 1.0/TLS 1.1 not offered, only
ECDHE + AEAD cipher suites offered, client-initiated renegotiation refused.

testssl.sh only ever touches 127.0.0.1 here: --ip 127.0.0.1, --nodns none
(no DNS, no CAA lookup), no --phone-out (no CRL/OCSP download), and the
HTTP checks do not apply to SMTP.  Checks run: -p -e -f -S -P -U (protocols,
each cipher, forward secrecy, server defaults and certificate, preference,
vulnerabilities incl. renegotiation); client simulation and HTTP headers are
left out for time.  About 25 s per listener.

Skip with -m "not testssl".
"""

import json
import os
import re
import shutil
import socket
import ssl
import subprocess

import pytest

import harness as h

TESTSSL = shutil.which("testssl") or shutil.which("testssl.sh")

pytestmark = [pytest.mark.testssl,
              pytest.mark.skipif(TESTSSL is None, reason="testssl.sh not installed "
                                                         "(apt-get install testssl.sh)")]

FAILING = {"MEDIUM", "HIGH", "CRITICAL", "WARN", "FATAL"}

# Findings that come only from the test certificate made by
# certs/gen-test-certs.sh, never from relabel's TLS configuration.
EXCEPTIONS = {
    # The private test CA issues leaf certificates without a CRL
    # distribution point or an OCSP responder URL (there is nothing to
    # serve them from on 127.0.0.1).  Revocation information is a property
    # of the certificate a public CA issues for the brand; relabel neither
    # adds nor removes it.
    "cert_revocation": re.compile(r"Neither CRL nor OCSP URI provided"),
}

AEAD = re.compile(r"GCM|CHACHA20|CCM", re.IGNORECASE)


def run_testssl(port, certs, tmp_path, starttls=False):
    jsonfile = str(tmp_path / f"testssl-{port}.json")
    args = [TESTSSL, "--quiet", "--color", "0", "--warnings", "off", "--sneaky",
            "--nodns", "none", "--ip", h.LOCALHOST, "--add-ca", os.path.join(certs, "ca.crt"),
            "--jsonfile", jsonfile, "-p", "-e", "-f", "-S", "-P", "-U"]
    if starttls:
        args += ["--starttls", "smtp"]
    args.append(f"{h.BRAND_HOST}:{port}")
    res = subprocess.run(args, capture_output=True, timeout=240, cwd=str(tmp_path),
                         stdin=subprocess.DEVNULL)
    out = res.stdout.decode("utf-8", "replace")
    assert os.path.exists(jsonfile), f"testssl wrote no JSON (exit {res.returncode}):\n{out[-3000:]}"
    with open(jsonfile) as f:
        findings = json.load(f)
    print(out)
    return findings, out


def by_id(findings):
    out = {}
    for f in findings:
        out.setdefault(f["id"], []).append(f)
    return out


def check_audit(findings, out, starttls):
    assert len(findings) > 40, f"testssl produced only {len(findings)} findings:\n{out[-3000:]}"
    ids = by_id(findings)

    bad = []
    for f in findings:
        sev = f.get("severity", "").upper()
        if sev not in FAILING:
            continue
        rx = EXCEPTIONS.get(f["id"])
        if rx is not None and rx.search(f.get("finding", "")):
            continue
        bad.append(f"{sev} {f['id']}: {f.get('finding')}")
    assert not bad, "testssl findings rated MEDIUM or higher:\n" + "\n".join(bad)

    def finding(fid):
        assert fid in ids, f"testssl reported no {fid}; ids: {sorted(ids)}"
        return ids[fid][0]["finding"]

    if starttls:
        assert finding("service").lower().startswith("smtp"), finding("service")
    # protocols
    for p in ("SSLv2", "SSLv3", "TLS1", "TLS1_1"):
        assert "not offered" in finding(p), (p, finding(p))
    assert finding("TLS1_2").startswith("offered"), finding("TLS1_2")
    # ciphers: every one offered is ECDHE with an AEAD
    offered = [f["finding"] for fid, fs in ids.items() if re.fullmatch(r"cipher_x[0-9a-f]+", fid)
               for f in fs]
    assert offered, "testssl listed no offered cipher (-e)"
    for line in offered:
        parts = line.split()
        name, kx = parts[1], parts[2]
        assert name.startswith("ECDHE-") and kx.startswith("ECDH"), f"non-ECDHE suite: {line}"
        assert AEAD.search(name), f"non-AEAD suite offered: {line}"
    for name in finding("PFS_ciphers").split():
        assert name.startswith("ECDHE-") and AEAD.search(name), name
    # renegotiation: secure renegotiation indication only, no client-initiated one
    assert "not vulnerable" in finding("secure_client_renego"), finding("secure_client_renego")
    # and the classics
    for fid in ("heartbleed", "CCS", "ROBOT", "CRIME_TLS", "POODLE_SSL", "SWEET32", "FREAK",
                "DROWN", "LOGJAM", "BEAST", "LUCKY13", "RC4"):
        assert "not vulnerable" in finding(fid), (fid, finding(fid))
    return offered


@pytest.fixture
def audited(upstream_factory, relabel_factory):
    up = upstream_factory("implicit")
    # testssl.sh opens hundreds of connections from one address in a minute:
    # the per-address rate limit would end the audit, not test anything.
    rl = relabel_factory(up.port, "implicit", relabel_opts={"log_level": "info",
                                                            "handshake_timeout": "10s",
                                                            "command_timeout": "30s",
                                                            "max_connection_rate": "0"})
    return up, rl


def test_testssl_implicit_listener(audited, certs, client_ctx, tmp_path):
    up, rl = audited
    findings, out = run_testssl(rl.ports["smtps"], certs, tmp_path)
    offered = check_audit(findings, out, starttls=False)
    print("offered:", offered)
    c = h.open_session(rl, "implicit", client_ctx)  # still serving
    assert c.auth_plain().code == 235
    assert c.send_message(b"Subject: after testssl\r\n\r\nok\r\n").code == 250
    c.close()
    assert rl.proc.poll() is None
    assert up.recorder.verbs().count("MAIL") == 1 and up.recorder.verbs().count("AUTH") == 1


def test_testssl_starttls_listener(audited, certs, client_ctx, tmp_path):
    up, rl = audited
    findings, out = run_testssl(rl.ports["submission"], certs, tmp_path, starttls=True)
    check_audit(findings, out, starttls=True)
    c = h.open_session(rl, "starttls", client_ctx)
    assert c.auth_plain().code == 235
    assert c.send_message(b"Subject: after testssl\r\n\r\nok\r\n").code == 250
    c.close()
    assert rl.proc.poll() is None
    # testssl's probes never sent the provider a message or a login
    assert up.recorder.verbs().count("MAIL") == 1 and up.recorder.verbs().count("AUTH") == 1


def test_starttls_and_client_hello_in_one_flight(audited, certs):
    """STARTTLS followed by a ClientHello in the same segment: the handshake
    bytes arrived before relabel's 220, so they cross the STARTTLS boundary:
    refused (554) and closed, no TLS session begins."""
    up, rl = audited
    ctx = h.client_context(certs)
    inc, outb = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(inc, outb, server_hostname=h.BRAND_HOST)
    try:
        obj.do_handshake()
    except ssl.SSLWantReadError:
        pass
    hello = outb.read()
    s = socket.create_connection((h.LOCALHOST, rl.ports["submission"]), timeout=h.TIMEOUT)
    ls = h.LineSock(s)
    try:
        assert ls.readline().startswith(b"220 ")
        ls.send(b"EHLO x\r\n")
        while not ls.readline().startswith(b"250 "):
            pass
        ls.send(b"STARTTLS\r\n" + hello)
        got = b""
        try:
            while True:
                got += ls.recv_some()
        except (h.ConnectionClosed, OSError):
            pass
    finally:
        s.close()
    assert got.startswith(b"554 5.5.1"), got
    assert b"\x16\x03" not in got  # no ServerHello
    assert up.recorder.conns == []
