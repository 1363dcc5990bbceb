"""
The Kubernetes manifests in deploy/kubernetes, parsed and cross-checked
against the configuration they carry (the ConfigMap's relabel.ini), the
image the Dockerfile makes and relabel's drain timeout.  Whether that ini
and the Secret layout actually start relabel is checked in the image by
test_container.py.
"""

import os
import re

import pytest

import ship


@pytest.fixture(scope="module")
def ini():
    return ship.parse_ini(ship.configmap_ini_text())


@pytest.fixture(scope="module")
def deployment():
    return ship.manifest("Deployment", "relabel")


@pytest.fixture(scope="module")
def pod(deployment):
    return deployment["spec"]["template"]["spec"]


@pytest.fixture(scope="module")
def container(pod):
    [c] = [c for c in pod["containers"] if c["name"] == "relabel"]
    return c


def listener_ports(ini):
    """{listener name: set of ports} from the ini's [listener] sections."""
    return {s.split(" ", 1)[1]: ship.listen_ports(ini[s]["listen"])
            for s in ini.sections() if s.startswith("listener ")}


def named_port(container, name):
    [p] = [p for p in container["ports"] if p["name"] == name]
    return p["containerPort"]


def test_every_manifest_parses_and_is_an_object():
    objs = ship.manifests()
    files = {f for f, _ in objs}
    assert files >= {"configmap.yaml", "secret.yaml", "deployment.yaml", "service.yaml",
                     "pdb.yaml", "kustomization.yaml"}
    for f in files:
        assert "\t" not in open(os.path.join(ship.K8S_DIR, f), encoding="utf-8").read(), f
    for f, doc in objs:
        assert doc.get("apiVersion") and doc.get("kind"), f"{f}: apiVersion and kind"
        if doc["kind"] != "Kustomization":
            assert doc["metadata"].get("name"), f"{f}: metadata.name"
            assert doc["metadata"]["labels"]["app.kubernetes.io/name"] == "relabel", f


def test_kustomization_lists_everything_but_the_placeholder_secret():
    kust = ship.manifest("Kustomization")
    listed = set(kust["resources"])
    for f in listed:
        assert os.path.exists(os.path.join(ship.K8S_DIR, f)), f
    others = {f for f, doc in ship.manifests() if doc["kind"] != "Kustomization"}
    assert listed == others - {"secret.yaml"}, "apply -k must never overwrite a real Secret"


