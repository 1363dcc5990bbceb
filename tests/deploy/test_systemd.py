"""
The systemd unit as `meson install` writes it: `systemd-analyze verify`
accepts it (its commands exist and its Documentation= pages are the
installed man pages), `systemd-analyze security` rates its sandbox, and it
says what relabel needs: the capability for low ports and nothing else,
reload by SIGHUP after a check, and a stop timeout longer than the drain.
"""

import os
import re
import subprocess

import pytest

import ship


@pytest.fixture(scope="module")
def unit_text(installed):
    return open(os.path.join(installed, "usr", "lib", "systemd", "system",
                             "relabel.service")).read()


@pytest.fixture(scope="module")
def unit(unit_text):
    """{key: [values]} of the [Service] section."""
    out, section = {}, None
    for line in unit_text.splitlines():
        line = line.strip()
        if line.startswith("["):
            section = line
        elif line and not line.startswith("#") and section == "[Service]":
            key, _, value = line.partition("=")
            out.setdefault(key, []).append(value)
    return out


@pytest.fixture(scope="module")
def checkable_unit(installed, unit_text, tmp_path_factory):
    """The installed unit with its commands pointing into DESTDIR, so the
    checks see the files this build installed rather than the host's."""
    text = unit_text.replace("/usr/sbin/relabel", os.path.join(installed, "usr/sbin/relabel"))
    path = tmp_path_factory.mktemp("unit") / "relabel.service"
    path.write_text(text)
    return str(path)


def analyze(*args, installed):
    env = dict(os.environ, MANPATH=os.path.join(installed, "usr", "share", "man"),
               SYSTEMD_LOG_COLOR="0", SYSTEMD_PAGER="")
    return subprocess.run(["systemd-analyze", *args], capture_output=True, text=True,
                          timeout=120, env=env)


def test_systemd_analyze_verify_accepts_the_unit(installed, checkable_unit):
    res = analyze("verify", checkable_unit, installed=installed)
    assert res.returncode == 0 and res.stderr.strip() == "", res.stderr


def test_sandbox_exposure_is_low(installed, checkable_unit):
    # --threshold is in tenths: 20 means an overall exposure of at most 2.0
    # on systemd's 0 (locked down) to 10 (unprotected) scale.
    res = analyze("security", "--offline=true", "--threshold=20", checkable_unit,
                  installed=installed)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr
    level = re.search(r"Overall exposure level for \S+: ([\d.]+)", res.stdout)
    assert level and float(level.group(1)) <= 2.0, res.stdout[-500:]


def test_one_capability_and_no_way_to_gain_more(unit):
    assert unit["AmbientCapabilities"] == ["CAP_NET_BIND_SERVICE"]
    assert unit["CapabilityBoundingSet"] == ["CAP_NET_BIND_SERVICE"]
    assert unit["NoNewPrivileges"] == ["yes"]
    assert unit["User"] == ["relabel"] and unit["DynamicUser"] == ["yes"]
    for key, value in (("ProtectSystem", "strict"), ("ProtectHome", "yes"),
                       ("PrivateTmp", "yes"), ("PrivateDevices", "yes"),
                       ("RestrictNamespaces", "yes"), ("MemoryDenyWriteExecute", "yes")):
        assert unit[key] == [value], key
    assert set(unit["RestrictAddressFamilies"][0].split()) <= {"AF_INET", "AF_INET6", "AF_UNIX"}
    assert "@system-service" in unit["SystemCallFilter"]


def test_reload_checks_then_signals(unit):
    reload = unit["ExecReload"]
    assert reload[0].endswith("relabel --check -c /etc/relabel/relabel.ini")
    assert reload[-1] == "/bin/kill -HUP $MAINPID"


def test_stop_waits_longer_than_the_drain(unit):
    example = ship.parse_ini(open(os.path.join(ship.REPO, "config", "relabel.ini")).read())
    drain = ship.duration_seconds(example["relabel"]["drain_timeout"])
    assert unit.get("KillSignal", ["SIGTERM"]) == ["SIGTERM"]
    stop = ship.duration_seconds(unit["TimeoutStopSec"][0])
    assert stop > drain, f"TimeoutStopSec {stop}s must exceed drain_timeout {drain}s"
    # Descriptors for the default max_connections (two per session).
    nofile = int(unit["LimitNOFILE"][0].split(":")[0])
    assert nofile > 2 * 2000
