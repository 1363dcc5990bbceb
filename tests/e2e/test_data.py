"""DATA: smuggling, bare newlines, NUL, long lines, clients vanishing mid-DATA, 50 MB."""

import os
import threading
import time

import pytest

import harness as h

SMUGGLE_ENDINGS = {
    "lf-dot-lf": b"\n.\n",
    "crlf-dot-lf": b"\r\n.\n",
    "lf-dot-crlf": b"\n.\r\n",
    "cr-dot-crlf": b"\r.\r\n",
    "cr-dot-cr": b"\r.\r",
}
SMUGGLED = (b"MAIL FROM:<evil@x.example>\r\nRCPT TO:<victim@y.example>\r\nDATA\r\n"
            b"Subject: smuggled\r\n\r\nevil body\r\n")


def open_data(c):
    assert c.auth_plain().code == 235
    assert c.cmd("MAIL FROM:<honest@example.net>").code == 250
    assert c.cmd("RCPT TO:<rcpt@example.org>").code == 250
    r = c.cmd("DATA")
    assert r.code == 354, r
    return r


@pytest.mark.parametrize("ending", list(SMUGGLE_ENDINGS), ids=list(SMUGGLE_ENDINGS))
def test_smuggling_never_makes_second_message(relay, ending):
    c = relay.session()
    open_data(c)
    c.send(b"Subject: honest\r\n\r\nhello" + SMUGGLE_ENDINGS[ending] + SMUGGLED + b".\r\n")
    r = c.read_reply()
    assert r.code in (250,) or 500 <= r.code < 600, r
    q = c.cmd("QUIT")
    assert q.code == 221
    assert c.closed()
    h.wait_for(relay.upstream.recorder.all_closed, what="upstream session end")
    msgs = relay.upstream.messages
    assert len(msgs) <= 1, msgs
    assert not any(m.mail_from == "evil@x.example" for m in msgs)
    mails = [x.line for x in relay.upstream.recorder.commands if x.verb == "MAIL"]
    assert mails == [b"MAIL FROM:<honest@example.net>\r\n"]
    for m in msgs:
        assert not h.has_bare_cr_lf(m.data), m.data
        assert b"\0" not in m.data
    if r.code == 250:
        (m,) = msgs
        # the whole thing was one message: the would-be commands are its text
        assert b"evil body" in m.data and m.mail_from == "honest@example.net"


@pytest.mark.parametrize("ending", list(SMUGGLE_ENDINGS), ids=list(SMUGGLE_ENDINGS))
def test_smuggling_with_large_body_run(relay, ending):
    # A bare ending followed, in the same read, by more than 8 KiB of body:
    # the scanner emits the inserted CRLF and dot as small pieces and the
    # rest as one large run, which must not overtake them on the way
    # upstream (found by the session fuzzer: the upstream saw an empty
    # message and then the smuggled commands).
    c = relay.session()
    open_data(c)
    filler = b"".join(b"%04d" % i + b"x" * 694 + b"\r\n" for i in range(12))
    c.send(b"a" + SMUGGLE_ENDINGS[ending] + SMUGGLED + filler + b".\r\n")
    r = c.read_reply()
    assert r.code == 250, r
    assert c.cmd("QUIT").code == 221
    h.wait_for(relay.upstream.recorder.all_closed, what="upstream session end")
    (m,) = relay.upstream.messages  # one message, not an empty one plus a smuggled one
    assert not h.has_bare_cr_lf(m.data), m.data[:200]
    assert m.mail_from == "honest@example.net"
    assert b"MAIL FROM:<evil@x.example>" in m.data
    assert m.data.endswith(filler)


@pytest.mark.parametrize("body,expected", [
    (b"a\nb\r\n", b"a\r\nb\r\n"),
    (b"a\rb\r\n", b"a\r\nb\r\n"),
    (b"one\r\ntwo\nthree\rfour\r\n", b"one\r\ntwo\r\nthree\r\nfour\r\n"),
], ids=["bare-lf", "bare-cr", "mixed"])
def test_bare_newlines_normalised(relay_ii, body, expected):
    c = relay_ii.session()
    open_data(c)
    c.send(body + b".\r\n")
    assert c.read_reply().code == 250
    (m,) = relay_ii.upstream.recorder.wait_messages(1)
    assert m.data == expected


def test_bare_lf_dot_is_restuffed(relay_ii):
    c = relay_ii.session()
    open_data(c)
    c.send(b"top\n.\nbottom\r\n.\r\n")
    assert c.read_reply().code == 250
    (m,) = relay_ii.upstream.recorder.wait_messages(1)
    # the lone dot is content (re-stuffed on the way up), not the end of data
    assert m.data in (b"top\r\n.\r\nbottom\r\n", b"top\r\n\r\nbottom\r\n"), m.data


@pytest.mark.relabel_opts(relabel_opts={"bare_newline": "reject"})
@pytest.mark.parametrize("ending", list(SMUGGLE_ENDINGS), ids=list(SMUGGLE_ENDINGS))
def test_bare_newline_reject(relay_ii, ending):
    c = relay_ii.session()
    open_data(c)
    c.send(b"Subject: x\r\n\r\nhello" + SMUGGLE_ENDINGS[ending] + SMUGGLED + b".\r\n")
    r = c.read_reply()
    assert 500 <= r.code < 600, r
    try:
        c.cmd("QUIT")
    except (h.ConnectionClosed, OSError):
        pass
    c.close()
    h.wait_for(relay_ii.upstream.recorder.all_closed, what="upstream session end")
    assert relay_ii.upstream.messages == []


