"""relabel --check: a good config passes, bad ones print FILE:LINE: and fail; -c never half-starts."""

import os
import re

import pytest

import harness as h


def write(tmp_path, cfg, name="relabel.ini"):
    p = tmp_path / name
    p.write_text(cfg.text())
    return str(p)


def base(certs, **kw):
    return h.relabel_config(certs, 2465, "implicit", {"smtps": 2001, "submission": 2002}, **kw)


def test_check_good_config(certs, relabel_binary, tmp_path):
    path = write(tmp_path, base(certs))
    res = h.run_check(relabel_binary, path)
    out = (res.stdout + res.stderr).decode("utf-8", "replace")
    assert res.returncode == 0, out
    for word in ("smtps", "submission", "example", "test", "127.0.0.1:2001", "smtp.example.com"):
        assert word in out, (word, out)


def assert_error_at(relabel_binary, path, lines):
    res = h.run_check(relabel_binary, path)
    out = (res.stdout + res.stderr).decode("utf-8", "replace")
    assert res.returncode != 0, out
    found = [int(m.group(1)) for m in re.finditer(rf"^{re.escape(path)}:(\d+): \S", out, re.M)]
    assert set(found) & set(lines), f"expected {path}:{lines}: in:\n{out}"
    return out


@pytest.mark.parametrize("section,key,value", [
    ("[relabel]", "no_such_key", "1"),
    ('[listener "smtps"]', "tls_mode", "implicit"),
    ('[brand "example"]', "hostnme", "smtp.example.com"),
    ('[upstream "test"]', "verify", "yes"),
])
def test_check_unknown_key(certs, relabel_binary, tmp_path, section, key, value):
    good = base(certs)
    cfg = base(certs, **{
        "[relabel]": {"relabel_opts": {key: value}},
        '[listener "smtps"]': {"listener_opts": {"smtps": {key: value}}},
        '[brand "example"]': {"brand_opts": {key: value}},
        '[upstream "test"]': {"upstream_opts": {key: value}},
    }[section])
    assert good.text() != cfg.text()
    path = write(tmp_path, cfg)
    assert_error_at(relabel_binary, path, [cfg.line_of(section, key)])


@pytest.mark.parametrize("section,opts,key", [
    ("[relabel]", {"relabel_opts": {"command_timeout": "5 parsecs"}}, "command_timeout"),
    ('[listener "smtps"]', {"listener_opts": {"smtps": {"tls": "sometimes"}}}, "tls"),
    ('[listener "smtps"]', {"listener_opts": {"smtps": {"listen": "127.0.0.1:99999"}}}, "listen"),
    ('[listener "smtps"]', {"listener_opts": {"smtps": {"brand": "nosuchbrand"}}}, "brand"),
    ('[brand "example"]', {"brand_opts": {"upstream": "nosuchupstream"}}, "upstream"),
    ("[relabel]", {"relabel_opts": {"bare_newline": "maybe"}}, "bare_newline"),
])
def test_check_bad_values(certs, relabel_binary, tmp_path, section, opts, key):
    cfg = base(certs, **opts)
    path = write(tmp_path, cfg)
    assert_error_at(relabel_binary, path, [cfg.line_of(section, key)])


def test_check_key_does_not_match_cert(certs, relabel_binary, tmp_path):
    cfg = base(certs, brand_opts={"key": os.path.join(certs, "mismatch.key")})
    path = write(tmp_path, cfg)
    sec = '[brand "example"]'
    assert_error_at(relabel_binary, path, [cfg.line_of(sec, "key"), cfg.line_of(sec, "cert")])


def test_check_expired_brand_certificate(certs, relabel_binary, tmp_path):
    cfg = base(certs, brand_opts={"cert": os.path.join(certs, "expired.crt"),
                                  "key": os.path.join(certs, "expired.key")})
    path = write(tmp_path, cfg)
    sec = '[brand "example"]'
    assert_error_at(relabel_binary, path, [cfg.line_of(sec, "cert"), cfg.line_of(sec, "key")])


def test_check_missing_ca_file(certs, relabel_binary, tmp_path):
    cfg = base(certs, upstream_opts={"ca_file": os.path.join(certs, "no-such-ca.crt")})
    path = write(tmp_path, cfg)
    assert_error_at(relabel_binary, path, [cfg.line_of('[upstream "test"]', "ca_file")])


def test_check_reports_every_problem(certs, relabel_binary, tmp_path):
    cfg = base(certs, relabel_opts={"no_such_key": "1"}, upstream_opts={"also_unknown": "2"})
    path = write(tmp_path, cfg)
    out = assert_error_at(relabel_binary, path, [cfg.line_of("[relabel]", "no_such_key")])
    line = cfg.line_of('[upstream "test"]', "also_unknown")
    assert f"{path}:{line}:" in out


def test_bad_config_never_starts(certs, relabel_binary, tmp_path):
    port = h.free_port()
    cfg = h.relabel_config(certs, 2465, "implicit", {"smtps": port, "submission": h.free_port()},
                           relabel_opts={"no_such_key": "1"})
    path = write(tmp_path, cfg)
    r = h.Relabel(relabel_binary, path, {})
    with pytest.raises(AssertionError, match="did not log"):
        r.start(timeout=5)
    assert r.proc.returncode not in (None, 0)
    # and nothing is listening
    with pytest.raises(OSError):
        h.socket.create_connection((h.LOCALHOST, port), timeout=1).close()