def test_two_replicas_rolled_one_at_a_time(deployment):
    spec = deployment["spec"]
    assert spec["replicas"] == 2
    labels = spec["template"]["metadata"]["labels"]
    assert all(labels[k] == v for k, v in spec["selector"]["matchLabels"].items())
    assert spec["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    pdb = ship.manifest("PodDisruptionBudget", "relabel")
    assert pdb["spec"]["selector"]["matchLabels"] == spec["selector"]["matchLabels"]
    assert pdb["spec"].get("maxUnavailable") == 1 or pdb["spec"].get("minAvailable") == 1


def test_container_ports_are_the_listeners_and_the_metrics_endpoint(ini, container):
    lports = listener_ports(ini)
    declared = {p["name"]: p["containerPort"] for p in container["ports"]}
    # Every listener of the ini, under its own name, and nothing else but
    # the metrics port.
    assert {n: {p} for n, p in declared.items() if n != "metrics"} == lports
    assert {declared["metrics"]} == ship.listen_ports(ini["metrics"]["listen"])
    assert all(a.split(":")[0] in ("0.0.0.0", "[::]", "*")
               for a in ini["metrics"]["listen"].split(",")), \
        "probes come from the kubelet to the pod address: metrics must not be loopback-only"
    # The image declares what the pod uses.
    assert set(declared.values()) <= ship.image_facts()["expose"]


def test_service_publishes_every_listener_and_not_metrics(ini, container, deployment):
    svc = ship.manifest("Service", "relabel")
    assert svc["spec"]["type"] == "LoadBalancer"
    assert svc["spec"]["externalTrafficPolicy"] == "Local"
    assert svc["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]
    lports = listener_ports(ini)
    published = {}
    for p in svc["spec"]["ports"]:
        target = p["targetPort"]
        tport = named_port(container, target) if isinstance(target, str) else target
        assert target != "metrics" and tport != named_port(container, "metrics")
        published[p["port"]] = tport
    # The client sees the standard ports; each reaches the listener on it.
    assert sorted(published) == sorted(p for ports in lports.values() for p in ports)
    assert all(port == tport for port, tport in published.items())


def test_probes_hit_the_health_endpoints(container):
    live, ready = container["livenessProbe"]["httpGet"], container["readinessProbe"]["httpGet"]
    assert live["path"] == "/healthz" and ready["path"] == "/readyz"
    assert live["port"] == ready["port"] == "metrics"


def test_grace_period_outlasts_prestop_and_drain(ini, pod, container):
    drain = ship.duration_seconds(ini["relabel"].get("drain_timeout", "30s"))
    pre = container["lifecycle"]["preStop"]["exec"]["command"]
    assert pre[0] == "/bin/sleep", "the image has no shell: preStop runs a binary directly"
    pause = float(pre[1])
    assert pod["terminationGracePeriodSeconds"] > pause + drain, \
        f"grace {pod['terminationGracePeriodSeconds']}s <= preStop {pause}s + drain {drain}s"


def test_runs_unprivileged_with_a_read_only_root(pod, container):
    psc, csc = pod["securityContext"], container["securityContext"]
    assert psc["runAsNonRoot"] is True
    assert psc["seccompProfile"]["type"] == "RuntimeDefault"
    assert csc["readOnlyRootFilesystem"] is True
    assert csc["allowPrivilegeEscalation"] is False
    assert csc["capabilities"] == {"drop": ["ALL"], "add": ["NET_BIND_SERVICE"]}
    assert pod["automountServiceAccountToken"] is False
    # The numeric user is the image's (runAsNonRoot can only check a number).
    uid, gid = ship.image_facts()["user"].split(":")
    assert psc["runAsUser"] == int(uid) and psc["runAsGroup"] == int(gid)
    assert psc["fsGroup"] == int(gid)


def test_low_ports_open_without_root(ini, pod):
    lowest = min(p for ports in listener_ports(ini).values() for p in ports)
    sysctls = {s["name"]: s["value"] for s in pod["securityContext"].get("sysctls", [])}
    assert int(sysctls["net.ipv4.ip_unprivileged_port_start"]) <= lowest


def test_config_and_certificates_are_where_the_ini_and_image_expect(ini, pod, container):
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    # The config file: the path the image's command reads, from the ConfigMap.
    args = container.get("args", ship.image_facts()["cmd"])
    config_path = args[args.index("-c") + 1]
    assert config_path in ship.image_facts()["copies"], "the image has a default at that path"
    [cfg] = [m for m in mounts.values() if m["mountPath"] == config_path]
    assert cfg["readOnly"] is True
    cm = ship.manifest("ConfigMap", volumes[cfg["name"]]["configMap"]["name"])
    assert cfg["subPath"] in cm["data"]
    # Certificates: a whole-directory Secret mount (no subPath, or renewals
    # would never arrive), with the brand's cert and key among its keys.
    [tls] = [m for m in mounts.values() if "secret" in volumes[m["name"]]]
    assert "subPath" not in tls and tls["readOnly"] is True
    secret_vol = volumes[tls["name"]]["secret"]
    secret = ship.manifest("Secret", secret_vol["secretName"])
    assert secret["type"] == "kubernetes.io/tls"
    brands = [s for s in ini.sections() if s.startswith("brand ")]
    assert brands
    for b in brands:
        for k in ("cert", "key"):
            path = ini[b][k]
            assert os.path.dirname(path) == tls["mountPath"], f"{b} {k} {path}"
            assert os.path.basename(path) in secret["stringData"]
    # The key is readable by the pod's group, not by everyone.
    assert secret_vol["defaultMode"] & 0o007 == 0 and secret_vol["defaultMode"] & 0o040
    # The image has the mount points, so the read-only root needs nothing.
    run = " ".join(ship.image_facts()["run"])
    assert re.search(r"install -d [^;]*" + re.escape(tls["mountPath"]), run)


def test_prometheus_annotations_point_at_the_metrics_port(ini, deployment):
    ann = deployment["spec"]["template"]["metadata"]["annotations"]
    assert {int(ann["prometheus.io/port"])} == ship.listen_ports(ini["metrics"]["listen"])
    assert ann["prometheus.io/path"] == "/metrics"


def test_secret_placeholder_is_not_a_usable_key():
    secret = ship.manifest("Secret", "relabel-tls")
    # Shipping a real key in the repository would be worse than useless.
    assert "placeholder" in secret["stringData"]["tls.key"]

