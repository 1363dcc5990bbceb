"""
proxy_header.py - PROXY protocol headers (HAProxy's proxy-protocol.txt, v1
text and v2 binary) and clients that send one before SMTP, for the tests
of listeners behind a load balancer.  Only loopback is ever used: the
addresses inside a header are just bytes, and another 127.0.0.x source
address stands in for the balancer.
"""

import ipaddress
import smtplib
import socket
import ssl
import struct

import harness as h

V2_SIG = b"\r\n\r\n\x00\r\nQUIT\n"
PP2_TYPE_AUTHORITY = 0x02
PP2_TYPE_NOOP = 0x04

BALANCER = "127.0.0.2"  # trusted in these tests
STRANGER = "127.0.0.3"  # not trusted


def v1(src, sport=50122, dst=None, dport=465):
    fam = "TCP6" if ":" in src else "TCP4"
    if dst is None:
        dst = "2001:db8::1" if fam == "TCP6" else "192.0.2.1"
    return f"PROXY {fam} {src} {dst} {sport} {dport}\r\n".encode()


def v1_unknown():
    return b"PROXY UNKNOWN\r\n"


def v2(src, sport=50122, dst=None, dport=465, tlvs=(), command=1):
    """A v2 PROXY (command=1) header for TCP over IPv4 or IPv6; tlvs are
    (type, bytes) pairs appended after the addresses."""
    a = ipaddress.ip_address(src)
    if dst is None:
        dst = "192.0.2.1" if a.version == 4 else "2001:db8::1"
    fam = 0x11 if a.version == 4 else 0x21
    body = a.packed + ipaddress.ip_address(dst).packed + struct.pack("!HH", sport, dport)
    for t, v in tlvs:
        body += struct.pack("!BH", t, len(v)) + v
    return V2_SIG + bytes([0x20 | command, fam]) + struct.pack("!H", len(body)) + body


def v2_local():
    """LOCAL: the balancer's own connection (a health check); no addresses."""
    return V2_SIG + bytes([0x20, 0x00]) + struct.pack("!H", 0)


def connect(port, source=BALANCER, host=h.LOCALHOST):
    s = socket.create_connection((host, port), timeout=h.TIMEOUT, source_address=(source, 0))
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s


def client(relabel, listener, header, ctx=None, source=BALANCER, read_greeting=True):
    """h.Client on relabel's listener ("smtps" implicit, "submission"
    STARTTLS) that sends header first."""
    tls = "implicit" if listener == "smtps" else None
    return h.Client(relabel.ports[listener], ctx, tls=tls, source=source, preamble=header,
                    read_greeting=read_greeting)


def closed_without_reply(sock, timeout=h.TIMEOUT):
    """True if the server closes without sending a byte."""
    sock.settimeout(timeout)
    try:
        data = sock.recv(4096)
    except (ConnectionResetError, BrokenPipeError):
        return True
    return data == b""


class _ProxyHeaderFirst:
    """smtplib mixin: connect from the balancer's address and send a PROXY
    header before anything else."""

    def __init__(self, header, source=BALANCER, **kw):
        self._pp_header = header
        self._pp_source = source
        super().__init__(**kw)

    def _proxied_socket(self, port, timeout):
        s = connect(port, self._pp_source)
        s.settimeout(timeout)
        s.sendall(self._pp_header)
        return s


class ProxySMTP(_ProxyHeaderFirst, smtplib.SMTP):
    """smtplib.SMTP (STARTTLS) behind a PROXY header."""

    def _get_socket(self, host, port, timeout):
        return self._proxied_socket(port, timeout)


class ProxySMTP_SSL(_ProxyHeaderFirst, smtplib.SMTP_SSL):
    """smtplib.SMTP_SSL (implicit TLS): the header goes in plaintext before
    the handshake, as a load balancer sends it."""

    def _get_socket(self, host, port, timeout):
        return self.context.wrap_socket(self._proxied_socket(port, timeout), server_hostname=host)


class BioTLS:
    """TLS over a connected socket through memory BIOs, so the caller
    decides what goes into each write: send_first goes out in the same
    write as the ClientHello."""

    def __init__(self, sock, ctx, send_first=b"", server_hostname=h.BRAND_HOST):
        self.sock = sock
        self.inc, self.out = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.obj = ctx.wrap_bio(self.inc, self.out, server_hostname=server_hostname)
        self.buf = b""
        try:
            self.obj.do_handshake()
        except ssl.SSLWantReadError:
            pass
        hello = self.out.read()
        assert hello[:1] == b"\x16", hello[:8]
        sock.sendall(send_first + hello)  # one write: header and ClientHello
        self._run(self.obj.do_handshake)

    def _flush(self):
        data = self.out.read()
        if data:
            self.sock.sendall(data)

    def _run(self, op, *args):
        while True:
            try:
                r = op(*args)
                self._flush()
                return r
            except ssl.SSLWantReadError:
                self._flush()
                data = self.sock.recv(65536)
                if not data:
                    raise h.ConnectionClosed("EOF during TLS")
                self.inc.write(data)

    def send(self, data):
        self._run(self.obj.write, data)

    def readline(self):
        while b"\n" not in self.buf:
            self.buf += self._run(self.obj.read, 65536)
        line, _, self.buf = self.buf.partition(b"\n")
        return line + b"\n"
