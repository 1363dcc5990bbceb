"""
harness.py - the moving parts of the relabel end-to-end tests.

Everything here binds or connects to 127.0.0.1 only and every blocking wait
has a timeout.  conftest.py turns these classes into pytest fixtures; the
test files import the helpers (SMTP client, assertions) directly.

  AioUpstream       a real SMTP server (aiosmtpd) dressed up as Mailgun,
                    implicit TLS or STARTTLS, AUTH PLAIN/LOGIN, recording
                    every command line and every message byte-exact.
  ScriptedUpstream  a hand-written SMTP server for faults: no STARTTLS,
                    bytes injected after "220" to STARTTLS, reset or stall
                    mid-session, slow DATA reader.
  Relabel           the daemon under test: writes its config, starts it,
                    waits for "relabel ready", stops it with SIGTERM.
  Client            a raw SMTP client (plain / implicit TLS / STARTTLS) that
                    keeps every reply it ever saw.
"""

import asyncio
import base64
import hashlib
import os
import re
import signal
import socket
import smtplib
import ssl
import struct
import subprocess
import threading
import time

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, LoginPassword

LOCALHOST = "127.0.0.1"
BRAND_HOST = "smtp.example.com"
UPSTREAM_VERIFY_NAME = "smtp.mailgun.org"
UPSTREAM_HOSTNAME = "smtp-a1b2.mailgun.org"  # what the fake Mailgun calls itself
UPSTREAM_IDENT = "Mailgun Influx ready"
UPSTREAM_QUIT = "221 See you later. Yours truly, Mailgun"
UPSTREAM_SIZE = 60 * 1024 * 1024
USER = "user"
PASSWORD = "secret"
TIMEOUT = 10.0  # default for every socket operation and wait

PROVIDER_RE = re.compile(rb"mailgun|postgun", re.IGNORECASE)
BARE_CR_LF_RE = re.compile(rb"\r(?!\n)|(?<!\r)\n")

HERE = os.path.dirname(os.path.abspath(__file__))
REPO_ROOT = os.path.dirname(os.path.dirname(HERE))


# --------------------------------------------------------------------------
# small utilities

def wait_for(predicate, timeout=TIMEOUT, interval=0.01, what="condition"):
    """Polls predicate() until it returns something truthy; returns it."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


_ports_lock = threading.Lock()
_ports_given = set()


def free_port():
    """A TCP port on 127.0.0.1 that was free a moment ago (never the same twice)."""
    with _ports_lock:
        for _ in range(200):
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
                s.bind((LOCALHOST, 0))
                port = s.getsockname()[1]
            if port not in _ports_given:
                _ports_given.add(port)
                return port
    raise RuntimeError("no free port found")


def b64(data):
    if isinstance(data, str):
        data = data.encode()
    return base64.b64encode(data).decode()


def plain_token(user=USER, password=PASSWORD):
    return b64(f"\0{user}\0{password}")


def stuff(body):
    """Dot-stuffs a CRLF message for the wire and appends the end-of-data line."""
    out = body
    if out.startswith(b"."):
        out = b"." + out
    out = out.replace(b"\r\n.", b"\r\n..")
    if out and not out.endswith(b"\r\n"):
        out += b"\r\n"
    return out + b".\r\n"


def stuff_partial(data):
    """Dot-stuffing only: for a message cut short on purpose."""
    out = b"." + data if data.startswith(b".") else data
    return out.replace(b"\r\n.", b"\r\n..")


def unstuff(wire):
    """Inverse of stuff() without the end line: the message as a server stores it."""
    out = wire.replace(b"\r\n.", b"\r\n")
    if out.startswith(b"."):
        out = out[1:]
    return out


def has_bare_cr_lf(data):
    return BARE_CR_LF_RE.search(data) is not None


def make_body(size, seed=b"", line_len=76):
    """A CRLF message of about size bytes: headers, then lines of printable text."""
    head = b"From: a@example.net\r\nTo: b@example.org\r\nSubject: e2e " + seed + b"\r\n\r\n"
    line = (b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ" * 20)[: line_len] + b"\r\n"
    n = max(0, (size - len(head)) // len(line))
    return head + line * n


# --------------------------------------------------------------------------
# what an upstream saw

class Command:
    __slots__ = ("line", "verb", "tls")

    def __init__(self, line, tls):
        self.line = line
        self.tls = tls
        parts = line.strip().split(None, 1)
        self.verb = parts[0].upper().decode("latin-1") if parts else ""

    def __repr__(self):
        return f"<{'tls' if self.tls else 'plain'} {self.line!r}>"


class Message:
    def __init__(self, mail_from, rcpt_tos, data, auth_user=None, tls=True, reply=None):
        self.mail_from = mail_from
        self.reply = reply  # ScriptedUpstream: the code it answered to the end of data
        self.rcpt_tos = list(rcpt_tos)
        self.data = bytes(data)
        self.auth_user = auth_user
        self.tls = tls

    def __repr__(self):
        return f"<Message from={self.mail_from!r} to={self.rcpt_tos!r} {len(self.data)} bytes>"


class UpConn:
    def __init__(self, peer):
        self.peer = peer
        self.commands = []
        self.closed = False
        self.notes = []  # protocol violations seen by the scripted upstream


class Recorder:
    """Thread-safe record of everything an upstream saw."""

    def __init__(self):
        self.lock = threading.Lock()
        self.conns = []
        self.messages = []
        self.auth_closes = 0  # connections closed after a 535 (Mailgun does that)

    def new_conn(self, peer):
        c = UpConn(peer)
        with self.lock:
            self.conns.append(c)
        return c

    def add_message(self, msg):
        with self.lock:
            self.messages.append(msg)

    def clear(self):
        with self.lock:
            self.conns = []
            self.messages = []

    @property
    def commands(self):
        with self.lock:
            return [cmd for c in self.conns for cmd in c.commands]

    def verbs(self):
        return [c.verb for c in self.commands]

    def saw(self, verb):
        return verb.upper() in self.verbs()

    def all_closed(self):
        with self.lock:
            return all(c.closed for c in self.conns)

    def wait_messages(self, n, timeout=TIMEOUT):
        wait_for(lambda: len(self.messages) >= n, timeout, what=f"{n} upstream message(s)")
        return list(self.messages)


# --------------------------------------------------------------------------
# TLS contexts

def server_context(certs, name="upstream"):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(os.path.join(certs, name + ".crt"), os.path.join(certs, name + ".key"))
    return ctx


def client_context(certs):
    """Trusts only the test CA and checks host names."""
    ctx = ssl.create_default_context(cafile=os.path.join(certs, "ca.crt"))
    ctx.check_hostname = True
    ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


# --------------------------------------------------------------------------
# the aiosmtpd upstream

class _RecordingSMTP(SMTP):
    """aiosmtpd's SMTP, recording every line it reads in command mode."""

    def __init__(self, handler, *, implicit_tls, **kwargs):
        self._implicit_tls = implicit_tls
        self._upconn = None
        super().__init__(handler, **kwargs)

    def _client_connected_cb(self, reader, writer):
        super()._client_connected_cb(reader, writer)
        peer = writer.get_extra_info("peername")
        conn = self.event_handler.recorder.new_conn(peer)
        self._upconn = conn
        proto = self
        orig_readuntil = reader.readuntil

        # Command lines and AUTH continuation lines are read with the default
        # separator b"\n"; DATA uses b"\r\n" and is captured by handle_DATA.
        async def readuntil(separator=b"\n"):
            line = await orig_readuntil(separator)
            if separator == b"\n":
                tls = proto._implicit_tls or proto._tls_protocol is not None
                conn.commands.append(Command(bytes(line), tls))
            return line

        reader.readuntil = readuntil

    def connection_lost(self, error):
        if self._upconn is not None:
            self._upconn.closed = True
        super().connection_lost(error)

    async def push(self, status):
        self._last_status = status
        await super().push(status)

    async def smtp_AUTH(self, arg):
        self._last_status = ""
        await super().smtp_AUTH(arg)
        if self.event_handler.close_after_535 and self._last_status.startswith("535"):
            # Mailgun closes the connection after a failed AUTH.
            self.event_handler.recorder.auth_closes += 1
            self.transport.close()


