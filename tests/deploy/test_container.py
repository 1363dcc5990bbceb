"""
The container image, built from the Dockerfile with podman (see
podman/build-image.sh: base images from mmdebstrap, no registry) and run
the way the README and the Kubernetes manifests run it: non-root, only
NET_BIND_SERVICE, no new privileges, read-only root, configuration at
/etc/relabel/relabel.ini, certificate and key from a volume, logs on
standard error.

With the host's network (loopback addresses only) it relays a message from
smtplib over TLS to the end-to-end suite's aiosmtpd Mailgun look-alike,
answers /healthz and /readyz, passes its own HEALTHCHECK, and on SIGTERM
lets a message in progress finish, then exits 0.  The tests run in file
order against one container; the last one stops it.
"""

import os
import random
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request

import pytest

import harness as h
import ship
from ship import podman

UID, GID = (int(x) for x in ship.image_facts()["user"].split(":"))
CAP_NET_BIND_SERVICE = 10


@pytest.fixture(scope="module")
def image():
    """Builds the image under a tag of its own; removed afterwards."""
    tag = f"localhost/relabel:test-{os.getpid()}"
    script = os.path.join(ship.PODMAN_DIR, "build-image.sh")
    start = time.monotonic()
    res = subprocess.run(["bash", script, tag], capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, f"build-image.sh failed:\n{res.stdout}\n{res.stderr[-6000:]}"
    size = int(res.stdout.strip().splitlines()[-1])
    # Shown with -s, and in the log of every run: the build's timings and size.
    print(f"\n{res.stderr.strip()}\nimage {tag}: {size / 1e6:.1f} MB, "
          f"{time.monotonic() - start:.0f}s to build")
    yield tag
    podman("rmi", "-f", tag, check=False)


@pytest.fixture(scope="module")
def volumes(certs, tmp_path_factory):
    """The certificate volume as the README and the Secret lay it out
    (tls.crt, tls.key readable by the image's group only), and the test
    CA for the upstream."""
    top = tmp_path_factory.mktemp("volumes")
    tls, ca = top / "tls", top / "ca"
    tls.mkdir()
    ca.mkdir()
    shutil.copy(os.path.join(certs, "brand.crt"), tls / "tls.crt")
    shutil.copy(os.path.join(certs, "brand.key"), tls / "tls.key")
    shutil.copy(os.path.join(certs, "ca.crt"), ca / "ca.crt")
    os.chmod(tls / "tls.crt", 0o644)
    os.chown(tls / "tls.key", 0, GID)
    os.chmod(tls / "tls.key", 0o640)
    for d in (top, tls, ca):
        os.chmod(d, 0o755)
    return {"tls": str(tls), "ca": str(ca), "top": top}


def low_port():
    """A free port below 1024 on 127.0.0.1, which only NET_BIND_SERVICE
    lets the container's non-root user bind."""
    for port in random.sample(range(700, 1000), 300):
        with socket.socket() as s:
            try:
                s.bind((h.LOCALHOST, port))
                return port
            except OSError:
                continue
    raise AssertionError("no free port below 1024 on 127.0.0.1")


class Container:
    def __init__(self, name, ports, metrics_port):
        self.name = name
        self.ports = ports
        self.metrics_port = metrics_port

    def logs(self):
        res = podman("logs", self.name, check=False)
        return res.stdout + res.stderr

    def inspect(self, fmt):
        return podman("inspect", "--format", fmt, self.name).stdout.strip()

    def get(self, path):
        """(status, body) of an HTTP GET to the metrics endpoint."""
        url = f"http://{h.LOCALHOST}:{self.metrics_port}{path}"
        direct = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        try:
            with direct.open(url, timeout=h.TIMEOUT) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()


@pytest.fixture(scope="module")
def upstream(certs):
    up = h.AioUpstream(certs, tls="implicit")
    up.start()
    yield up
    up.stop()


@pytest.fixture(scope="module")
def container(image, volumes, upstream, certs):
    ports = {"smtps": h.free_port(), "submission": low_port()}
    metrics_port = h.free_port()
    cfg = h.relabel_config(
        certs, upstream.port, "implicit", ports,
        relabel_opts={"log_level": "info", "drain_timeout": "20s"},
        brand_opts={"cert": "/etc/relabel/tls/tls.crt", "key": "/etc/relabel/tls/tls.key"},
        upstream_opts={"ca_file": "/etc/relabel/ca/ca.crt"},
        metrics_opts={"listen": f"{h.LOCALHOST}:{metrics_port}",
                      "upstream_check_interval": "2s"})
    ini = volumes["top"] / "relabel.ini"
    ini.write_text(cfg.text())
    os.chmod(ini, 0o644)
    name = f"relabel-test-{os.getpid()}"
    podman("rm", "-f", name, check=False)
    podman("run", "-d", "--name", name,
           "--network", "host",
           "--read-only",
           "--cap-drop", "ALL", "--cap-add", "NET_BIND_SERVICE",
           "--security-opt", "no-new-privileges",
           "-v", f"{ini}:/etc/relabel/relabel.ini:ro",
           "-v", f"{volumes['tls']}:/etc/relabel/tls:ro",
           "-v", f"{volumes['ca']}:/etc/relabel/ca:ro",
           # The image's HEALTHCHECK, pointed at this run's endpoint; run
           # on demand below (the engine's timer needs systemd).
           "-e", f"RELABEL_HEALTHCHECK_URL=http://{h.LOCALHOST}:{metrics_port}/healthz",
           "--health-interval", "disable",
           image)
    c = Container(name, ports, metrics_port)
    try:
        h.wait_for(lambda: "relabel ready" in c.logs() or
                   c.inspect("{{.State.Status}}") != "running",
                   timeout=30, what="relabel ready in the container log")
        assert c.inspect("{{.State.Status}}") == "running", c.logs()
        yield c
    finally:
        podman("rm", "-f", "--time", "0", name, check=False)


def test_image_is_small_and_says_how_it_runs(image):
    cfg = podman("image", "inspect", "--format",
                 "{{.Config.User}}|{{json .Config.Entrypoint}}|{{json .Config.Cmd}}|"
                 "{{.Config.StopSignal}}|{{json .HealthCheck.Test}}|{{.Size}}", image).stdout
    user, entry, cmd, stop, health, size = cfg.strip().split("|")
    assert user == f"{UID}:{GID}" and UID != 0
    assert entry == '["/usr/sbin/relabel"]'
    assert cmd == '["-c","/etc/relabel/relabel.ini"]'
    assert stop == "SIGTERM"
    assert health == '["CMD","/usr/libexec/relabel/healthcheck"]', "exec form: no shell"
    assert int(size) < 150e6, f"the runtime image is {int(size) / 1e6:.0f} MB"
    # No compiler made it into the runtime stage.
    res = podman("run", "--rm", "--network", "none", "--entrypoint", "/bin/sh", image,
                 "-c", "command -v cc gcc meson ninja curl || true")
    assert res.stdout.strip() == "", res.stdout


@pytest.mark.parametrize("source", ["image", "kubernetes"])
def test_shipped_configurations_pass_check_in_the_image(image, volumes, source, tmp_path):
    """The image's own /etc/relabel/relabel.ini and the Kubernetes
    ConfigMap's, each with a certificate volume laid out as documented."""
    args = ["run", "--rm", "--network", "none", "--read-only", "--cap-drop", "ALL",
            "-v", f"{volumes['tls']}:/etc/relabel/tls:ro"]
    if source == "kubernetes":
        ini = tmp_path / "relabel.ini"
        ini.write_text(ship.configmap_ini_text())
        os.chmod(ini, 0o644)
        os.chmod(tmp_path, 0o755)
        args += ["-v", f"{ini}:/etc/relabel/relabel.ini:ro"]
    res = podman(*args, image, "--check", check=False)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "/etc/relabel/relabel.ini: configuration ok" in res.stdout
    assert "warning" not in res.stdout, res.stdout
    assert "certificate /etc/relabel/tls/tls.crt: CN=smtp.example.com" in res.stdout


def test_kubernetes_prestop_command_runs_in_the_image(image):
    pod = ship.manifest("Deployment", "relabel")["spec"]["template"]["spec"]
    [c] = [c for c in pod["containers"] if c["name"] == "relabel"]
    command = c["lifecycle"]["preStop"]["exec"]["command"]
    res = podman("run", "--rm", "--network", "none", "--read-only", "--cap-drop", "ALL",
                 "--entrypoint", command[0], image, *command[1:-1], "0")
    assert res.returncode == 0


def test_runs_as_non_root_with_only_net_bind_service(container):
    pid = int(container.inspect("{{.State.Pid}}"))
    status = dict(line.split(":", 1) for line in open(f"/proc/{pid}/status"))
    assert open(f"/proc/{pid}/comm").read().strip() == "relabel", "relabel is PID 1"
    assert status["Uid"].split() == [str(UID)] * 4
    assert status["Gid"].split() == [str(GID)] * 4
    for caps in ("CapEff", "CapPrm", "CapBnd"):
        assert int(status[caps], 16) == 1 << CAP_NET_BIND_SERVICE, (caps, status[caps])
    assert status["NoNewPrivs"].strip() == "1"
    # It bound a port below 1024 with that capability alone.
    assert container.ports["submission"] < 1024
    with socket.create_connection((h.LOCALHOST, container.ports["submission"]), timeout=5):
        pass
    assert container.inspect("{{.HostConfig.ReadonlyRootfs}}") == "true"


def test_relays_a_message_over_implicit_tls(container, upstream, client_ctx):
    body = h.make_body(4000, seed=b"container smtps")
    with h.NamedSMTP_SSL(h.BRAND_HOST, container.ports["smtps"], context=client_ctx,
                         timeout=h.TIMEOUT) as s:
        code, msg = s.ehlo("client.example.net")
        assert code == 250 and msg.startswith(h.BRAND_HOST.encode())
        s.login(h.USER, h.PASSWORD)
        refused = s.sendmail("app@example.com", ["someone@example.org"], body)
        assert refused == {}
    [got] = upstream.recorder.wait_messages(1)
    assert got.mail_from == "app@example.com" and got.rcpt_tos == ["someone@example.org"]
    assert got.data == body and got.tls and got.auth_user == h.USER


def test_relays_a_message_after_starttls_on_a_low_port(container, upstream, client_ctx):
    before = len(upstream.messages)
    body = h.make_body(2000, seed=b"container starttls")
    with h.NamedSMTP(h.BRAND_HOST, container.ports["submission"], timeout=h.TIMEOUT) as s:
        s.ehlo("client.example.net")
        s.starttls(context=client_ctx)
        s.ehlo("client.example.net")
        s.login(h.USER, h.PASSWORD)
        s.sendmail("app@example.com", ["other@example.org"], body)
    got = upstream.recorder.wait_messages(before + 1)[-1]
    assert got.data == body and got.rcpt_tos == ["other@example.org"]


def test_health_endpoints_and_the_image_healthcheck(container):
    status, text = container.get("/healthz")
    assert status == 200 and text.strip() == "ok"
    # Ready once the deep check of the upstream (TLS, certificate) passed.
    h.wait_for(lambda: container.get("/readyz")[0] == 200, timeout=20, what="/readyz 200")
    res = podman("healthcheck", "run", container.name, check=False)
    assert res.returncode == 0 and "unhealthy" not in res.stdout, res.stdout + res.stderr
    # The check program itself can fail: a path the endpoint does not serve.
    res = podman("exec", container.name, "/usr/libexec/relabel/healthcheck",
                 f"http://{h.LOCALHOST}:{container.metrics_port}/nothing", check=False)
    assert res.returncode == 1 and "404" in res.stderr, res.stdout + res.stderr
    # An endpoint that accepts and never answers (a wedged process) fails
    # the check within its own deadline, before the engine's 5 s timeout.
    with socket.socket() as mute:
        mute.bind((h.LOCALHOST, 0))
        mute.listen(1)
        start = time.monotonic()
        res = podman("exec", container.name, "/usr/libexec/relabel/healthcheck",
                     f"http://{h.LOCALHOST}:{mute.getsockname()[1]}/healthz", check=False)
        took = time.monotonic() - start
    assert res.returncode == 1 and "timed out" in res.stderr, res.stdout + res.stderr
    assert 2.5 < took < 5, f"took {took:.1f}s"


def test_logs_go_to_standard_error(container):
    res = podman("logs", container.name)
    assert "relabel ready" in res.stderr and "relabel ready" not in res.stdout
    assert "session end" in res.stderr and "message from=<app@example.com>" in res.stderr


def test_sigterm_drains_a_message_in_progress_then_exits_0(container, upstream, client_ctx):
    """Last: SIGTERM to PID 1 while a message is halfway through DATA; the
    message still completes, readiness drops at once, and relabel exits 0."""
    before = len(upstream.messages)
    body = h.make_body(20000, seed=b"container drain")
    assert b"\r\n." not in body, "sent as it is, without dot-stuffing"
    half = len(body) // 2
    s = h.NamedSMTP_SSL(h.BRAND_HOST, container.ports["smtps"], context=client_ctx,
                        timeout=h.TIMEOUT)
    try:
        s.ehlo("client.example.net")
        s.login(h.USER, h.PASSWORD)
        assert s.mail("app@example.com")[0] == 250
        assert s.rcpt("drain@example.org")[0] == 250
        assert s.docmd("DATA")[0] == 354
        s.send(body[:half])

        podman("kill", "--signal", "TERM", container.name)
        h.wait_for(lambda: "draining" in container.logs(), what="the drain to start")
        assert container.get("/readyz")[0] == 503
        assert container.inspect("{{.State.Status}}") == "running"

        s.send(body[half:] + b".\r\n")
        code, msg = s.getreply()
        assert code == 250, msg
    finally:
        s.close()
    got = upstream.recorder.wait_messages(before + 1)[-1]
    assert got.data == body and got.rcpt_tos == ["drain@example.org"]

    res = podman("wait", container.name, timeout=60)
    assert res.stdout.strip() == "0"
    assert container.inspect("{{.State.ExitCode}}") == "0"
    assert container.inspect("{{.State.OOMKilled}}") == "false"
    assert "relabel stopped" in container.logs()
