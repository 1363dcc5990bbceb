#!/usr/bin/env python3
"""Writes the seed corpus of fuzz_session (tests/fuzz/session/corpus/).

Each seed is a complete dialogue in the op encoding of fuzz_session.c
(README.md has the table).  Run from anywhere:
    python3 tests/fuzz/session/make_corpus.py
"""
import os

# header flag bits (byte 0)
IMPLICIT, REQUIRE_TLS, BARE_REJECT, SIZE_2000, UP_STARTTLS, DEBUG, NO_SNI, JSON = (
    1, 2, 4, 8, 16, 32, 64, 128)

# byte 2: max_errors = 3 + b % 8; this bit: the client's SNI names brand b
BRAND_B = 8

# client canned commands (cl_canned[] in fuzz_session.c)
C = dict(EHLO=0, STARTTLS=1, AUTH_PLAIN_IR=2, AUTH_LOGIN=3, AUTH_PLAIN=4, AUTH_RESP=5,
         MAIL=6, RCPT=7, DATA=8, BODY=9, EOD=10, QUIT=11, NOOP=12, RSET=13, BDAT=14,
         HELO=15, SMUGGLE_LF=16, SMUGGLE_CR=17, DOT=18, MAIL_SIZE=19, AUTH_LOGIN_IR=20,
         BARE_LF=21, NUL=22, LONG=23, VRFY=24, PIPE_GROUP=25, STARTTLS_INJECT=26, STAR=27,
         MAIL_2RCPT=28, EOD_QUIT=29, DATA_LF_DOT=30, EHLO_MAILGUN=31, LONG_OPEN=32)
# upstream canned replies (up_canned[])
U = dict(GREET=0, EHLO=1, P334_EMPTY=2, P334_USER=3, P334_PASS=4, R235=5, R535=6, R250=7,
         QUEUED=8, R354=9, R421=10, R221=11, GARBAGE=12, R550=13, R452=14, MULTI=15,
         TLS220=16, R503=17, TWICE=18, INJECT=19, R554=20, R501=21)


def cl(name):
    return bytes([0, C[name]])


def cl_raw(data):
    return bytes([2, len(data)]) + data


def batch(*names):
    return bytes([3, len(names) - 2]) + bytes(C[n] for n in names)


AUTO = bytes([4])


def up(name):
    return bytes([6, U[name]])


def up_raw(data):
    return bytes([7, len(data)]) + data


def pend(sel=0, outcome=1):
    return bytes([8, sel, outcome])


LOOP = bytes([10])


def cl_eof():
    return bytes([11, 0])


def up_eof():
    return bytes([12, 0])


def up_err():
    return bytes([12, 1])


def timeout(upstream):
    return bytes([13, 1 if upstream else 0])


def block(upstream):
    return bytes([14, 1 if upstream else 0])


def head(flags, max_line=128, max_errors=5):
    return bytes([flags, max_line, max_errors])


def dialogue(*parts):
    return b"".join(parts)


# The upstream comes up: resolve, connect, TLS, greeting (implicit TLS).
UP_READY = LOOP + AUTO + LOOP
# After a client TLS handshake on an implicit listener.
MESSAGE = (cl("MAIL") + AUTO + cl("RCPT") + AUTO + cl("DATA") + AUTO + cl("BODY") +
           cl("EOD") + AUTO)