class UpstreamHandler:
    def __init__(self, recorder, implicit_tls, data_delay=0.0, close_after_535=True):
        self.recorder = recorder
        self.implicit_tls = implicit_tls
        self.data_delay = data_delay
        self.close_after_535 = close_after_535
        self.counter = 0

    async def handle_EHLO(self, server, session, envelope, hostname, responses):
        session.host_name = hostname
        # Mailgun-like extras; CHUNKING is something relabel must filter out.
        return responses[:-1] + ["250-PIPELINING", "250-ENHANCEDSTATUSCODES",
                                 "250-CHUNKING", responses[-1]]

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        if address.lower().startswith("reject"):
            return f"550 5.1.1 <{address}>: mailbox unavailable at {UPSTREAM_HOSTNAME}"
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server, session, envelope):
        if self.data_delay:
            await asyncio.sleep(self.data_delay)
        user = None
        if session.authenticated and isinstance(session.auth_data, LoginPassword):
            user = session.auth_data.login.decode()
        tls = self.implicit_tls or server._tls_protocol is not None
        self.recorder.add_message(Message(envelope.mail_from, envelope.rcpt_tos,
                                          envelope.original_content, user, tls))
        self.counter += 1
        return f"250 2.0.0 Great success, queued as <{self.counter}@{UPSTREAM_HOSTNAME}>"

    async def handle_QUIT(self, server, session, envelope):
        return UPSTREAM_QUIT


def _authenticator(server, session, envelope, mechanism, auth_data):
    ok = (isinstance(auth_data, LoginPassword)
          and auth_data.login == USER.encode() and auth_data.password == PASSWORD.encode())
    return AuthResult(success=ok, handled=False, auth_data=auth_data if ok else None)


class _UpController(Controller):
    def __init__(self, handler, implicit_tls, **kwargs):
        self._implicit_tls = implicit_tls
        super().__init__(handler, **kwargs)

    def factory(self):
        return _RecordingSMTP(self.handler, implicit_tls=self._implicit_tls, **self.SMTP_kwargs)


class AioUpstream:
    """A Mailgun look-alike on 127.0.0.1: tls = "implicit" or "starttls".
    port: a port to reuse (e.g. to restart an upstream with another certificate).
    close_after_535: like Mailgun, close the connection after a failed AUTH."""

    def __init__(self, certs, tls="implicit", cert="upstream", data_delay=0.0, port=None,
                 close_after_535=True):
        assert tls in ("implicit", "starttls")
        self.certs = certs
        self.tls = tls
        self.cert = cert
        self.port = port or free_port()
        self.recorder = Recorder()
        implicit = tls == "implicit"
        handler = UpstreamHandler(self.recorder, implicit, data_delay, close_after_535)
        kwargs = dict(hostname=LOCALHOST, port=self.port,
                      server_hostname=UPSTREAM_HOSTNAME, ident=UPSTREAM_IDENT,
                      data_size_limit=UPSTREAM_SIZE, authenticator=_authenticator,
                      timeout=30, ready_timeout=TIMEOUT)
        ctx = server_context(certs, cert)
        if implicit:
            # The whole connection is TLS; aiosmtpd 1.4 only knows about TLS
            # it started itself, so AUTH must not wait for STARTTLS here.
            kwargs.update(ssl_context=ctx, auth_require_tls=False)
        else:
            kwargs.update(tls_context=ctx, require_starttls=True, auth_require_tls=True)
        self.controller = _UpController(handler, implicit, **kwargs)

    def start(self):
        self.controller.start()
        # Controller.start() made one connection of its own to check the server.
        wait_for(self.recorder.all_closed, what="aiosmtpd self-test connection to close")
        self.recorder.clear()
        return self

    def stop(self):
        """Stops the server; again does nothing (a test may stop it before teardown)."""
        if not getattr(self, "stopped", False):
            self.stopped = True
            self.controller.stop()

    @property
    def messages(self):
        return list(self.recorder.messages)


