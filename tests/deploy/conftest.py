"""
Fixtures for the deployment tests (tests/deploy): the image, the manifests,
the unit file, the installed tree and the man pages.

The test certificates, the client TLS context and the aiosmtpd upstream are
the end-to-end suite's own fixtures (tests/e2e/conftest.py), reused here.
"""

import importlib.util
import os
import subprocess
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
E2E = os.path.join(os.path.dirname(HERE), "e2e")
sys.path.insert(0, E2E)
sys.path.insert(0, HERE)

_spec = importlib.util.spec_from_file_location("e2e_conftest", os.path.join(E2E, "conftest.py"))
_e2e = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_e2e)

certs = _e2e.certs
client_ctx = _e2e.client_ctx
upstream_factory = _e2e.upstream_factory


def run(*args, timeout=300, **kw):
    """Runs a command; fails the test with its output unless it exits 0."""
    res = subprocess.run(list(args), capture_output=True, text=True, timeout=timeout, **kw)
    assert res.returncode == 0, \
        f"{' '.join(args)} exited {res.returncode}:\n{res.stdout}\n{res.stderr}"
    return res


@pytest.fixture(scope="session")
def installed(tmp_path_factory):
    """DESTDIR of a `meson install` with prefix /usr and sysconfdir /etc,
    man pages required; the build directory is its sibling "build"."""
    import ship

    top = tmp_path_factory.mktemp("install")
    build, dest = str(top / "build"), str(top / "dest")
    run("meson", "setup", build, ship.REPO, "--prefix=/usr", "--sysconfdir=/etc",
        "--buildtype=plain", "-Dman=enabled")
    # Only what is installed: the test programs and benchmarks are not.
    run("ninja", "-C", build, "relabel", "relabel.8", "relabel.ini.5")
    run("meson", "install", "-C", build, "--no-rebuild", "--destdir", dest)
    return dest
