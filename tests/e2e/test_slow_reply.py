"""
A client waiting for a reply is not idle: the upstream's reply to the end
of data may take longer than the client's command timeout (RFC 5321
§4.5.3.2 gives it 10 minutes) and must still reach the client.
"""
import harness as h


def test_slow_final_reply_outlives_command_timeout(upstream_factory, relabel_factory, client_ctx):
    up = upstream_factory(tls="implicit", data_delay=2.5)
    rl = relabel_factory(up.port, "implicit",
                         relabel_opts={"command_timeout": "1s", "upstream_timeout": "10s"})
    c = h.open_session(rl, "implicit", client_ctx)
    assert c.auth_plain().code == 235
    r = c.send_message(b"Subject: slow\r\n\r\nbody\r\n")
    assert r.code == 250, r
    (m,) = up.recorder.wait_messages(1)
    assert m.data == b"Subject: slow\r\n\r\nbody\r\n"
    # Idle again after the reply: the command timeout applies once more.
    r = c.read_reply()
    assert r.code == 421 and b"4.4.2" in r.raw, r
    assert c.closed()


def test_upstream_timeout_still_applies(upstream_factory, relabel_factory, client_ctx):
    up = upstream_factory(tls="implicit", data_delay=5)
    rl = relabel_factory(up.port, "implicit",
                         relabel_opts={"command_timeout": "1s", "upstream_timeout": "2s"})
    c = h.open_session(rl, "implicit", client_ctx)
    assert c.auth_plain().code == 235
    r = c.send_message(b"Subject: too slow\r\n\r\nbody\r\n")
    assert r.code == 421 and b"4.4.2" in r.raw, r
    assert c.closed()