# --------------------------------------------------------------------------
# sockets with a line buffer (used by the scripted upstream and the client)

class ConnectionClosed(Exception):
    pass


class LineSock:
    def __init__(self, sock, timeout=TIMEOUT):
        sock.settimeout(timeout)
        self.sock = sock
        self.buf = bytearray()

    def settimeout(self, t):
        self.sock.settimeout(t)

    def _fill(self, n=65536):
        try:
            data = self.sock.recv(n)
        except (ConnectionResetError, BrokenPipeError, ssl.SSLEOFError) as e:
            raise ConnectionClosed(str(e)) from e
        except ssl.SSLError as e:
            raise ConnectionClosed(str(e)) from e
        if not data:
            raise ConnectionClosed("EOF")
        self.buf += data

    def readline(self, limit=1 << 20):
        while True:
            i = self.buf.find(b"\n")
            if i >= 0:
                line = bytes(self.buf[: i + 1])
                del self.buf[: i + 1]
                return line
            if len(self.buf) > limit:
                raise ValueError("line too long")
            self._fill()

    def recv_some(self, n=65536):
        if not self.buf:
            self._fill(n)
        data = bytes(self.buf[:n])
        del self.buf[:n]
        return data

    def send(self, data):
        if isinstance(data, str):
            data = data.encode()
        self.sock.sendall(data)

    def wrap_server(self, ctx):
        self.sock = ctx.wrap_socket(self.sock, server_side=True)

    def wrap_client(self, ctx, server_hostname, session=None):
        self.sock = ctx.wrap_socket(self.sock, server_hostname=server_hostname, session=session)

    def reset(self):
        """Closes with RST (SO_LINGER 0)."""
        try:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass
        self.sock.close()

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass


# --------------------------------------------------------------------------
# the scripted upstream

class Fault:
    """
    One fault for ScriptedUpstream, injected at a protocol point of its
    first faulted connection.

    Points (where the upstream is about to write `reply`, or None when no
    reply is due):
      greeting   before the 220 greeting (after the TLS handshake in implicit mode)
      EHLO-plain relabel's own EHLO before STARTTLS (tls = starttls only)
      STARTTLS   the 220 to relabel's STARTTLS (tls = starttls only)
      EHLO       the client's (relayed) EHLO, TLS up
      AUTH       the final reply to AUTH (235)
      MAIL, RCPT, DATA   the reply to that command of message `nth`
      354        right after the 354 (no reply due)
      body       after `after` bytes of message data (no reply due)
      dot        the reply to the end of data
      after-dot  right after the reply to the end of data (no reply due)

    Kinds:
      rst          connection reset (SO_LINGER 0), no reply
      fin          clean TCP close (shutdown, drain, close), no reply; over TLS
                   without close_notify
      close_notify TLS close_notify, then FIN (plain TCP: same as fin)
      stall        no reply, never again; the connection stays open until
                   relabel closes it
      garbage      b"xyz\\r\\n" instead of the reply (unsolicited when none is due)
      extra        the reply twice (an unsolicited 250 when none is due)
      override     `code_text` instead of the reply (when none is due: an
                   early reply at 354/body; the reply to the next command at
                   after-dot)
      inject       the reply, then INJECT (a burst of would-be replies)

    After garbage, extra, inject or an early override the connection is
    "tainted": every later end of data is answered 554, so a 2xx that a
    client receives for such a message cannot have come from the upstream.
    """

    POINTS = ("greeting", "EHLO-plain", "STARTTLS", "EHLO", "AUTH", "MAIL", "RCPT", "DATA", "354",
              "body", "dot", "after-dot")
    KINDS = ("rst", "fin", "close_notify", "stall", "garbage", "extra", "override", "inject")
    NO_REPLY_POINTS = ("354", "body", "after-dot")
    FATAL = ("rst", "fin", "close_notify", "stall")
    OVERRIDE = {
        "greeting": "554 5.3.2 no SMTP service here",
        "EHLO-plain": "554 5.7.1 EHLO refused",
        "STARTTLS": "454 4.7.0 TLS not available now",
        "EHLO": "550 5.7.1 EHLO refused",
        "AUTH": "454 4.7.0 temporary authentication failure",
        "MAIL": "452 4.3.1 insufficient system storage",
        "RCPT": "550 5.1.1 no such user here",
        "DATA": "554 5.5.1 no valid recipients",
        "354": "554 5.6.0 early reject",
        "body": "554 5.6.0 early reject",
        "dot": "554 5.7.1 message rejected",
        "after-dot": "452 4.5.3 too many messages in this session",
    }
    INJECT = (b"250 2.1.0 injected-mail\r\n250 2.1.5 injected-rcpt\r\n354 injected-go-ahead\r\n"
              b"250 2.0.0 injected-queued\r\n")
    GARBAGE = b"xyz\r\n"

    def __init__(self, at, kind, code_text=None, after=64 * 1024, nth=1):
        assert at in self.POINTS, at
        assert kind in self.KINDS, kind
        self.at = at
        self.kind = kind
        self.code_text = code_text or self.OVERRIDE[at]
        self.after = after
        self.nth = nth

    def __repr__(self):
        extra = f" {self.code_text!r}" if self.kind == "override" else ""
        return f"<Fault {self.kind} at {self.at}{extra}>"


