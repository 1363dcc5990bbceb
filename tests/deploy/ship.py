"""
ship.py - what the deployment tests share: the repository's files read the
way the tools that use them read them (the Dockerfile, the Kubernetes
manifests, relabel's ini files, the directive table in src/config.c), and
podman run with the test's own configuration.
"""

import configparser
import glob
import os
import re
import shlex
import subprocess

import yaml

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
K8S_DIR = os.path.join(REPO, "deploy", "kubernetes")
PODMAN_DIR = os.path.join(HERE, "podman")


# --------------------------------------------------------------------------
# relabel's ini files

def parse_ini(text):
    """An ini file as relabel reads it: section headers with a quoted name
    become "type name" (configparser keeps them verbatim otherwise), ';'
    and '#' comments, inline " ;" comments."""
    cp = configparser.ConfigParser(interpolation=None, inline_comment_prefixes=(" ;",),
                                   comment_prefixes=(";", "#"), strict=True)
    cp.optionxform = str
    cp.read_string(re.sub(r'^\[\s*(\w+)\s+"([^"]+)"\s*\]', r"[\1 \2]", text, flags=re.M))
    return cp


def listen_ports(value):
    """Ports of a listen value ("0.0.0.0:465, [::]:465" -> {465})."""
    return {int(item.strip().rsplit(":", 1)[1]) for item in value.split(",") if item.strip()}


def duration_seconds(value):
    """relabel's durations: "30s", "1500ms", "5m", "1h", or plain seconds."""
    m = re.fullmatch(r"(\d+)\s*(ms|s|m|h)?", value.strip(), re.I)
    assert m, f"not a duration: {value!r}"
    unit = (m.group(2) or "s").lower()
    return int(m.group(1)) * {"ms": 0.001, "s": 1, "m": 60, "h": 3600}[unit]


def example_keys(path=os.path.join(REPO, "config", "relabel.ini")):
    """Every (section type, key) the example configuration names, whether
    set or commented out (";key = value" under a ";[section]" too)."""
    keys, section = set(), None
    for line in open(path, encoding="utf-8"):
        m = re.match(r'^\s*[;#]?\s*\[\s*(\w+)(?:\s+"[^"]*")?\s*\]\s*$', line)
        if m:
            section = m.group(1)
            continue
        m = re.match(r"^\s*[;#]?([a-z_]+)\s*=", line)
        if m and section is not None:
            keys.add((section, m.group(1)))
    return keys


def parser_directives(path=os.path.join(REPO, "src", "config.c")):
    """Every (section type, key) of config_directives[] in src/config.c,
    read from the source as it is now, so keys added by anyone are seen.

    An entry names its key through a macro that fixes the section
    (CONFIG_R(key, fn) -> CONFIG_DIRECTIVE(CONFIG_S_RELABEL, ...)), possibly
    through another macro (CONFIG_TIMEOUT(key) -> CONFIG_R(...)), or spells
    out .section = CONFIG_S_X, .key = "key".  Each entry must yield exactly
    one key, so an entry written some new way fails loudly instead of being
    skipped."""
    src = open(path, encoding="utf-8").read()
    stypes = dict(re.findall(r'\[CONFIG_S_(\w+)\]\s*=\s*\{\s*"(\w+)"', src))
    assert stypes, "config_stypes[] not found in src/config.c"
    macros = {}
    for name, body in re.findall(r"#define\s+(CONFIG_\w+)\([^)]*\)((?:.*\\\n)*.*)", src):
        macros[name] = body

    def section_of(macro, depth=0):
        body = macros.get(macro, "")
        m = re.search(r"CONFIG_S_(\w+)", body)
        if m:
            return m.group(1)
        for inner in re.findall(r"(CONFIG_\w+)\(", body):
            if inner in macros and inner != macro and depth < 5:
                found = section_of(inner, depth + 1)
                if found:
                    return found
        return None

    table = re.search(r"config_directives\[[^\]]*\]\s*=\s*\{(.*?)\n\};", src, re.S)
    assert table, "config_directives[] not found in src/config.c"
    entries = re.split(r"\n\s*\[CONFIG_D_\w+\]\s*=", "\n" + table.group(1))[1:]
    assert entries, "no entries in config_directives[]"
    found = set()
    for entry in entries:
        keys = []
        for macro, key in re.findall(r"(CONFIG_\w+)\(\s*(\w+)\s*[,)]", entry):
            sec = section_of(macro)
            if sec is not None:
                keys.append((stypes[sec], key))
        m_sec = re.search(r"\.section\s*=\s*CONFIG_S_(\w+)", entry)
        m_key = re.search(r'\.key\s*=\s*"(\w+)"', entry)
        if m_sec and m_key:
            keys.append((stypes[m_sec.group(1)], m_key.group(1)))
        assert len(keys) == 1, f"cannot read the key of config_directives entry {entry.strip()!r}"
        found.add(keys[0])
    return found


