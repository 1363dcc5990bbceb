"""
Connection limits: max_connections and max_connections_per_ip, checked at
accept, before any TLS work.  Over a limit a STARTTLS listener answers
421 4.7.0 and closes; an implicit-TLS listener closes without a handshake.
Other clients are not affected, and a freed slot is usable again.
"""
import socket
import ssl

import pytest

import harness as h


def raw_connect(port, source="127.0.0.1"):
    s = socket.create_connection((h.LOCALHOST, port), timeout=h.TIMEOUT,
                                 source_address=(source, 0))
    return h.LineSock(s, h.TIMEOUT)


@pytest.mark.relabel_opts(relabel_opts={"max_connections_per_ip": "3"})
def test_per_ip_limit_on_starttls_listener(relay_st):
    rl = relay_st.relabel
    port = rl.ports["submission"]
    held = [h.Client(port, relay_st.ctx) for _ in range(3)]
    for c in held:
        assert c.greeting.code == 220
    over = h.Client(port)
    assert over.greeting.code == 421 and over.greeting.raw.startswith(b"421 4.7.0"), over.greeting
    assert over.closed()
    h.wait_for(lambda: "max_connections_per_ip=3" in rl.log, what="refusal log line")
    # Another address is counted on its own.
    other = h.LineSock(socket.create_connection((h.LOCALHOST, port), timeout=h.TIMEOUT,
                                                source_address=("127.0.0.2", 0)), h.TIMEOUT)
    assert other.readline().startswith(b"220 smtp.example.com")
    other.close()
    # A freed slot can be used again, and a held session still relays.
    held[0].cmd("QUIT")
    held[0].close()
    h.wait_for(lambda: rl.log.count("session end") >= 3, what="sessions ended")
    again = h.Client(port)
    assert again.greeting.code == 220, again.greeting
    c = held[1]
    assert c.ehlo().code == 250
    c.starttls()
    assert c.ehlo().code == 250
    assert c.auth_plain().code == 235
    assert c.send_message(b"within the limit\r\n").code == 250
    for x in held[1:] + [again]:
        x.close()


@pytest.mark.relabel_opts(relabel_opts={"max_connections": "2"})
def test_global_limit_on_implicit_listener(relay_ii, client_ctx):
    rl = relay_ii.relabel
    port = rl.ports["smtps"]
    held = [h.Client(port, client_ctx, tls="implicit") for _ in range(2)]
    for c in held:
        assert c.greeting.code == 220
    # The third is closed before any handshake: no plaintext reply, no TLS.
    s = socket.create_connection((h.LOCALHOST, port), timeout=h.TIMEOUT)
    with pytest.raises((ssl.SSLError, ConnectionError, OSError)):
        client_ctx.wrap_socket(s, server_hostname=h.BRAND_HOST).recv(1)
    s.close()
    h.wait_for(lambda: "max_connections=2" in rl.log, what="refusal log line")
    assert held[0].ehlo().code == 250
    assert held[0].auth_plain().code == 235
    assert held[0].send_message(b"still served\r\n").code == 250
    for c in held:
        c.close()


def test_burst_from_one_address_hits_the_default_limit(relay_st):
    # 300 connections from one address against the default limit of 50:
    # exactly 50 greeted, the rest refused with 421 4.7.0, and a client from
    # another address is served meanwhile.
    rl = relay_st.relabel
    port = rl.ports["submission"]
    socks, greeted, refused = [], 0, 0
    try:
        for _ in range(300):
            ls = raw_connect(port)
            socks.append(ls)
            line = ls.readline()
            if line.startswith(b"220 "):
                greeted += 1
            elif line.startswith(b"421 4.7.0"):
                refused += 1
        assert (greeted, refused) == (50, 250)
        other = raw_connect(port, source="127.0.0.2")
        assert other.readline().startswith(b"220 smtp.example.com")
        other.close()
    finally:
        for ls in socks:
            ls.close()