class _EndSession(Exception):
    """A fault ended the scripted session (the socket is already dealt with)."""


class _ConnState:
    def __init__(self, ls, conn, fault):
        self.ls = ls
        self.conn = conn
        self.fault = fault
        self.fired = False
        self.tainted = False
        self.override_next = None
        self.tls_on = False
        self.msg_no = 0  # the message the current MAIL/RCPT/DATA belongs to


class ScriptedUpstream:
    """
    A small SMTP server with knobs for misbehaviour.

      tls            "implicit" | "starttls"
      cert           certificate name in the cert dir
      offer_starttls False: EHLO (before TLS) lists no STARTTLS
      starttls_extra bytes sent right after "220 ... Ready to start TLS"
      drop_on        verb (e.g. "RCPT"): close the connection without a reply
      stall_on       verb: never reply to it (keep the connection open)
      data_mode      "normal" | "reset" (RST after reset_after data bytes) |
                     "slow" (read DATA at slow_rate bytes/s) |
                     "stop" (stop reading after reset_after data bytes for
                     stop_secs, then read until relabel has closed)
      fault          a Fault for the first connection (see arm())

    Every message it reads is recorded (Message.reply: the code it answered
    to the end of data, None if it never answered).
    """

    def __init__(self, certs, tls="implicit", cert="upstream", offer_starttls=True,
                 starttls_extra=b"", drop_on=None, stall_on=None, data_mode="normal",
                 reset_after=64 * 1024, slow_rate=16 * 1024 * 1024, fault=None, backlog=16,
                 stop_secs=5.0):
        self.certs = certs
        self.tls = tls
        self.ctx = server_context(certs, cert)
        self.offer_starttls = offer_starttls
        self.starttls_extra = starttls_extra
        self.drop_on = drop_on
        self.stall_on = stall_on
        self.data_mode = data_mode
        self.reset_after = reset_after
        self.slow_rate = slow_rate
        self.backlog = backlog
        self.stop_secs = stop_secs
        self.port = free_port()
        self.recorder = Recorder()
        self.errors = []
        self._stop = threading.Event()
        self._threads = []
        self._socks = []
        self._lock = threading.Lock()
        self._armed = []  # faults for the next connections, in order
        if fault is not None:
            self._armed.append(fault)
        self.lsock = None

    def arm(self, fault, conns=1):
        """The next `conns` connections each get `fault` (None: clears)."""
        with self._lock:
            self._armed = [] if fault is None else [fault] * conns

    def start(self):
        self.lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.lsock.bind((LOCALHOST, self.port))
        self.lsock.listen(self.backlog)
        self.lsock.settimeout(0.1)
        t = threading.Thread(target=self._accept_loop, daemon=True)
        t.start()
        self._threads.append(t)
        return self

    def stop(self):
        self._stop.set()
        with self._lock:
            socks = list(self._socks)
        for s in socks:
            try:
                s.close()
            except OSError:
                pass
        for t in self._threads:
            t.join(TIMEOUT)
        self.lsock.close()

    @property
    def messages(self):
        return list(self.recorder.messages)

    def _accept_loop(self):
        while not self._stop.is_set():
            try:
                s, peer = self.lsock.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            with self._lock:
                self._socks.append(s)
                fault = self._armed.pop(0) if self._armed else None
            t = threading.Thread(target=self._serve, args=(s, peer, fault), daemon=True)
            t.start()
            with self._lock:
                self._threads = [x for x in self._threads if x.is_alive()] + [t]

    def _serve(self, s, peer, fault=None):
        # every reply (and every injected fault) leaves at once, not held
        # back by Nagle until relabel's delayed ACK
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        conn = self.recorder.new_conn(peer)
        conn.fault = fault
        conn.fired = False
        ls = LineSock(s, timeout=30)
        try:
            self._session(ls, conn, fault)
        except _EndSession:
            pass
        except (ConnectionClosed, OSError, ssl.SSLError, ValueError) as e:
            conn.notes.append(f"ended: {e!r}")
        finally:
            if not getattr(ls, "was_reset", False):
                ls.close()
            with self._lock:
                if s in self._socks:
                    self._socks.remove(s)
            conn.closed = True

    def _reply(self, ls, *lines):
        ls.send(self._render(*lines))

    @staticmethod
    def _render(*lines):
        out = b""
        for i, l in enumerate(lines):
            code, text = l[:3], l[4:]
            sep = "-" if i < len(lines) - 1 else " "
            out += f"{code}{sep}{text}\r\n".encode()
        return out

    # ---- faults -----------------------------------------------------------

    def _drain_until_closed(self, ls, limit):
        """Reads and drops bytes until the peer closes (or limit seconds, or stop())."""
        deadline = time.monotonic() + limit
        ls.buf.clear()
        while not self._stop.is_set() and time.monotonic() < deadline:
            ls.settimeout(0.2)
            try:
                ls._fill()
                ls.buf.clear()
            except (socket.timeout, TimeoutError):
                continue
            except (ConnectionClosed, OSError, ValueError):
                return True
        return False

    def _fin(self, ls):
        try:
            ls.sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        self._drain_until_closed(ls, 5)

    def _emit(self, st, point, reply):
        """Writes `reply` (bytes or None) at `point`, or injects the armed fault there."""
        ls, f = st.ls, st.fault
        if point in ("MAIL", "RCPT", "DATA") and st.override_next is not None:
            reply, st.override_next = st.override_next, None
        fire = (f is not None and not st.fired and f.at == point
                and (point not in ("MAIL", "RCPT", "DATA", "354", "body", "dot", "after-dot")
                     or st.msg_no == f.nth))
        if not fire:
            if reply:
                ls.send(reply)
            return
        st.fired = st.conn.fired = True
        st.conn.notes.append(f"fault fired: {f!r}")
        kind = f.kind
        if kind == "rst":
            ls.reset()
            ls.was_reset = True
            raise _EndSession()
        if kind == "fin":
            self._fin(ls)
            raise _EndSession()
        if kind == "close_notify":
            if isinstance(ls.sock, ssl.SSLSocket):
                ls.settimeout(1)
                try:
                    ls.sock = ls.sock.unwrap()
                except (OSError, ssl.SSLError, ValueError) as e:
                    st.conn.notes.append(f"unwrap: {e!r}")
            self._fin(ls)
            raise _EndSession()
        if kind == "stall":
            self._drain_until_closed(ls, 60)
            raise _EndSession()
        st.tainted = True
        if kind == "garbage":
            ls.send(Fault.GARBAGE)
        elif kind == "extra":
            ls.send((reply or b"") + (reply or b"250 2.0.0 OK unsolicited\r\n"))
        elif kind == "inject":
            ls.send((reply or b"") + Fault.INJECT)
        elif kind == "override":
            over = self._render(f.code_text)
            if point == "after-dot":
                st.tainted = False  # nothing was sent yet: the next reply is the override
                st.override_next = over
                if reply:
                    ls.send(reply)
            else:
                ls.send(over)

    # ---- the dialogue -----------------------------------------------------

    def _session(self, ls, conn, fault=None):
        st = _ConnState(ls, conn, fault)
        if self.tls == "implicit":
            ls.wrap_server(self.ctx)
            st.tls_on = True
        self._emit(st, "greeting", f"220 {UPSTREAM_HOSTNAME} ESMTP {UPSTREAM_IDENT}\r\n".encode())
        if fault is not None and fault.at == "greeting" and fault.kind == "override":
            conn.notes.append("refused at greeting")
        mail_from, rcpts, user = None, [], None
        while not self._stop.is_set():
            line = ls.readline()
            cmd = Command(line, st.tls_on)
            conn.commands.append(cmd)
            verb = cmd.verb
            arg = line.strip()[len(verb) + 1:].decode("latin-1")
            if self.drop_on and verb == self.drop_on:
                ls.reset()
                ls.was_reset = True
                return
            if self.stall_on and verb == self.stall_on:
                self._drain_until_closed(ls, 60)
                return
            if verb in ("EHLO", "HELO"):
                caps = [f"250 {UPSTREAM_HOSTNAME}", f"250 SIZE {UPSTREAM_SIZE}", "250 8BITMIME",
                        "250 PIPELINING", "250 ENHANCEDSTATUSCODES"]
                if self.tls == "starttls" and not st.tls_on and self.offer_starttls:
                    caps.append("250 STARTTLS")
                if st.tls_on:
                    caps.append("250 AUTH PLAIN LOGIN")
                if verb == "HELO":
                    caps = caps[:1]
                self._emit(st, "EHLO" if st.tls_on else "EHLO-plain", self._render(*caps))
            elif verb == "STARTTLS":
                if st.tls_on or self.tls != "starttls" or not self.offer_starttls:
                    self._reply(ls, "503 5.5.1 TLS already active or not available")
                    continue
                self._emit(st, "STARTTLS", b"220 2.0.0 Ready to start TLS\r\n" + self.starttls_extra)
                if fault is not None and fault.at == "STARTTLS" and fault.kind != "inject":
                    # the reply was refused or garbled: no TLS follows
                    continue
                if ls.buf:
                    conn.notes.append(f"client sent bytes after STARTTLS: {bytes(ls.buf)!r}")
                    ls.buf.clear()
                ls.wrap_server(self.ctx)
                st.tls_on = True
                mail_from, rcpts, user = None, [], None
            elif verb == "AUTH":
                user = self._auth(st, arg)
            elif verb == "MAIL":
                st.msg_no += 1
                mail_from, rcpts = arg.split(":", 1)[1].strip().split()[0].strip("<>"), []
                self._emit(st, "MAIL", b"250 2.1.0 OK\r\n")
            elif verb == "RCPT":
                rcpts.append(arg.split(":", 1)[1].strip().split()[0].strip("<>"))
                self._emit(st, "RCPT", b"250 2.1.5 OK\r\n")
            elif verb == "DATA":
                if not rcpts:
                    self._reply(ls, "503 5.5.1 need RCPT")
                    continue
                before = (st.fired, st.override_next)
                self._emit(st, "DATA", b"354 Start mail input; end with <CRLF>.<CRLF>\r\n")
                if (st.fired and not before[0] and fault.kind == "override") or (
                        before[1] is not None and st.override_next is None):
                    continue  # DATA refused: no message follows
                self._emit(st, "354", None)
                data = self._read_data(ls, conn, st)
                if data is None:
                    return
                msg = Message(mail_from, rcpts, unstuff(data), user, st.tls_on)
                self.recorder.add_message(msg)
                if st.tainted:
                    dot = b"554 5.7.1 rejected: this session saw a protocol fault\r\n"
                else:
                    dot = f"250 2.0.0 Great success ({UPSTREAM_HOSTNAME})\r\n".encode()
                if fault is not None and fault.at == "dot" and fault.kind == "override" \
                        and not st.fired and st.msg_no == fault.nth:
                    msg.reply = int(fault.code_text[:3])
                elif fault is not None and fault.at == "dot" and not st.fired \
                        and st.msg_no == fault.nth and fault.kind in ("garbage",) + Fault.FATAL:
                    msg.reply = None
                else:
                    msg.reply = int(dot[:3])
                self._emit(st, "dot", dot)
                self._emit(st, "after-dot", None)
                mail_from, rcpts = None, []
            elif verb in ("RSET", "NOOP"):
                if verb == "RSET":
                    mail_from, rcpts = None, []
                self._reply(ls, "250 2.0.0 OK")
            elif verb == "QUIT":
                self._reply(ls, UPSTREAM_QUIT)
                return
            else:
                self._reply(ls, "500 5.5.2 unrecognized command")

    def _auth(self, st, arg):
        ls, conn, tls_on = st.ls, st.conn, st.tls_on
        if not tls_on:
            self._reply(ls, "538 5.7.11 Encryption required")
            return None
        parts = arg.split()
        mech = parts[0].upper() if parts else ""

        def ask(challenge):
            self._reply(ls, "334 " + challenge)
            line = ls.readline()
            conn.commands.append(Command(line, tls_on))
            return base64.b64decode(line.strip())

        if mech == "PLAIN":
            blob = base64.b64decode(parts[1]) if len(parts) > 1 else ask("")
            _, u, p = blob.split(b"\0")
        elif mech == "LOGIN":
            u = base64.b64decode(parts[1]) if len(parts) > 1 else ask(b64("Username:"))
            p = ask(b64("Password:"))
        else:
            self._reply(ls, "504 5.5.4 mechanism not supported")
            return None
        if u == USER.encode() and p == PASSWORD.encode():
            self._emit(st, "AUTH", b"235 2.7.0 Authentication successful\r\n")
            return USER
        self._emit(st, "AUTH", b"535 5.7.8 Authentication credentials invalid\r\n")
        return None

    def _read_data(self, ls, conn, st=None):
        """Returns the stuffed data without the end line, or None after a reset."""
        buf = bytearray()
        received = 0
        search_from = 0
        started = time.monotonic()
        body_fault = (st is not None and st.fault is not None and st.fault.at == "body"
                      and not st.fired and st.msg_no == st.fault.nth)
        while True:
            if buf[:3] == b".\r\n":
                ls.buf[0:0] = buf[3:]
                return b""
            i = buf.find(b"\r\n.\r\n", search_from)
            if i >= 0:
                ls.buf[0:0] = buf[i + 5:]
                return bytes(buf[: i + 2])
            search_from = max(0, len(buf) - 4)
            if body_fault and received >= st.fault.after:
                body_fault = False
                self._emit(st, "body", None)  # raises for the fatal kinds
            if self.data_mode == "reset" and received >= self.reset_after:
                conn.notes.append(f"reset after {received} data bytes")
                ls.reset()
                ls.was_reset = True
                return None
            if self.data_mode == "stop" and received >= self.reset_after:
                # read nothing for stop_secs (the peer's FIN cannot reach us
                # behind a full window), then drain until the peer is gone
                conn.notes.append(f"stopped reading after {received} data bytes")
                self._stop.wait(self.stop_secs)
                self._drain_until_closed(ls, 30)
                raise _EndSession()
            want = 65536
            if body_fault:
                want = max(1, min(want, st.fault.after - received))
            chunk = ls.recv_some(want)
            received += len(chunk)
            buf += chunk
            if self.data_mode == "slow":
                ahead = received / self.slow_rate - (time.monotonic() - started)
                if ahead > 0:
                    time.sleep(ahead)