# --------------------------------------------------------------------------
# the Dockerfile

def dockerfile():
    """The Dockerfile's instructions as (INSTRUCTION, arguments) pairs, in
    order, with continuation lines joined and comments dropped."""
    text = open(os.path.join(REPO, "Dockerfile"), encoding="utf-8").read()
    text = re.sub(r"\\\n", " ", text)
    out = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        word, _, rest = line.partition(" ")
        out.append((word.upper(), rest.strip()))
    return out


def runtime_stage():
    """The instructions of the Dockerfile's last stage (the image)."""
    instrs = dockerfile()
    last = max(i for i, (word, _) in enumerate(instrs) if word == "FROM")
    return instrs[last:]


def image_facts():
    """What the final image promises: user, exposed ports, entrypoint and
    command, the files it copies in, the health check."""
    facts = {"expose": set(), "copies": [], "env": {}}
    for word, rest in runtime_stage():
        if word == "USER":
            facts["user"] = rest
        elif word == "EXPOSE":
            facts["expose"] |= {int(p.split("/")[0]) for p in rest.split()}
        elif word == "ENTRYPOINT":
            facts["entrypoint"] = yaml.safe_load(rest)
        elif word == "CMD":
            facts["cmd"] = yaml.safe_load(rest)
        elif word == "COPY":
            parts = shlex.split(rest)
            facts["copies"].append(parts[-1])
        elif word == "ENV":
            name, _, value = rest.partition("=")
            facts["env"][name] = value
        elif word == "HEALTHCHECK":
            facts["healthcheck"] = rest
        elif word == "RUN":
            facts.setdefault("run", []).append(rest)
    return facts


# --------------------------------------------------------------------------
# Kubernetes manifests

def manifests():
    """Every object in deploy/kubernetes/*.yaml, with the file it came from."""
    objs = []
    for path in sorted(glob.glob(os.path.join(K8S_DIR, "*.yaml"))):
        with open(path, encoding="utf-8") as f:
            for doc in yaml.safe_load_all(f):
                if doc is not None:
                    objs.append((os.path.basename(path), doc))
    return objs


def manifest(kind, name=None):
    found = [doc for _, doc in manifests()
             if doc.get("kind") == kind and (name is None or doc["metadata"]["name"] == name)]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def configmap_ini_text():
    return manifest("ConfigMap", "relabel-config")["data"]["relabel.ini"]


# --------------------------------------------------------------------------
# podman with the test's configuration

def podman_env():
    env = dict(os.environ)
    env["CONTAINERS_CONF"] = os.path.join(PODMAN_DIR, "containers.conf")
    env["CONTAINERS_STORAGE_CONF"] = os.path.join(PODMAN_DIR, "storage.conf")
    return env


def podman(*args, check=True, timeout=120, input=None):
    """Runs podman; returns the CompletedProcess (text).  check: fail the
    test with podman's own words when it does not exit 0."""
    res = subprocess.run(["podman", *args], env=podman_env(), capture_output=True, text=True,
                         timeout=timeout, input=input)
    if check and res.returncode != 0:
        raise AssertionError(f"podman {' '.join(args)} exited {res.returncode}:\n"
                             f"{res.stdout}\n{res.stderr}")
    return res