seeds = {
    "implicit_happy": dialogue(
        head(IMPLICIT), LOOP, cl("EHLO"), UP_READY, AUTO, cl("AUTH_PLAIN_IR"), AUTO,
        MESSAGE, cl("QUIT"), AUTO, LOOP),
    "implicit_debug_auth_login": dialogue(
        head(IMPLICIT | DEBUG), LOOP, cl("EHLO"), UP_READY, AUTO, cl("AUTH_LOGIN"), AUTO,
        cl("AUTH_RESP"), AUTO, cl("AUTH_RESP"), AUTO, MESSAGE, cl("QUIT"), AUTO),
    "starttls_happy": dialogue(
        head(REQUIRE_TLS), cl("EHLO"), cl("NOOP"), cl("MAIL"), cl("STARTTLS"), LOOP,
        cl("EHLO"), UP_READY, AUTO, cl("AUTH_PLAIN"), AUTO, cl("AUTH_RESP"), AUTO,
        MESSAGE, cl("QUIT"), AUTO),
    "starttls_upstream_starttls": dialogue(
        head(REQUIRE_TLS | UP_STARTTLS | DEBUG), cl("EHLO"), cl("STARTTLS"), LOOP,
        cl("EHLO"), LOOP, AUTO, AUTO, AUTO, LOOP, AUTO, MESSAGE, cl("QUIT"), AUTO),
    "plaintext_relay_auth": dialogue(
        head(DEBUG), cl("EHLO"), UP_READY, AUTO, cl("AUTH_PLAIN_IR"), AUTO,
        cl("AUTH_LOGIN"), AUTO, cl("AUTH_RESP"), AUTO, cl("AUTH_RESP"), AUTO, MESSAGE,
        cl("STARTTLS"), LOOP, cl("EHLO"), AUTO, cl("QUIT"), AUTO),
    "pipelining": dialogue(
        head(IMPLICIT), LOOP, cl("EHLO"), UP_READY, AUTO,
        batch("MAIL", "RCPT", "RCPT", "DATA"), AUTO, AUTO, AUTO, AUTO, cl("BODY"),
        batch("EOD_QUIT", "NOOP"), AUTO, AUTO, AUTO),
    "starttls_injection": dialogue(
        head(REQUIRE_TLS), cl("EHLO"), cl("STARTTLS_INJECT"), LOOP),
    "starttls_injection_relay": dialogue(
        head(0), cl("EHLO"), UP_READY, AUTO, cl("STARTTLS_INJECT"), LOOP),
    "smuggling_body": dialogue(
        head(IMPLICIT), LOOP, cl("EHLO"), UP_READY, AUTO, cl("MAIL"), AUTO, cl("RCPT"),
        AUTO, cl("DATA"), AUTO, cl("SMUGGLE_LF"), cl("SMUGGLE_CR"), cl("BARE_LF"),
        cl("DOT"), cl("EOD"), AUTO, AUTO, AUTO),
    "smuggling_reject": dialogue(
        head(IMPLICIT | BARE_REJECT | SIZE_2000), LOOP, cl("EHLO"), UP_READY, AUTO,
        cl("MAIL_SIZE"), cl("MAIL"), AUTO, cl("RCPT"), AUTO, cl("DATA"), AUTO,
        cl("SMUGGLE_LF"), cl("EOD")),
    "upstream_lost_mid_data": dialogue(
        head(IMPLICIT), LOOP, cl("EHLO"), UP_READY, AUTO, cl("MAIL"), AUTO, cl("RCPT"),
        AUTO, cl("DATA"), AUTO, cl("BODY"), up_eof(), cl("EOD")),
    "upstream_lost_after_eod": dialogue(
        head(IMPLICIT), LOOP, cl("EHLO"), UP_READY, AUTO, MESSAGE[:-1], up_err(),
        cl("QUIT")),
    "backpressure": dialogue(
        head(IMPLICIT), LOOP, cl("EHLO"), UP_READY, AUTO, cl("MAIL"), AUTO, cl("RCPT"),
        AUTO, cl("DATA"), AUTO, block(True), cl("BODY"), cl("BODY"), block(True), LOOP,
        cl("EOD"), AUTO),
    "response_injection": dialogue(
        head(UP_STARTTLS | IMPLICIT), LOOP, cl("EHLO"), LOOP, up("GREET"), up("EHLO"),
        up("INJECT"), LOOP),
    "provider_names": dialogue(
        head(IMPLICIT), LOOP, cl("EHLO_MAILGUN"), UP_READY, up("MULTI"), cl("VRFY"),
        up("R554"), cl("NOOP"), up("R421")),
    "long_line_and_errors": dialogue(
        head(IMPLICIT, 0, 0), LOOP, cl("EHLO"), UP_READY, AUTO, cl("LONG"), cl("NUL"),
        cl("BDAT"), cl("NOOP"), AUTO),
    "long_line_split_and_shutdown": dialogue(
        head(IMPLICIT), LOOP, cl("EHLO"), UP_READY, AUTO, cl("LONG_OPEN"), cl("LONG_OPEN"),
        cl("NOOP"), AUTO, cl("MAIL"), bytes([15, 2])),
    "timeouts": dialogue(
        head(IMPLICIT), LOOP, cl("EHLO"), UP_READY, AUTO, cl("MAIL"), timeout(True),
        cl("RCPT"), timeout(False)),
    # The client's SNI names the second brand (byte 2 bit 0x08): its name
    # after TLS, and in the plaintext relay case a move to its upstream.
    "brand_b_implicit": dialogue(
        head(IMPLICIT, 128, 5 | BRAND_B), LOOP, cl("EHLO"), UP_READY, AUTO,
        cl("AUTH_PLAIN_IR"), AUTO, MESSAGE, cl("QUIT"), AUTO, LOOP),
    "brand_b_starttls": dialogue(
        head(REQUIRE_TLS, 128, 5 | BRAND_B), cl("EHLO"), cl("STARTTLS"), LOOP, cl("EHLO"),
        UP_READY, AUTO, MESSAGE, cl("QUIT"), AUTO),
    "brand_b_plaintext_then_starttls": dialogue(
        head(DEBUG, 128, 5 | BRAND_B), cl("EHLO"), UP_READY, AUTO, cl("STARTTLS"), LOOP,
        cl("EHLO"), UP_READY, AUTO, MESSAGE, cl("QUIT"), AUTO, LOOP),
    "raw_dialogue": dialogue(
        head(IMPLICIT), LOOP, cl_raw(b"ehlo raw\r\n"), UP_READY,
        up_raw(b"550-x\r\n550 no\r\n"), cl_raw(b"MAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\n"),
        AUTO, AUTO, cl_raw(b"DATA\n.\r\n"), AUTO, AUTO),
}

here = os.path.dirname(os.path.abspath(__file__))
out = os.path.join(here, "corpus")
os.makedirs(out, exist_ok=True)
for name, data in seeds.items():
    with open(os.path.join(out, name), "wb") as f:
        f.write(data)
print(f"{len(seeds)} seeds in {out}")