# --------------------------------------------------------------------------
# relabel: config and process

MODES = [("implicit", "implicit"), ("implicit", "starttls"),
         ("starttls", "implicit"), ("starttls", "starttls")]
MODE_IDS = [f"client-{c}-up-{u}" for c, u in MODES]


class ConfigText:
    """An ini file built section by section, remembering the line of every key."""

    def __init__(self):
        self.lines = []
        self.where = {}

    def section(self, header, items):
        if self.lines:
            self.lines.append("")
        self.lines.append(header)
        self.where[(header, None)] = len(self.lines)
        for k, v in items.items():
            if v is None:
                continue
            self.lines.append(f"{k} = {v}")
            self.where[(header, k)] = len(self.lines)

    def line_of(self, header, key=None):
        return self.where[(header, key)]

    def text(self):
        return "\n".join(self.lines) + "\n"


def upstream_section(certs, port, tls="implicit", **more):
    """The keys of an [upstream] section for a fake upstream on 127.0.0.1:port."""
    opts = {"host": LOCALHOST, "port": str(port), "tls": tls,
            "verify_name": UPSTREAM_VERIFY_NAME, "ca_file": os.path.join(certs, "ca.crt"),
            "hide": "mailgun.org, postgun.com, mailgun"}
    opts.update(more)
    return opts