@pytest.mark.relabel_opts(relabel_opts={"bare_newline": "reject"})
def test_bare_newline_reject_keeps_clean_mail(relay_ii):
    c = relay_ii.session()
    assert c.auth_plain().code == 235
    assert c.send_message(b"clean\r\n.dot\r\n").code == 250
    (m,) = relay_ii.upstream.recorder.wait_messages(1)
    assert m.data == b"clean\r\n.dot\r\n"


def test_nul_in_body_is_refused(relay_ii):
    c = relay_ii.session()
    open_data(c)
    c.send(b"Subject: nul\r\n\r\nbefore\0after\r\n.\r\n")
    r = c.read_reply()
    assert 500 <= r.code < 600, r
    try:
        c.cmd("QUIT")
    except (h.ConnectionClosed, OSError):
        pass
    c.close()
    h.wait_for(relay_ii.upstream.recorder.all_closed, what="upstream session end")
    assert relay_ii.upstream.messages == []


@pytest.mark.parametrize("length", [5000, 70000])
@pytest.mark.parametrize("where", ["pre-tls", "relay"])
def test_command_line_too_long(relay_st, where, length):
    c = relay_st.connect()
    if where == "relay":
        c.ehlo()
        c.starttls()
        c.ehlo()
    r = c.cmd("NOOP " + "x" * length)
    assert r.code == 500 and r.raw.startswith(b"500 5.5.2"), r
    assert not relay_st.upstream.recorder.saw("NOOP")
    assert c.cmd("NOOP").code == 250  # the session goes on


@pytest.mark.parametrize("cut", ["mid-line", "after-crlf", "after-crlf-dot"])
def test_client_gone_mid_data_delivers_nothing(relay, cut):
    c = relay.session()
    open_data(c)
    body = h.make_body(256 * 1024)
    half = body[: body.index(b"\r\n", len(body) // 2) + 2]  # ends with CRLF
    wire = h.stuff_partial(half)
    if cut == "mid-line":
        wire = wire[:-10]
    elif cut == "after-crlf-dot":
        wire += b"."
    c.send(wire)
    c.close()
    h.wait_for(lambda: relay.upstream.recorder.conns and relay.upstream.recorder.all_closed(),
               what="relabel to drop the upstream session")
    assert relay.upstream.messages == []


@pytest.mark.relabel_opts(relabel_opts={"data_timeout": "1s"})
def test_client_timeout_mid_data_delivers_nothing(relay_ii):
    c = relay_ii.session()
    open_data(c)
    c.send(b"Subject: slow client\r\n\r\nfirst half\r\n")
    t0 = time.monotonic()
    assert c.closed(timeout=8), "relabel kept the idle DATA session open"
    assert time.monotonic() - t0 < 8
    h.wait_for(relay_ii.upstream.recorder.all_closed, what="upstream session end")
    assert relay_ii.upstream.messages == []
    if c.replies[-1].code != 354:
        assert c.replies[-1].code == 421


def test_data_354_is_upstream_reply(relay):
    c = relay.session()
    r = open_data(c)
    assert r.code == 354
    assert not c.provider_leaks()


@pytest.mark.slow
def test_50mb_slow_upstream_bounded_memory(scripted_factory, relabel_factory, client_ctx):
    rate = 16 * 1024 * 1024
    up = scripted_factory(tls="implicit", data_mode="slow", slow_rate=rate)
    rl = relabel_factory(up.port, "implicit", relabel_opts={"data_timeout": "60s",
                                                            "upstream_timeout": "60s",
                                                            "log_level": "info"})
    body = h.make_body(50 * 1024 * 1024, b"50MB", line_len=998)
    c = h.open_session(rl, "implicit", client_ctx)
    peak = [rl.rss_kb()]
    done = threading.Event()

    def sample():
        while not done.wait(0.05):
            try:
                peak[0] = max(peak[0], rl.rss_kb())
            except OSError:
                return

    t = threading.Thread(target=sample, daemon=True)
    t.start()
    try:
        c.ls.settimeout(120)
        assert c.auth_plain().code == 235
        t0 = time.monotonic()
        r = c.send_message(body)
        elapsed = time.monotonic() - t0
    finally:
        done.set()
        t.join(5)
    assert r.code == 250, r
    (m,) = up.recorder.wait_messages(1)
    assert len(m.data) == len(body)
    assert h.sha256(m.data) == h.sha256(body)
    assert elapsed >= len(body) / rate * 0.9  # the upstream really was the bottleneck
    print(f"50 MB in {elapsed:.1f}s, relabel peak RSS {peak[0]} kB")
    # AddressSanitizer keeps freed memory in quarantine and adds shadow
    # memory, so RSS says nothing about relabel's buffers there; the normal
    # build carries the memory check.
    if not os.environ.get("RELABEL_SANITIZED"):
        assert peak[0] < 40 * 1024, f"relabel RSS peaked at {peak[0]} kB"