def relabel_config(certs, upstream_port, upstream_tls, ports, relabel_opts=None,
                   listener_opts=None, brand_opts=None, upstream_opts=None, metrics_opts=None,
                   brands=None, upstreams=None):
    """
    The standard test config: listener "smtps" (implicit) on ports["smtps"],
    listener "submission" (starttls) on ports["submission"], brand "example",
    upstream "test" on 127.0.0.1:upstream_port, and with metrics_opts a
    [metrics] section of exactly those keys.  *_opts override or add keys
    (None as a value removes a key).  A listener_opts entry with another name
    adds a listener on ports[name] (default brand "example").  brands and
    upstreams ({name: {key: value}}) add [brand] and [upstream] sections
    after the standard ones.  Returns a ConfigText.
    """
    relabel = {"log_level": "debug", "command_timeout": "5s", "data_timeout": "5s",
               "upstream_connect_timeout": "3s", "upstream_timeout": "10s",
               "handshake_timeout": "5s"}
    relabel.update(relabel_opts or {})
    lst = {"smtps": {"listen": f"{LOCALHOST}:{ports['smtps']}", "tls": "implicit", "brand": "example"},
           "submission": {"listen": f"{LOCALHOST}:{ports['submission']}", "tls": "starttls",
                          "brand": "example"}}
    for name, opts in (listener_opts or {}).items():
        if name not in lst:
            lst[name] = {"listen": f"{LOCALHOST}:{ports[name]}", "brand": "example"}
        lst[name].update(opts)
    brand = {"hostname": BRAND_HOST, "cert": os.path.join(certs, "brand.crt"),
             "key": os.path.join(certs, "brand.key"), "upstream": "test"}
    brand.update(brand_opts or {})
    up = {"host": LOCALHOST, "port": str(upstream_port), "tls": upstream_tls,
          "verify_name": UPSTREAM_VERIFY_NAME, "ca_file": os.path.join(certs, "ca.crt"),
          "hide": "mailgun.org, postgun.com, mailgun"}
    up.update(upstream_opts or {})
    cfg = ConfigText()
    cfg.section("[relabel]", relabel)
    for name, opts in lst.items():
        cfg.section(f'[listener "{name}"]', opts)
    cfg.section('[brand "example"]', brand)
    for name, opts in (brands or {}).items():
        cfg.section(f'[brand "{name}"]', opts)
    cfg.section('[upstream "test"]', up)
    for name, opts in (upstreams or {}).items():
        cfg.section(f'[upstream "{name}"]', opts)
    if metrics_opts is not None:
        cfg.section("[metrics]", metrics_opts)
    return cfg


def relabel_bin():
    path = os.environ.get("RELABEL_BIN", os.path.join(REPO_ROOT, "build", "relabel"))
    if not os.path.isabs(path):
        path = os.path.join(REPO_ROOT, path)
    return path


class Relabel:
    """The daemon: start() waits for 'relabel ready', stop() returns the exit code."""

    READY = "relabel ready"

    def __init__(self, binary, config_path, ports, wrapper=None):
        self.binary = binary
        self.wrapper = list(wrapper or [])  # e.g. ["valgrind", "--tool=memcheck", ...]
        self.config_path = config_path
        self.ports = ports
        self.proc = None
        self._lines = []
        self._lock = threading.Lock()
        self._ready = threading.Event()
        self._reader = None

    @property
    def pid(self):
        return self.proc.pid

    @property
    def log(self):
        with self._lock:
            return "".join(self._lines)

    def _read(self):
        for raw in iter(self.proc.stdout.readline, b""):
            line = raw.decode("utf-8", "replace")
            with self._lock:
                self._lines.append(line)
            if self.READY in line:
                self._ready.set()

    def start(self, timeout=TIMEOUT):
        self.proc = subprocess.Popen(self.wrapper + [self.binary, "-c", self.config_path],
                                     stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, cwd=REPO_ROOT)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        deadline = time.monotonic() + timeout
        while not self._ready.wait(0.02):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise AssertionError(
                    f"relabel did not log '{self.READY}' (exit code {self.proc.returncode}); "
                    f"log:\n{self.log}")
        return self

    def wait_log(self, pattern, timeout=TIMEOUT):
        rx = re.compile(pattern)
        return wait_for(lambda: rx.search(self.log), timeout, what=f"relabel log /{pattern}/")

    def rss_kb(self):
        with open(f"/proc/{self.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        return 0

    def fd_count(self):
        return len(os.listdir(f"/proc/{self.pid}/fd"))

    def stop(self, timeout=TIMEOUT):
        """SIGTERM, wait, SIGKILL if needed.  Returns (exit code, killed)."""
        if self.proc is None:
            return None, False
        killed = False
        if self.proc.poll() is None:
            try:
                os.kill(self.proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                killed = True
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout)
        if self._reader is not None:
            self._reader.join(TIMEOUT)
        self.proc.stdout.close()
        return self.proc.returncode, killed


def run_check(binary, config_path, timeout=TIMEOUT):
    return subprocess.run([binary, "--check", "-c", config_path], stdin=subprocess.DEVNULL,
                          capture_output=True, timeout=timeout, cwd=REPO_ROOT)


# --------------------------------------------------------------------------
# the client

class Reply:
    def __init__(self, lines):
        self.lines = lines  # raw lines without CRLF
        self.code = int(lines[-1][:3])

    @property
    def raw(self):
        return b"\r\n".join(self.lines) + b"\r\n"

    @property
    def first(self):
        return self.lines[0]

    def texts(self):
        """The text of each line (after "250-" / "250 ")."""
        return [l[4:].decode("latin-1") for l in self.lines]

    def __repr__(self):
        return f"<Reply {self.raw!r}>"


class Client:
    """
    Raw SMTP client for 127.0.0.1:port (or host, e.g. "::1").  tls="implicit"
    wraps at once; use starttls() for the other.  Every reply is kept in
    self.replies.  rcvbuf: SO_RCVBUF in bytes, set before connecting.
    source: the local address to connect from (another loopback address
    stands in for another client).  preamble: bytes sent right after
    connecting, before TLS and the greeting (a PROXY protocol header).
    """

    def __init__(self, port, ctx=None, tls=None, server_hostname=BRAND_HOST, timeout=TIMEOUT,
                 read_greeting=True, rcvbuf=None, host=LOCALHOST, source=None, preamble=b"",
                 session=None):
        self.ctx = ctx
        self.server_hostname = server_hostname
        self.session = session  # a TLS session to offer (resumption)
        if rcvbuf is None:
            sock = socket.create_connection((host, port), timeout=timeout,
                                            source_address=(source, 0) if source else None)
        else:
            # a small receive buffer (set before connecting, so the window is
            # small too): a client that does not read stalls the server fast
            family = socket.AF_INET6 if ":" in host else socket.AF_INET
            sock = socket.socket(family, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
            sock.settimeout(timeout)
            if source:
                sock.bind((source, 0))
            sock.connect((host, port))
        if preamble:
            sock.sendall(preamble)
        self.ls = LineSock(sock, timeout)
        self.replies = []
        self.tls = False
        if tls == "implicit":
            self.ls.wrap_client(ctx, server_hostname, session)
            self.tls = True
        self.greeting = self.read_reply() if read_greeting else None

    def read_reply(self):
        lines = []
        while True:
            line = self.ls.readline(limit=65536)
            if not line.endswith(b"\r\n"):
                raise AssertionError(f"reply line without CRLF: {line!r}")
            line = line[:-2]
            if len(line) < 3 or not line[:3].isdigit() or (len(line) > 3 and line[3:4] not in b" -"):
                raise AssertionError(f"malformed reply line: {line!r}")
            lines.append(line)
            if len(line) == 3 or line[3:4] == b" ":
                break
            if len(lines) > 200:
                raise AssertionError("reply too long")
        r = Reply(lines)
        self.replies.append(r)
        return r

    def send(self, data):
        self.ls.send(data)

    def cmd(self, line):
        if isinstance(line, str):
            line = line.encode()
        self.ls.send(line + b"\r\n")
        return self.read_reply()

    def ehlo(self, name="client.e2e.test"):
        return self.cmd(f"EHLO {name}")

    def starttls(self):
        r = self.cmd("STARTTLS")
        assert r.code == 220, r
        self.ls.wrap_client(self.ctx, self.server_hostname, self.session)
        self.tls = True
        return r

    def auth_plain(self, user=USER, password=PASSWORD):
        return self.cmd(f"AUTH PLAIN {plain_token(user, password)}")

    def open_data(self, mail_from="sender@example.net", rcpts=("rcpt@example.org",)):
        """MAIL, RCPT..., DATA, each answered as it should be (250s, then 354)."""
        r = self.cmd(f"MAIL FROM:<{mail_from}>")
        assert r.code == 250, r
        for rc in rcpts:
            r = self.cmd(f"RCPT TO:<{rc}>")
            assert r.code == 250, r
        r = self.cmd("DATA")
        assert r.code == 354, r

    def send_message(self, body, mail_from="sender@example.net", rcpts=("rcpt@example.org",)):
        """MAIL, RCPT..., DATA, body; returns the reply to the end of data."""
        self.open_data(mail_from, rcpts)
        self.send(stuff(body))
        return self.read_reply()

    def closed(self, timeout=TIMEOUT):
        """True once the server closed the connection (reads and drops data until then)."""
        self.ls.settimeout(timeout)
        try:
            while True:
                self.ls.buf.clear()
                self.ls._fill()
        except ConnectionClosed:
            return True
        except (socket.timeout, TimeoutError):
            return False

    def provider_leaks(self):
        """Every reply (greeting included) that names the provider."""
        return [r for r in self.replies if PROVIDER_RE.search(r.raw)]

    def close(self):
        self.ls.close()


def capabilities(reply):
    """EHLO reply -> {KEYWORD: "params"} for every line after the first."""
    caps = {}
    for t in reply.texts()[1:]:
        k, _, v = t.partition(" ")
        caps[k.upper()] = v
    return caps


def wait_closed(sock, timeout):
    """Reads until the peer closes; returns (everything read, seconds waited),
    or None if it is still open after `timeout` seconds."""
    sock.settimeout(0.2)
    got = b""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        try:
            chunk = sock.recv(65536)
        except (socket.timeout, TimeoutError, ssl.SSLWantReadError):
            continue
        except (ConnectionResetError, ssl.SSLError, OSError):
            return got, time.monotonic() - t0
        if not chunk:
            return got, time.monotonic() - t0
        got += chunk
    return None


def open_session(relabel, client_mode, ctx, ehlo=True):
    """A client at relay state: TLS up (implicit or STARTTLS), EHLO sent if ehlo."""
    if client_mode == "implicit":
        c = Client(relabel.ports["smtps"], ctx, tls="implicit")
    else:
        c = Client(relabel.ports["submission"], ctx)
        c.ehlo()
        c.starttls()
    assert c.greeting.code == 220, c.greeting
    if ehlo:
        r = c.ehlo()
        assert r.code == 250, r
    return c


def sha256(data):
    return hashlib.sha256(data).hexdigest()


# --------------------------------------------------------------------------
# smtplib with a host name to verify while connecting to 127.0.0.1



class NamedSMTP(smtplib.SMTP):
    """smtplib.SMTP that connects to 127.0.0.1 but uses `host` for SNI and the name check."""

    def _get_socket(self, host, port, timeout):
        return socket.create_connection((LOCALHOST, port), timeout)


class NamedSMTP_SSL(smtplib.SMTP_SSL):
    def _get_socket(self, host, port, timeout):
        sock = socket.create_connection((LOCALHOST, port), timeout)
        return self.context.wrap_socket(sock, server_hostname=host)


def run_tool(args, timeout=60, input=None):
    return subprocess.run(args, capture_output=True, timeout=timeout, input=input, cwd=REPO_ROOT)


def curl_send(port, url_scheme, host, ca, body_file, mail_from, rcpts, user=USER, password=PASSWORD,
              extra=()):
    args = ["curl", "-sS", "--max-time", "60", "--url", f"{url_scheme}://{host}:{port}",
            "--resolve", f"{host}:{port}:{LOCALHOST}", "--cacert", ca,
            "--mail-from", mail_from]
    for r in rcpts:
        args += ["--mail-rcpt", r]
    args += ["--upload-file", body_file]
    if user is not None:
        args += ["--user", f"{user}:{password}"]
    if url_scheme == "smtp":
        args += ["--ssl-reqd"]
    args += list(extra)
    return run_tool(args)


def swaks_send(port, tls, ca, sni, mail_from, rcpt, auth=None, header=None, user=USER,
               password=PASSWORD):
    args = ["swaks", "--server", LOCALHOST, "--port", str(port), "--from", mail_from,
            "--to", rcpt, "--timeout", "30", "--tls-verify", "--tls-ca-path", ca,
            "--tls-sni", sni]
    args += ["--tls-on-connect"] if tls == "implicit" else ["--tls"]
    if auth:
        args += ["--auth", auth, "--auth-user", user, "--auth-password", password]
    if header:
        args += ["--header", header]
    return run_tool(args)
