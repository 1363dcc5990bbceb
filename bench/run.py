#!/usr/bin/python3
"""
relabel against the front ends a user would pick instead (HAProxy, a
chained stunnel, Postfix as a relay) and against the crypto floor, in one
run on this machine, on loopback only.

    sudo /usr/bin/python3 bench/run.py            # full run (~15 min)
    sudo /usr/bin/python3 bench/run.py --quick    # small sizes (~2 min)

It installs what is missing from Debian (haproxy, stunnel4, postfix, the
build dependencies, libssl-dev), makes sure no system instance of those
services runs, builds relabel and the bench tools (build/), makes a test CA
and certificates, and then measures every front end against the same
upstream, bench/sink (OpenSSL, certificate for smtp.mailgun.org), with
bench/loadgen (OpenSSL) as the clients:

  sessions  N complete sessions (TLS, EHLO, AUTH, ~1 KB message, QUIT),
            P in parallel, on the implicit-TLS and on the STARTTLS port;
            relabel also with one event loop, and with upstream resumption
            (a second sink that allows it), with the share of resumed
            upstream legs
  bulk      large messages, implicit TLS and STARTTLS
  idle      memory (PSS) per established idle session
  latency   round-trip time of NOOP through the front end vs. direct
  floor     bench/crypto_floor: mbedTLS's own speed for the AEADs and the
            handshake primitives, and the floor it implies
  profile   relabel under valgrind --tool=callgrind: where instructions go

CPU figures are utime+stime of every front-end process (/proc/PID/stat,
children reaped by the front end included), sampled before and after each
measurement; each figure is the median of --repeats runs, and is printed
as a ratio to relabel from the same run.  The table goes to stdout and to
bench/RESULTS.md (--out).  See bench/README.md.
"""
import argparse
import datetime
import os
import platform
import re
import resource
import select
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUILD = os.path.join(ROOT, "build")
TICK = os.sysconf("SC_CLK_TCK")
PAGE_KB = os.sysconf("SC_PAGE_SIZE") // 1024
PEERS = ("relabel", "haproxy", "stunnel", "postfix")
# Debian packages: the peers, what relabel and the bench tools build with,
# and valgrind for the profile.
PEER_PKGS = {"haproxy": "haproxy", "stunnel": "stunnel4", "postfix": "postfix"}
BUILD_PKGS = ["build-essential", "meson", "ninja-build", "pkg-config", "libuv1-dev",
              "libmbedtls-dev", "libinih-dev", "openssl", "ca-certificates", "libssl-dev",
              "valgrind"]
# System services a package install may start; never left running.
SERVICES = {"haproxy": ["haproxy"], "stunnel4": ["stunnel4", "stunnel"],
            "postfix": ["master", "qmgr", "pickup"]}


def log(msg):
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------- setup

def installed(pkg):
    r = subprocess.run(["dpkg-query", "-W", "-f=${Status}", pkg], capture_output=True, text=True)
    return "install ok installed" in r.stdout


def system_pids(names):
    """PIDs of processes with one of these names that are not ours."""
    out = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/comm") as f:
                comm = f.read().strip()
            with open(f"/proc/{d}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if comm in names and "relabel-bench" not in cmd:
            out.append((int(d), comm, cmd.strip()))
    return out


def exe(pid):
    try:
        return os.readlink(f"/proc/{pid}/exe")
    except OSError:
        return ""


def stop_system_services(pkgs):
    """Stops (and disables) system instances the packages may have started."""
    for pkg in pkgs:
        procs = system_pids(SERVICES[pkg])
        if pkg == "postfix":  # "master" is a common name: only Postfix's
            procs = [p for p in procs if exe(p[0]).startswith("/usr/lib/postfix/")]
        if not procs:
            continue
        log(f"stopping the system {pkg} service ({', '.join(str(p[0]) for p in procs)})")
        if os.path.isdir("/run/systemd/system") and shutil.which("systemctl"):
            subprocess.run(["systemctl", "disable", "--now", pkg], capture_output=True)
        elif os.path.exists(f"/etc/init.d/{pkg}"):
            subprocess.run([f"/etc/init.d/{pkg}", "stop"], capture_output=True)
        time.sleep(1)
        for pid, comm, _ in system_pids(SERVICES[pkg]):
            if pkg != "postfix" or exe(pid) == "/usr/lib/postfix/sbin/master":
                log(f"  still running: {pid} {comm}: SIGTERM")
                try:
                    os.kill(pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass


def ensure_packages(peers):
    wanted = BUILD_PKGS + [PEER_PKGS[p] for p in peers if p in PEER_PKGS]
    missing = [p for p in wanted if not installed(p)]
    if missing:
        if os.geteuid() != 0:
            sys.exit(f"missing Debian packages {' '.join(missing)}: run as root (sudo)")
        log(f"installing {' '.join(missing)}")
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        # Postfix: no system configuration at all, so the package starts no
        # mail system; the bench runs a private instance of its own.
        subprocess.run(["debconf-set-selections"], check=True, text=True, env=env,
                       input="postfix postfix/main_mailer_type select No configuration\n"
                             "postfix postfix/mailname string smtp.example.com\n")
        # And no service starts during the install (Debian's policy-rc.d).
        guard = "/usr/sbin/policy-rc.d"
        made_guard = not os.path.exists(guard)
        if made_guard:
            with open(guard, "w") as f:
                f.write("#!/bin/sh\n# relabel bench: no service starts during install\nexit 101\n")
            os.chmod(guard, 0o755)
        try:
            subprocess.run(["apt-get", "update", "-q"], check=True, env=env,
                           stdout=subprocess.DEVNULL)
            subprocess.run(["apt-get", "install", "-y", "-q", "--no-install-recommends"] + missing,
                           check=True, env=env, stdout=subprocess.DEVNULL)
        finally:
            if made_guard:
                os.unlink(guard)
        disable_boot_start([p for p in missing if p in SERVICES])
    stop_system_services([PEER_PKGS[p] for p in peers if p in PEER_PKGS])


def disable_boot_start(pkgs):
    """The packages just installed must not start at the next boot either
    (haproxy's enables its unit); both tools work without a running init."""
    for pkg in pkgs:
        if shutil.which("systemctl"):
            subprocess.run(["systemctl", "disable", pkg], capture_output=True)
        if shutil.which("update-rc.d") and os.path.exists(f"/etc/init.d/{pkg}"):
            subprocess.run(["update-rc.d", pkg, "disable"], capture_output=True)


def build():
    if not os.path.exists(os.path.join(BUILD, "build.ninja")):
        subprocess.run(["meson", "setup", BUILD], cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
    subprocess.run(["ninja", "-C", BUILD, "relabel", "bench/sink", "bench/loadgen",
                    "bench/crypto_floor"], check=True, stdout=subprocess.DEVNULL)


NOFILE = 1024  # descriptors per process, once raise_nofile has run


def raise_nofile(n):
    """Raises the descriptor limit (inherited by everything started) to n;
    without CAP_SYS_RESOURCE only up to the hard limit."""
    global NOFILE
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = max(n, soft)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, max(want, hard)))
    except (ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(want, hard), hard))
    NOFILE = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    return NOFILE


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, proc, timeout=20):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{proc.args[0]} exited with {proc.returncode}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port}")


# ---------------------------------------------------------------- /proc

def stat_fields(pid):
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()


def children_map():
    kids = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                kids.setdefault(int(stat_fields(d)[1]), []).append(int(d))
            except (OSError, IndexError):
                pass
    return kids


def tree(pid):
    """pid and all its live descendants."""
    kids, out, todo = children_map(), [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(kids.get(p, []))
    return out


def tree_cpu(pid, kernel_only=False):
    """CPU seconds of a process tree: the root's own and reaped children's
    time, plus the live descendants' own time (only the kernel's share:
    stime, cstime, with kernel_only)."""
    total = 0
    for i, p in enumerate(tree(pid)):
        try:
            f = stat_fields(p)
        except OSError:
            continue
        total += int(f[12]) + (0 if kernel_only else int(f[11]))
        if i == 0:
            total += int(f[14]) + (0 if kernel_only else int(f[13]))
    return total / TICK


def tree_pss_kb(pid):
    total = 0
    for p in tree(pid):
        try:
            with open(f"/proc/{p}/smaps_rollup") as f:
                for line in f:
                    if line.startswith("Pss:"):
                        total += int(line.split()[1])
                        break
        except OSError:
            pass
    return total


# ---------------------------------------------------------------- processes

class Procs:
    """Every process the bench starts, stopped by PID at the end."""

    def __init__(self, tmp):
        self.tmp, self.all = tmp, []

    def start(self, name, argv, **kw):
        logf = open(os.path.join(self.tmp, f"{name}.log"), "ab")
        p = subprocess.Popen(argv, stdout=kw.pop("stdout", logf), stderr=logf,
                             stdin=kw.pop("stdin", subprocess.DEVNULL), **kw)
        p.bench_name = name
        self.all.append(p)
        return p

    def stop(self, p, sig=signal.SIGTERM, timeout=15):
        if p.poll() is None:
            p.send_signal(sig)
            try:
                p.wait(timeout)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()

    def stop_all(self):
        for p in reversed(self.all):
            self.stop(p)


class Sink:
    """bench/sink.  By default it refuses TLS session resumption, so every
    upstream leg is a full handshake for every front end; with resume=True
    it issues TLS 1.2 session tickets and keeps a session-ID cache, as a
    real provider does (OpenSSL's defaults)."""
    FMT = "<6Q64s"

    def __init__(self, procs, certs, resume=False):
        self.tmp, self.resume = procs.tmp, resume
        name = "sink-resume" if resume else "sink"
        self.ports = {"implicit": free_port(), "starttls": free_port()}
        self.stats_path = os.path.join(self.tmp, f"{name}.stats")
        self.proc = procs.start(name, [os.path.join(BUILD, "bench", "sink"),
                                       "-c", f"{certs}/upstream.crt",
                                       "-k", f"{certs}/upstream.key",
                                       "-i", str(self.ports["implicit"]),
                                       "-s", str(self.ports["starttls"]),
                                       "-m", self.stats_path] + (["-r"] if resume else []))
        wait_port(self.ports["implicit"], self.proc)

    def stats(self):
        with open(self.stats_path, "rb") as f:
            v = struct.unpack(self.FMT, f.read(struct.calcsize(self.FMT)))
        return {"sessions": v[0], "handshakes": v[1], "resumed": v[2], "messages": v[3],
                "bytes": v[4], "open": v[5], "cipher": v[6].split(b"\0")[0].decode()}

    def cpu(self):
        return tree_cpu(self.proc.pid)


# ---------------------------------------------------------------- front ends

class FrontEnd:
    name = "?"
    modes = ("implicit", "starttls")
    queues = False  # acknowledges before the upstream has the message
    fds_per_session = 2  # in its busiest process: client and upstream socket

    def __init__(self, procs, certs, sink):
        self.procs, self.certs, self.sink, self.tmp = procs, certs, sink, procs.tmp
        self.ports = {m: free_port() for m in self.modes}
        self.proc = None

    def pid(self):
        return self.proc.pid

    def cpu(self):
        return tree_cpu(self.pid())

    def sys_cpu(self):
        return tree_cpu(self.pid(), kernel_only=True)

    def pss_kb(self):
        return tree_pss_kb(self.pid())

    def stop(self):
        if self.proc is not None:
            self.procs.stop(self.proc)

    def write(self, name, text):
        path = os.path.join(self.tmp, name)
        with open(path, "w") as f:
            f.write(text)
        return path


class Relabel(FrontEnd):
    name = "relabel"
    wrapper = []  # e.g. valgrind for the profile

    def __init__(self, procs, certs, sink, workers="auto", label="relabel"):
        super().__init__(procs, certs, sink)
        self.workers, self.label = workers, label
        self.log_path = os.path.join(self.tmp, f"{label}.log")
        self.log_mark = 0

    def mark(self):
        """Remembers where relabel's log ends: resumed() counts from here."""
        try:
            self.log_mark = os.path.getsize(self.log_path)
        except OSError:
            self.log_mark = 0

    def resumed(self):
        """(upstream legs resumed, upstream legs full) in the session end
        lines logged since mark() (up_resumed= of a session with an
        upstream TLS leg)."""
        yes = no = 0
        with open(self.log_path, "rb") as f:
            f.seek(self.log_mark)
            for line in f:
                if b" session end " not in line or b" up_tls=none " in line:
                    continue
                if b" up_resumed=yes " in line:
                    yes += 1
                elif b" up_resumed=no " in line:
                    no += 1
        return yes, no

    def start(self, max_sessions):
        c = self.certs
        cfg = self.write(f"{self.label}.ini", f"""[relabel]
log_level = info
workers = {self.workers}
max_connections = {max_sessions + 100}
max_connections_per_ip = {max_sessions + 100}
max_junk_commands = 1000000
handshake_timeout = 60s
# every session comes from 127.0.0.1: no limit on new connections per minute
max_connection_rate = 0
[listener "smtps"]
listen = 127.0.0.1:{self.ports['implicit']}
tls = implicit
[listener "submission"]
listen = 127.0.0.1:{self.ports['starttls']}
tls = starttls
[brand "example"]
hostname = smtp.example.com
cert = {c}/brand.crt
key = {c}/brand.key
upstream = bench
[upstream "bench"]
host = 127.0.0.1
port = {self.sink.ports['implicit']}
tls = implicit
verify_name = smtp.mailgun.org
ca_file = {c}/ca.crt
""")
        self.proc = self.procs.start(self.label, self.wrapper + [os.path.join(BUILD, "relabel"),
                                                                 "-c", cfg])
        for p in self.ports.values():
            wait_port(p, self.proc)

    @staticmethod
    def version():
        r = subprocess.run(["git", "-C", ROOT, "describe", "--always", "--dirty"],
                           capture_output=True, text=True)
        return f"relabel {r.stdout.strip()} (mbedTLS {dpkg_version('libmbedtls-dev')})"


class HAProxy(FrontEnd):
    name = "haproxy"
    modes = ("implicit",)  # TCP mode cannot do STARTTLS

    def start(self, max_sessions):
        c = self.certs
        with open(f"{c}/brand.crt") as a, open(f"{c}/brand.key") as b:
            pem = self.write("haproxy-brand.pem", a.read() + b.read())
        cfg = self.write("haproxy.cfg", f"""global
    maxconn {min(max_sessions + 100, (NOFILE - 500) // 2)}
    ssl-server-verify required
defaults
    mode tcp
    timeout connect 15s
    timeout client 5m
    timeout server 5m
frontend smtps
    bind 127.0.0.1:{self.ports['implicit']} ssl crt {pem}
    default_backend upstream
backend upstream
    server sink 127.0.0.1:{self.sink.ports['implicit']} ssl verify required ca-file {c}/ca.crt verifyhost smtp.mailgun.org sni str(smtp.mailgun.org)
""")
        self.proc = self.procs.start("haproxy", ["haproxy", "-db", "-f", cfg])
        wait_port(self.ports["implicit"], self.proc)

    @staticmethod
    def version():
        out = subprocess.run(["haproxy", "-vv"], capture_output=True, text=True).stdout
        v = out.splitlines()[0].split()[2]
        lib = re.search(r"Running on OpenSSL version : OpenSSL (\S+)", out)
        return f"HAProxy {v} (OpenSSL {lib.group(1) if lib else '?'})"


class Stunnel(FrontEnd):
    name = "stunnel"
    fds_per_session = 4  # both ends of the loopback hop are its own

    def start(self, max_sessions):
        c, mid = self.certs, free_port()
        cfg = self.write("stunnel.conf", f"""foreground = yes
pid =
syslog = no
[front-implicit]
accept = 127.0.0.1:{self.ports['implicit']}
cert = {c}/brand.crt
key = {c}/brand.key
connect = 127.0.0.1:{mid}
[front-starttls]
accept = 127.0.0.1:{self.ports['starttls']}
cert = {c}/brand.crt
key = {c}/brand.key
protocol = smtp
connect = 127.0.0.1:{mid}
[upstream]
client = yes
accept = 127.0.0.1:{mid}
connect = 127.0.0.1:{self.sink.ports['implicit']}
verifyChain = yes
CAfile = {c}/ca.crt
checkHost = smtp.mailgun.org
sni = smtp.mailgun.org
""")
        self.proc = self.procs.start("stunnel", ["stunnel", cfg])
        for p in list(self.ports.values()) + [mid]:
            wait_port(p, self.proc)

    @staticmethod
    def version():
        out = subprocess.run(["stunnel", "-version"], capture_output=True, text=True).stderr
        v = re.search(r"stunnel (\S+)", out)
        lib = re.search(r"Running\s+with (OpenSSL \S+)", out)
        return f"stunnel {v.group(1) if v else '?'} ({lib.group(1) if lib else '?'})"


class Postfix(FrontEnd):
    name = "postfix"
    queues = True
    fds_per_session = 0  # a process per session

    def start(self, max_sessions):
        c, base = self.certs, os.path.join(self.tmp, "postfix")
        self.base = base
        conf, queue, data = (os.path.join(base, d) for d in ("etc", "queue", "data"))
        for d in (conf, queue, data):
            os.makedirs(d, exist_ok=True)
        shutil.chown(data, "postfix")
        # The private instance reads keys as root at start; its CA file and
        # chain are read by unprivileged daemons, so they must be readable.
        for f in ("brand.crt", "brand.key", "ca.crt"):
            shutil.copy(f"{c}/{f}", f"{conf}/{f}")
        self.write("postfix/etc/main.cf", f"""compatibility_level = 3.6
config_directory = {conf}
queue_directory = {queue}
data_directory = {data}
mail_owner = postfix
maillog_file = {base}/maillog
maillog_file_prefixes = {base}
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
myhostname = smtp.example.com
mydestination =
local_recipient_maps =
mynetworks = 127.0.0.0/8
smtpd_relay_restrictions = permit_mynetworks, reject
smtpd_peername_lookup = no
smtpd_client_connection_count_limit = 0
smtpd_client_connection_rate_limit = 0
in_flow_delay = 0
smtpd_junk_command_limit = 1000000
message_size_limit = 0
default_process_limit = {max_sessions + 50}
biff = no
smtpd_tls_chain_files = {conf}/brand.key, {conf}/brand.crt
smtpd_tls_security_level = encrypt
relayhost = [127.0.0.1]:{self.sink.ports['implicit']}
smtp_tls_wrappermode = yes
smtp_tls_security_level = verify
smtp_tls_CAfile = {conf}/ca.crt
smtp_tls_verify_cert_match = smtp.mailgun.org
smtp_tls_servername = smtp.mailgun.org
""")
        svc = "unix  -       -       n       -       -"
        self.write("postfix/etc/master.cf", f"""127.0.0.1:{self.ports['implicit']} inet n - n - - smtpd
  -o smtpd_tls_wrappermode=yes
127.0.0.1:{self.ports['starttls']} inet n - n - - smtpd
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
tlsmgr    unix  -       -       n       1000?   1       tlsmgr
rewrite   {svc}       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  {svc}       proxymap
proxywrite unix -       -       n       -       1       proxymap
smtp      {svc}       smtp
relay     {svc}       smtp
showq     unix  n       -       n       -       -       showq
error     {svc}       error
retry     {svc}       error
discard   {svc}       discard
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
""")
        self.conf = conf
        r = subprocess.run(["postfix", "-c", conf, "start"], capture_output=True, text=True)
        if r.returncode != 0:
            # Postfix's own complaint goes to its log (or, if that is the
            # problem, only to a terminal): show what there is.
            tail = ""
            if os.path.exists(f"{base}/maillog"):
                with open(f"{base}/maillog") as f:
                    tail = "".join(f.readlines()[-5:])
            raise RuntimeError(f"postfix start: {r.stdout}{r.stderr}{tail}")
        pidfile = os.path.join(queue, "pid", "master.pid")
        end = time.monotonic() + 20
        while not os.path.exists(pidfile) and time.monotonic() < end:
            time.sleep(0.1)
        with open(pidfile) as f:
            self.master = int(f.read().strip())
        for p in self.ports.values():
            wait_port(p, None)

    def pid(self):
        return self.master

    def stop(self):
        if getattr(self, "master", None):
            subprocess.run(["postfix", "-c", self.conf, "stop"], capture_output=True)
            end = time.monotonic() + 15
            while os.path.exists(f"/proc/{self.master}") and time.monotonic() < end:
                time.sleep(0.1)
            if os.path.exists(f"/proc/{self.master}"):
                os.kill(self.master, signal.SIGKILL)
            self.master = None

    @staticmethod
    def version():
        r = subprocess.run(["postconf", "-d", "-h", "mail_version"], capture_output=True,
                           text=True)
        return f"Postfix {r.stdout.strip()} (OpenSSL {dpkg_version('libssl3')})"


CLASSES = {"relabel": Relabel, "haproxy": HAProxy, "stunnel": Stunnel, "postfix": Postfix}


def dpkg_version(pkg):
    r = subprocess.run(["dpkg-query", "-W", "-f=${Version}", pkg], capture_output=True, text=True)
    return r.stdout.strip() or "?"


# ---------------------------------------------------------------- measurements

def loadgen(certs, mode, port, tls, extra, name="smtp.example.com"):
    argv = [os.path.join(BUILD, "bench", "loadgen"), mode, "-p", str(port), "-t", tls,
            "-a", f"{certs}/ca.crt", "-h", name] + [str(x) for x in extra]
    return argv


def parse_result(text):
    for line in text.splitlines():
        if line.startswith("result "):
            return dict(kv.split("=", 1) for kv in line.split()[1:])
    raise RuntimeError(f"loadgen printed no result: {text[-500:]}")


def wait_delivered(sink, want, timeout):
    end = time.monotonic() + timeout
    while sink.stats()["messages"] < want:
        if time.monotonic() > end:
            return False
        time.sleep(0.05)
    return True


def run_load(fe, sink, certs, mode, tls, extra, expect_msgs, timeout=900):
    """One measured loadgen run through fe.  Returns a dict of figures."""
    argv = loadgen(certs, mode, fe.ports[tls], tls, extra)
    if hasattr(fe, "mark"):
        fe.mark()
    s0 = sink.stats()
    cpu0, sys0, scpu0, t0 = fe.cpu(), fe.sys_cpu(), sink.cpu(), time.monotonic()
    r = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    res = parse_result(r.stdout)
    if int(res["failed"]) > 0:
        log(f"  {fe.name} {mode} {tls}: {res['failed']} failed")
    # A queueing relay has only accepted the messages: count until the
    # upstream has every one of them.
    delivered = wait_delivered(sink, s0["messages"] + expect_msgs, timeout if fe.queues else 10)
    t1 = time.monotonic()
    if fe.queues:
        time.sleep(0.5)  # the last delivery agent's bookkeeping
    cpu1, sys1, scpu1, s1 = fe.cpu(), fe.sys_cpu(), sink.cpu(), sink.stats()
    up_res = fe.resumed() if hasattr(fe, "resumed") else (None, None)
    return {"up_resumed_log": up_res[0], "up_full_log": up_res[1],
            "up_resumed_sink": s1["resumed"] - s0["resumed"],
            "fe_cpu": cpu1 - cpu0, "fe_sys": sys1 - sys0, "wall": t1 - t0, "client_cpu": float(res["cpu"]),
            "sink_cpu": scpu1 - scpu0, "ok": int(res["ok"]), "failed": int(res["failed"]),
            "delivered": s1["messages"] - s0["messages"], "complete": delivered,
            "up_handshakes": s1["handshakes"] - s0["handshakes"],
            "client_cipher": res.get("cipher", "-"), "up_cipher": s1["cipher"]}


def run_kind(kind, fe, sink, certs, tls, cfg):
    """One sessions or bulk run; the dict says how much it carried."""
    if kind == "sessions":
        r = run_load(fe, sink, certs, "sessions", tls,
                     ["-n", cfg["n_sess"], "-P", cfg["parallel"], "-s", 1024], cfg["n_sess"])
        r["count"] = cfg["n_sess"]
    else:
        r = run_load(fe, sink, certs, "bulk", tls, ["-n", cfg["bulk_n"], "-P",
                     cfg["bulk_parallel"], "-s", cfg["bulk_size"]], cfg["bulk_n"])
        r["bytes"] = cfg["bulk_n"] * cfg["bulk_size"]
    return r


def run_profile(procs, certs, sink, cfg):
    """relabel under callgrind (instruction counts: stable on a noisy
    machine) for sessions on both ports and one bulk session; returns the
    markdown section with the functions that cost the most, inclusive and
    exclusive."""
    out = os.path.join(procs.tmp, "callgrind.out")
    fe = Relabel(procs, certs, sink, workers=1, label="relabel-callgrind")
    fe.wrapper = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}"]
    fe.start(1000)
    small = dict(cfg, n_sess=min(cfg["n_sess"], 50), parallel=2,
                 bulk_n=min(cfg["bulk_n"], 4))
    try:
        for tls in ("implicit", "starttls"):
            run_kind("sessions", fe, sink, certs, tls, small)
        run_kind("bulk", fe, sink, certs, "implicit", small)
    finally:
        fe.stop()
    sections = []
    # Inclusive: only the frames that say where the work goes (relabel's own
    # functions, mbedTLS's handshake, record and crypto entry points, the
    # allocator and copies), each once.
    keep = re.compile(r"build/\.\./src/|mbedtls_ssl_(handshake_(client|server)_step|read|write)\b"
                      r"|mbedtls_(ecdsa_(read|write)_signature|ecdh_calc_secret|ecdh_make_params"
                      r"|ecdh_make_public|ecp_mul_restartable|ecp_muladd_restartable"
                      r"|x509_crt_verify_with_profile|chachapoly_|gcm_|pk_sign|pk_verify)"
                      r"|malloc\.c:(malloc|calloc|free|_int_free|_int_malloc)$|memcpy|memmove")
    by_object, total = {}, 0
    for title, extra, pick, top in (("exclusive (self)", [], None, 20),
                                    ("inclusive, selected frames", ["--inclusive=yes"], keep, 30)):
        r = subprocess.run(["callgrind_annotate", "--auto=no", "--threshold=100"] + extra + [out],
                           capture_output=True, text=True)
        lines, seen = [], set()
        for ln in r.stdout.splitlines():
            m = re.match(r"\s*([\d,]+) \(\s*[\d.]+%\)\s+(\S+)", ln)
            if not m:
                continue
            if "PROGRAM TOTALS" in ln:
                total = int(m.group(1).replace(",", ""))
                continue
            if pick is None:
                obj = re.search(r"\[([^]]*)\]\s*$", ln)
                name = os.path.basename(obj.group(1)) if obj else "?"
                by_object[name] = by_object.get(name, 0) + int(m.group(1).replace(",", ""))
            m = re.match(r"\s*[\d,]+ \(\s*[\d.]+%\)\s+(\S+)", ln)
            fn = re.sub(r"^.*?build/\.\./", "", m.group(1))
            if (pick is None or pick.search(m.group(1))) and fn not in seen:
                seen.add(fn)
                lines.append(ln.replace("/usr/lib/x86_64-linux-gnu/", ""))
        sections.append(f"{title}:\n\n```\n" + "\n".join(lines[:top]) + "\n```\n")
    if total:
        shares = sorted(by_object.items(), key=lambda kv: -kv[1])
        sections.insert(0, "Instructions by object (exclusive): " + ", ".join(
            f"{name} {v / total * 100:.1f}%" for name, v in shares if v / total >= 0.0005)
            + ".\n")
    return ("\n## relabel's profile (callgrind)\n\n"
            f"{small['n_sess']} sessions on each port ({small['parallel']} in parallel) and "
            f"{small['bulk_n']} × {small['bulk_size'] / 1048576:.0f} MiB in one implicit-TLS "
            "session, instructions counted by valgrind --tool=callgrind.\n\n"
            + "\n".join(sections))


def measure_idle(fe, sink, certs, n, parallel, procs):
    """PSS of the front end's processes with n idle sessions, minus before."""
    base = fe.pss_kb()
    argv = loadgen(certs, "idle", fe.ports["implicit"], "implicit",
                   ["-n", n, "-P", parallel, "-S", 8])
    p = procs.start(f"idle-{fe.name}", argv, stdout=subprocess.PIPE, stdin=subprocess.PIPE)
    t0 = time.monotonic()
    # loadgen gives up on a front end that stops answering (30 s per
    # session, 10 failures in a row per thread); this only guards the bench.
    if not select.select([p.stdout], [], [], 1800)[0]:
        procs.stop(p)
        raise RuntimeError(f"no idle sessions after {time.monotonic() - t0:.0f} s")
    line = p.stdout.readline().decode()
    opened = int(line.split()[1]) if line.startswith("idle ") else 0
    time.sleep(1.0)
    loaded = fe.pss_kb()
    up_open = sink.stats()["open"]
    setup = time.monotonic() - t0
    p.stdin.close()
    rest = p.stdout.read().decode()
    p.wait(300)
    res = parse_result(rest)
    # Let the front end release what the sessions held before the next one.
    end = time.monotonic() + 30
    while sink.stats()["open"] > 0 and time.monotonic() < end:
        time.sleep(0.1)
    per = (loaded - base) / opened if opened else float("nan")
    return {"opened": opened, "failed": int(res["failed"]), "base_kb": base,
            "loaded_kb": loaded, "kb_per_session": per, "upstream_open": up_open,
            "setup_s": setup}


def measure_latency(port, certs, count, name, parallel):
    argv = loadgen(certs, "latency", port, "implicit", ["-n", count, "-P", parallel],
                   name=name)
    r = subprocess.run(argv, capture_output=True, text=True, timeout=300)
    res = parse_result(r.stdout)
    return float(res["p50_us"]), float(res["p99_us"])


def crypto_floor(seconds):
    out = subprocess.run([os.path.join(BUILD, "bench", "crypto_floor"), str(seconds)],
                         capture_output=True, text=True, check=True).stdout
    return {line.split()[1]: float(line.split()[2]) for line in out.splitlines()}


def floor_cipher(openssl_name):
    """crypto_floor's name for a negotiated cipher suite."""
    n = openssl_name.upper()
    if "CHACHA20" in n:
        return "CHACHA20-POLY1305"
    if "AES128-GCM" in n or "AES_128_GCM" in n or "AES-128-GCM" in n:
        return "AES-128-GCM"
    if "AES256-GCM" in n or "AES_256_GCM" in n or "AES-256-GCM" in n:
        return "AES-256-GCM"
    return None


# ---------------------------------------------------------------- report

def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def fmt(v, digits=2):
    if v is None:
        return "—"
    if v >= 100:
        return f"{v:.0f}"
    return f"{v:.{digits}f}"


def ratio(v, ref):
    if v is None or ref is None or ref == 0:
        return "—"
    return f"{v / ref:.2f}×"


def machine():
    model = "?"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return f"{os.cpu_count()} CPUs ({model}), {platform.system()} {platform.release()}"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small sizes, about two minutes")
    ap.add_argument("--repeats", type=int, default=3, help="runs per figure; the median counts")
    ap.add_argument("--sessions", type=int, help="sessions per run (default 1000, quick 200)")
    ap.add_argument("--parallel", type=int, default=4, help="sessions at a time")
    ap.add_argument("--bulk-count", type=int, help="messages per bulk run (default 20, quick 8)")
    ap.add_argument("--bulk-size", type=str, help="bytes per bulk message, K/M suffix "
                    "(default 10M, quick 4M)")
    ap.add_argument("--bulk-parallel", type=int, default=1, help="bulk sessions at a time")
    ap.add_argument("--idle", type=str, help="idle session counts (default 1000,10000; "
                    "quick 1000)")
    ap.add_argument("--postfix-idle-max", type=int, default=1000,
                    help="largest idle count for Postfix (one smtpd process per session)")
    ap.add_argument("--latency-count", type=int, help="NOOPs per latency run "
                    "(default 5000, quick 1000)")
    ap.add_argument("--latency-parallel", type=int, default=1)
    ap.add_argument("--floor-seconds", type=float, help="CPU seconds per crypto figure")
    ap.add_argument("--peers", default=",".join(PEERS), help="comma-separated subset")
    ap.add_argument("--only", default="floor,sessions,bulk,latency,idle,profile",
                    help="comma-separated subset of the measurements; 'profile' runs relabel "
                    "under valgrind --tool=callgrind for a few sessions and one bulk session, "
                    "and reports where its instructions go")
    ap.add_argument("--no-install", action="store_true", help="never call apt-get")
    ap.add_argument("--no-variants", action="store_true",
                    help="skip relabel's variants in the sessions runs (workers = 1; "
                    "workers = auto with upstream resumption)")
    ap.add_argument("--out", default=os.path.join(ROOT, "bench", "RESULTS.md"),
                    help="markdown report ('-' for none)")
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = ap.parse_args()

    q = args.quick
    n_sess = args.sessions or (200 if q else 1000)
    bulk_n = args.bulk_count or (8 if q else 20)
    size_s = args.bulk_size or ("4M" if q else "10M")
    mult = {"K": 1024, "M": 1024 * 1024, "G": 1024 ** 3}
    bulk_size = int(size_s[:-1]) * mult[size_s[-1].upper()] if size_s[-1].isalpha() \
        else int(size_s)
    idle_counts = [int(x) for x in (args.idle or ("1000" if q else "1000,10000")).split(",")]
    lat_n = args.latency_count or (1000 if q else 5000)
    floor_s = args.floor_seconds or (0.3 if q else 1.0)
    peers = [p for p in args.peers.split(",") if p]
    if "relabel" not in peers:
        peers.insert(0, "relabel")
    only = set(args.only.split(","))
    cfg = {"n_sess": n_sess, "parallel": args.parallel, "bulk_n": bulk_n,
           "bulk_size": bulk_size, "bulk_parallel": args.bulk_parallel}

    if not args.no_install:
        ensure_packages(peers)
    else:
        stop_system_services([PEER_PKGS[p] for p in peers if p in PEER_PKGS])
    build()
    max_idle = max(idle_counts) if "idle" in only else 0
    nofile = raise_nofile(4 * max_idle + 4096)
    log(f"descriptors per process: {nofile}")

    tmp = tempfile.mkdtemp(prefix="relabel-bench-")
    os.chmod(tmp, 0o755)  # Postfix's unprivileged daemons read its files
    procs = Procs(tmp)
    fes = {}
    variants = {}  # relabel run other ways (sessions only), by label
    results = {}  # (measurement, peer) -> list of run dicts
    profile = None
    notes = []
    cmdline = "sudo /usr/bin/python3 bench/" + " ".join(
        [os.path.basename(sys.argv[0])] + sys.argv[1:])

    def interrupted(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupted)
    try:
        certs = os.path.join(tmp, "certs")
        subprocess.run(["bash", os.path.join(ROOT, "certs", "gen-test-certs.sh"), certs],
                       check=True, stdout=subprocess.DEVNULL)
        os.chmod(certs, 0o755)
        floor = crypto_floor(floor_s) if "floor" in only else None
        sink = Sink(procs, certs)
        # relabel once more per variant, sessions only: one event loop
        # instead of one per CPU, and upstream resumption (a second sink
        # that allows it).  The peers and "relabel" itself face the sink
        # that refuses resumption.
        if "sessions" in only and not args.no_variants:
            sink_r = Sink(procs, certs, resume=True)
            for label, workers, vsink in (("relabel-w1", 1, sink),
                                          ("relabel-resume", "auto", sink_r)):
                fe = Relabel(procs, certs, vsink, workers=workers, label=label)
                try:
                    fe.start(1000)
                    variants[label] = fe
                    log(f"{label}: {fe.ports}")
                except Exception as e:
                    notes.append(f"{label} could not be started: {e}")
                    log(f"{label} could not be started: {e}")
                    fe.stop()
        for p in peers:
            fe = CLASSES[p](procs, certs, sink)
            try:
                fe.start(max(max_idle, 1000))
                fes[p] = fe
                log(f"{p}: {fe.ports}")
            except Exception as e:  # reported, the others still run
                notes.append(f"{p} could not be started: {e}")
                log(f"{p} could not be started: {e}")
                fe.stop()
        runners = dict(fes, **variants)
        for rep in range(args.repeats):
            order = list(runners)[rep % len(runners):] + list(runners)[:rep % len(runners)]
            for tls in ("implicit", "starttls"):
                for p in order:
                    fe = runners[p]
                    if tls not in fe.modes:
                        continue
                    for kind in ("sessions", "bulk"):
                        if kind in only and (p in fes or kind == "sessions"):
                            r = run_kind(kind, fe, fe.sink, certs, tls, cfg)
                            results.setdefault((f"{kind}-{tls}", p), []).append(r)
                            log(f"rep {rep + 1} {kind:8} {tls:8} {p:8} FE {r['fe_cpu']:.2f} s "
                                f"client {r['client_cpu']:.2f} s sink {r['sink_cpu']:.2f} s "
                                f"wall {r['wall']:.2f} s ok {r['ok']} delivered "
                                f"{r['delivered']} up-hs {r['up_handshakes']} "
                                f"resumed {r['up_resumed_sink']} ciphers "
                                f"{r['client_cipher']} / {r['up_cipher']}")
        if "latency" in only:
            for rep in range(args.repeats):
                d50, d99 = measure_latency(sink.ports["implicit"], certs, lat_n,
                                           "smtp.mailgun.org", args.latency_parallel)
                results.setdefault(("latency", "direct"), []).append((d50, d99))
                for p, fe in fes.items():
                    f50, f99 = measure_latency(fe.ports["implicit"], certs, lat_n,
                                               "smtp.example.com", args.latency_parallel)
                    results.setdefault(("latency", p), []).append((f50, f99))
                    log(f"rep {rep + 1} latency {p:8} p50 {f50:.0f} µs p99 {f99:.0f} µs "
                        f"(direct {d50:.0f} / {d99:.0f})")
        if "profile" in only:
            profile = run_profile(procs, certs, sink, cfg)
        if "idle" in only:
            for n in idle_counts:
                for p, fe in fes.items():
                    if p == "postfix" and n > args.postfix_idle_max:
                        continue
                    count = n
                    if fe.fds_per_session:
                        count = min(n, (nofile - 1000) // fe.fds_per_session)
                    if count < n:
                        notes.append(f"idle {n}: {p} measured with {count} sessions: it needs "
                                     f"{fe.fds_per_session} descriptors per session in one "
                                     f"process, and the limit here is {nofile} (the hard "
                                     "limit, which needs CAP_SYS_RESOURCE to raise)")
                    try:
                        # A fresh process, so memory kept from an earlier
                        # run does not hide what the sessions need.
                        fe.stop()
                        fe.start(max(max_idle, 1000))
                        r = measure_idle(fe, sink, certs, count, 16, procs)
                    except Exception as e:
                        notes.append(f"idle {n} {p}: {e}")
                        log(f"idle {n} {p}: {e}")
                        continue
                    r["asked"], r["capped"] = n, count < n
                    results[(f"idle-{n}", p)] = [r]
                    log(f"idle {n:6} {p:8} opened {r['opened']} PSS {r['base_kb']} → "
                        f"{r['loaded_kb']} KiB: {r['kb_per_session']:.1f} KiB/session, "
                        f"upstream open {r['upstream_open']}, set-up {r['setup_s']:.1f} s")
    except KeyboardInterrupt:
        log("interrupted")
        raise
    finally:
        for fe in list(fes.values()) + list(variants.values()):
            fe.stop()
        procs.stop_all()
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            log(f"kept {tmp}")

    report = render(results, floor, fes, peers, notes, cmdline, locals())
    if profile:
        report += profile
    print(report)
    if args.out != "-":
        with open(args.out, "w") as f:
            f.write(report)
        log(f"wrote {args.out}")
    return 0


def render(results, floor, fes, peers, notes, cmdline, cfg):
    """The markdown report."""
    peers = [p for p in peers if p in fes]
    out = []
    w = out.append
    w("# relabel benchmark results\n")
    w(f"- date: {datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}")
    w(f"- machine: {machine()}; shared and noisy, so CPU-seconds and ratios count, "
      "not wall times")
    w("- versions: " + "; ".join(CLASSES[p].version() for p in peers))
    w(f"- client and upstream: bench/loadgen and bench/sink (OpenSSL {dpkg_version('libssl3')}), "
      "TLS 1.2 on every leg; the client never resumes a session, and the sink refuses "
      "resumption except where a row says \"upstream resumption\"")
    w(f"- relabel: `workers = auto` ({os.cpu_count()} event loops here) unless a row says "
      "otherwise")
    w(f"- command: `{cmdline}`")
    w(f"- sizes: {cfg['n_sess']} sessions × {cfg['args'].repeats} repeats, "
      f"{cfg['args'].parallel} in parallel, ~1 KB message; bulk {cfg['bulk_n']} × "
      f"{cfg['bulk_size'] / 1048576:.0f} MiB in {cfg['args'].bulk_parallel} session(s); "
      f"latency {cfg['lat_n']} NOOPs; idle {', '.join(map(str, cfg['idle_counts']))} sessions")
    w("")
    w("Every figure is the median of the repeats; `×` is the peer's figure divided by "
      "relabel's (above 1: the peer costs more). CPU is utime+stime of all the front end's "
      "processes (/proc/PID/stat). GB = 10^9 bytes of message data.\n")

    def row(label, key, fn, better="lower"):
        vals = {p: fn(results.get((key, p))) for p in peers}
        ref = vals.get("relabel")
        cells = []
        for p in peers:
            v = vals[p]
            cells.append(fmt(v) if p == "relabel" else f"{fmt(v)} ({ratio(v, ref)})")
        w(f"| {label} | " + " | ".join(cells) + " |")
        return vals

    def cpu_per_1000(runs):
        return med([r["fe_cpu"] / r["count"] * 1000 for r in runs]) if runs else None

    def rate(runs):
        return med([r["count"] / r["wall"] for r in runs]) if runs else None

    def cpu_per_gb(runs):
        return med([r["fe_cpu"] / (r["bytes"] / 1e9) for r in runs]) if runs else None

    def mbps(runs):
        return med([r["bytes"] / 1e6 / r["wall"] for r in runs]) if runs else None

    def kb(runs):
        return runs[0]["kb_per_session"] if runs and runs[0]["opened"] else None

    def lat(i, runs):
        if not runs:
            return None
        d = results.get(("latency", "direct"))
        return med([r[i] - dr[i] for r, dr in zip(runs, d)])

    rl, gb = {}, {}  # relabel / floor, per session and per GB
    floors = {}  # CPU-s per 1000 sessions: full handshakes, client's only
    w("## Figures\n")
    w("| figure | " + " | ".join(peers) + " |")
    w("|---|" + "---|" * len(peers))
    for tls in ("implicit", "starttls"):
        port = "465" if tls == "implicit" else "587"
        row(f"sessions {port}: CPU-s per 1000", f"sessions-{tls}", cpu_per_1000)
        row(f"sessions {port}: sessions/s (wall)", f"sessions-{tls}", rate)
    for tls in ("implicit", "starttls"):
        port = "465" if tls == "implicit" else "587"
        row(f"bulk {port}: CPU-s per GB", f"bulk-{tls}", cpu_per_gb)
        row(f"bulk {port}: MB/s (wall)", f"bulk-{tls}", mbps)
    for n in cfg["idle_counts"]:
        row(f"idle {n}: KiB per session (PSS)", f"idle-{n}", kb)
    direct = results.get(("latency", "direct"))
    if direct:
        d50, d99 = med([d[0] for d in direct]), med([d[1] for d in direct])
        row(f"NOOP round trip p50 µs (direct to sink: {d50:.0f})", "latency",
            lambda r: med([x[0] for x in r]) if r else None)
        row(f"NOOP round trip p99 µs (direct to sink: {d99:.0f})", "latency",
            lambda r: med([x[1] for x in r]) if r else None)
        row("latency added by the front end, p50 µs", "latency", lambda r: lat(0, r))
    w("")

    if floor:
        w("## The floor (mbedTLS 2.28, this machine, one core)\n")
        w("| primitive | speed |")
        w("|---|---|")
        for k, v in floor.items():
            if k.startswith("SSL-"):
                continue  # memory: in the idle section
            unit = "MiB/s" if k in ("CHACHA20-POLY1305", "AES-128-GCM", "AES-256-GCM") else "ops/s"
            w(f"| {k} | {v:.0f} {unit} |")
        w("")
        hs = (1 / floor["ECDSA-P256-sign"] + 2 / floor["ECDSA-P256-verify"]
              + 2 / floor["ECDH-x25519"])
        hs_p256 = (1 / floor["ECDSA-P256-sign"] + 2 / floor["ECDSA-P256-verify"]
                   + 2 / floor["ECDH-P256"])
        hs_pk = (1 / floor["ECDSA-P256-sign-pk"] + 2 / floor["ECDSA-P256-verify-pk"]
                 + 2 / floor["ECDH-x25519"])
        w(f"Per session, with ECDSA P-256 certificates on both legs: one server handshake "
          f"(ECDHE + one ECDSA sign) and one client handshake (ECDHE + two ECDSA verifies: "
          f"the key exchange and the certificate): **{hs * 1000:.2f} CPU-s per "
          f"1000 sessions** with x25519, {hs_p256 * 1000:.2f} with P-256. Through mbedTLS's "
          f"pk layer, which its TLS code calls (the `-pk` lines: it works on a fresh copy of "
          f"the key's curve each time, so the base point's precomputation is apparently "
          f"redone for every signature and verification), the same handshakes need "
          f"**{hs_pk * 1000:.2f}**: with Debian's build (no MBEDTLS_SSL_ASYNC_PRIVATE) a "
          "caller of mbedtls_ssl_handshake cannot go below that without resumption.")
        pk = {}
        for tls in ("implicit", "starttls"):
            runs = results.get((f"sessions-{tls}", "relabel"))
            if runs:
                rl[tls] = cpu_per_1000(runs) / (hs * 1000)
                pk[tls] = cpu_per_1000(runs) / (hs_pk * 1000)
        if rl:
            w("relabel / handshake floor: " + ", ".join(f"{k} {v:.2f}×" for k, v in rl.items())
              + "; relabel / pk-layer floor: "
              + ", ".join(f"{k} {v:.2f}×" for k, v in pk.items()) + ".")
        # With the upstream leg resumed, only the client's handshake is
        # full: one ECDHE and one signature.
        hs_res = 1 / floor["ECDSA-P256-sign"] + 1 / floor["ECDH-x25519"]
        hs_res_pk = 1 / floor["ECDSA-P256-sign-pk"] + 1 / floor["ECDH-x25519"]
        floors = {"full": hs * 1000, "full_pk": hs_pk * 1000, "server": hs_res * 1000,
                  "server_pk": hs_res_pk * 1000}
        w(f"\nWith the upstream leg resumed (the client still never resumes), only the "
          f"client's handshake is full: one ECDHE and one signature, **{hs_res * 1000:.2f} "
          f"CPU-s per 1000 sessions** ({hs_res_pk * 1000:.2f} through the pk layer); the "
          "issue's target is to go below the full handshake floor above.")
        for tls in ("implicit", "starttls"):
            runs = results.get((f"bulk-{tls}", "relabel"))
            if not runs:
                continue
            c1, c2 = floor_cipher(runs[0]["client_cipher"]), floor_cipher(runs[0]["up_cipher"])
            if c1 and c2:
                per_gb = 1e9 / 1048576 * (1 / floor[c1] + 1 / floor[c2])
                w(f"\nPer GB, {tls}: relabel negotiated {c1} with the client and {c2} with the "
                  f"upstream; one decrypt + one encrypt = **{per_gb:.2f} CPU-s per GB**; "
                  f"relabel spent {cpu_per_gb(runs):.2f} = {cpu_per_gb(runs) / per_gb:.2f}× "
                  "the floor.")
                gb[tls] = cpu_per_gb(runs) / per_gb
        w("")

    variants = [("relabel", "auto", "refused")] + [
        (label, fe.workers, "allowed" if fe.sink.resume else "refused")
        for label, fe in cfg["variants"].items()]
    res_share = {}  # tls -> (CPU-s per 1000, share of upstream legs resumed), with resumption
    if any(results.get((f"sessions-{t}", v[0])) for t in ("implicit", "starttls")
           for v in variants[1:]):
        w("## relabel: one event loop or one per CPU, upstream resumption or not\n")
        w("The same sessions as above (sessions runs, interleaved with the peers'), through "
          "relabel configured three ways. Resumed upstream legs are counted twice: from "
          "relabel's session end lines (`up_resumed=`) and by the sink (OpenSSL's "
          "SSL_session_reused). The client never resumes, so the client-facing handshake "
          "is always a full one.\n")
        w("The last but one column compares with the floor of the handshakes each run did: "
          "a full one on both legs for every session, except the share of upstream legs "
          "that resumed, where only the client's counts.\n")
        w("| relabel | workers | sink resumption | port | CPU-s per 1000 | × full handshake "
          "floor | × floor of its handshakes | sessions/s (wall) | upstream legs resumed (log) "
          "| resumed (sink) |")
        w("|---|---|---|---|---|---|---|---|---|---|")
        for label, workers, sres in variants:
            for tls in ("implicit", "starttls"):
                runs = results.get((f"sessions-{tls}", label))
                if not runs:
                    continue
                c1000 = cpu_per_1000(runs)
                yes = sum(r["up_resumed_log"] or 0 for r in runs)
                no = sum(r["up_full_log"] or 0 for r in runs)
                share = yes / (yes + no) if yes + no else None
                sink_share = (sum(r["up_resumed_sink"] for r in runs)
                              / max(1, sum(r["up_handshakes"] for r in runs)))
                fl = ratio(c1000, floors.get("full")) if floors else "—"
                own = ratio(c1000, floors["full"] * (1 - share) + floors["server"] * share) \
                    if floors and share is not None else "—"
                w(f"| {label} | {workers} | {sres} | {'465' if tls == 'implicit' else '587'} | "
                  f"{fmt(c1000)} | {fl} | {own} | {fmt(rate(runs))} | "
                  f"{'—' if share is None else f'{share * 100:.1f}%'} ({yes} of {yes + no}) | "
                  f"{sink_share * 100:.1f}% |")
                if sres == "allowed" and share is not None:
                    res_share[tls] = (c1000, share)
        w("")

    # Issue 5's targets, checked against this run.
    checks = []

    def check(text, ok):
        checks.append(f"| {text} | {'met' if ok else '**not met**'} |")

    for tls, v in gb.items():
        check(f"CPU per GB ≤ 1.25× the floor ({tls}: {v:.2f}×)", v <= 1.25)
    for tls, v in rl.items():
        check(f"CPU per 1000 sessions ≤ 1.25× the handshake floor, no resumption "
              f"({tls}: {v:.2f}× the bare primitives)", v <= 1.25)
    for tls, (c1000, share) in res_share.items():
        if floors:
            check(f"CPU per 1000 sessions below the handshake floor with upstream resumption "
                  f"({tls}: {c1000:.2f} vs {floors['full']:.2f}, "
                  f"{c1000 / floors['full']:.2f}×; {share * 100:.1f}% of upstream legs "
                  "resumed)", c1000 < floors["full"])
    for peer in ("stunnel", "postfix"):
        if peer not in peers:
            continue
        for label, key, fn in (("CPU per 1000 sessions 465", "sessions-implicit", cpu_per_1000),
                               ("CPU per 1000 sessions 587", "sessions-starttls", cpu_per_1000),
                               ("CPU per GB 465", "bulk-implicit", cpu_per_gb),
                               ("CPU per GB 587", "bulk-starttls", cpu_per_gb),
                               *((f"memory per idle session ({k[5:]})", k, kb)
                                 for k in sorted({k for k, _ in results if k.startswith("idle-")}))):
            mine, theirs = fn(results.get((key, "relabel"))), fn(results.get((key, peer)))
            if mine is not None and theirs is not None:
                check(f"below {peer}: {label} ({fmt(mine)} vs {fmt(theirs)})", mine < theirs)
    lat_runs = results.get(("latency", "relabel"))
    if lat_runs:
        v = lat(1, lat_runs)
        check(f"added p99 latency per command < 1 ms on loopback ({fmt(v)} µs)", v < 1000)
    big = [results[k][0] for k in results if k[1] == "relabel" and k[0].startswith("idle-")]
    if big:
        r = max(big, key=lambda r: r["opened"])
        limit = "; the descriptor limit here allowed no more" if r.get("capped") else ""
        check(f"10 000 concurrent idle sessions held (relabel held {r['opened']} of "
              f"{r.get('asked', r['opened'])} asked, {r['kb_per_session']:.0f} KiB each{limit})",
              r["opened"] >= 10000)
    if checks:
        w("## Targets of issue 5, in this run\n")
        w("| target | |")
        w("|---|---|")
        out.extend(checks)
        w("")
        ways = in_the_way(results, floor, floors, rl, cpu_per_1000, cpu_per_gb, res_share)
        if ways:
            w("## What stands in the way of the targets not met\n")
            out.extend(f"- {x}" for x in ways)
            w("")

    w("## Was the front end the bottleneck?\n")
    w("Medians per run: the front end's CPU (and the kernel's share of it: system calls, "
      "loopback TCP), the client's (bench/loadgen, getrusage) and the upstream sink's, and "
      "the front end's CPU divided by wall time (1.0 = one core busy).\n")
    w("| run | peer | FE CPU-s | of it kernel | client CPU-s | sink CPU-s | FE CPU / wall | "
      "upstream handshakes per session | ciphers client / upstream |")
    w("|---|---|---|---|---|---|---|---|---|")
    for key in ("sessions-implicit", "sessions-starttls", "bulk-implicit", "bulk-starttls"):
        for p in peers + list(cfg["variants"]):
            runs = results.get((key, p))
            if not runs:
                continue
            hs = med([r["up_handshakes"] / r["count"] for r in runs]) if "count" in runs[0] \
                else None
            w(f"| {key} | {p} | {fmt(med([r['fe_cpu'] for r in runs]))} | "
              f"{fmt(med([r['fe_sys'] for r in runs]))} | "
              f"{fmt(med([r['client_cpu'] for r in runs]))} | "
              f"{fmt(med([r['sink_cpu'] for r in runs]))} | "
              f"{fmt(med([r['fe_cpu'] / r['wall'] for r in runs]))} | {fmt(hs)} | "
              f"{runs[0]['client_cipher']} / {runs[0]['up_cipher']} |")
    bad = [(k, p) for (k, p), runs in results.items() if isinstance(runs, list) and runs
           and isinstance(runs[0], dict) and "ok" in runs[0]
           and any(r["failed"] or not r["complete"] for r in runs)]
    if bad:
        w("\nRuns with failures or messages that never reached the upstream: "
          + ", ".join(f"{k} {p}" for k, p in bad))
    w("")
    idle_rows = [(k, p, r[0]) for (k, p), r in results.items() if k.startswith("idle-")]
    if idle_rows:
        w("## Idle sessions\n")
        w("| sessions | peer | opened | PSS before KiB | PSS with sessions KiB | KiB/session | "
          "upstream connections open |")
        w("|---|---|---|---|---|---|---|")
        for k, p, r in idle_rows:
            w(f"| {k[5:]} | {p} | {r['opened']} | {r['base_kb']} | {r['loaded_kb']} | "
              f"{r['kb_per_session']:.1f} | {r['upstream_open']} |")
        w("")
        bufs = (floor or {}).get("SSL-RECORD-BUFFERS")
        mine = [r[0]["kb_per_session"] for (k, p), r in results.items()
                if k.startswith("idle-") and p == "relabel" and r[0]["opened"]]
        if bufs and mine:
            w(f"The floor for relabel: its two mbedTLS contexts have fixed 16 KiB input and "
              f"output record buffers in Debian's build, {bufs / 1024:.1f} KiB per session "
              f"in all ({bufs:.0f} bytes, bench/crypto_floor); relabel holds "
              + (f"{min(mine):.1f}" if min(mine) == max(mine)
                 else f"{min(mine):.1f}–{max(mine):.1f}")
              + f" KiB, {min(mine) / (bufs / 1024):.2f}× that. "
              "What is left above it is each context's state (cipher contexts, the "
              "upstream's parsed certificate, the saved session), relabel's session and two "
              "connections (libuv handles) and the allocator's overhead; relabel's own "
              "buffers (each leg's plaintext and ciphertext buffers, the write queue, the "
              "session's batches) are freed once empty while a session is idle.\n")
    if notes:
        w("## Problems in this run\n")
        for n in notes:
            w(f"- {n}")
        w("")
    w(COMPARABILITY)
    return "\n".join(out) + "\n"


def in_the_way(results, floor, floors, rl, cpu_per_1000, cpu_per_gb, res_share):
    """Why the targets not met are not, from this run's figures."""
    ways = []
    if floor and floors and any(v > 1.25 for v in rl.values()):
        pk = {t: cpu_per_1000(results[(f"sessions-{t}", "relabel")]) / floors["full_pk"]
              for t in rl}
        ways.append(
            "CPU per 1000 sessions without resumption: relabel is "
            + ", ".join(f"{t} {v:.2f}×" for t, v in rl.items())
            + " the bare primitives but "
            + ", ".join(f"{t} {v:.2f}×" for t, v in pk.items())
            + f" what mbedTLS's TLS code itself calls: its pk layer signs at "
            f"{floor['ECDSA-P256-sign-pk']:.0f}/s instead of {floor['ECDSA-P256-sign']:.0f}/s "
            f"and verifies at {floor['ECDSA-P256-verify-pk']:.0f}/s instead of "
            f"{floor['ECDSA-P256-verify']:.0f}/s, so the two handshakes alone cost "
            f"{floors['full_pk'] / floors['full']:.2f}× the bare floor before relabel does "
            "anything. Debian's 2.28 build offers no way around it for a caller of "
            "mbedtls_ssl_handshake (no MBEDTLS_SSL_ASYNC_PRIVATE to sign outside the pk "
            "layer); the rest, above the pk-layer floor, is the handshake's other work "
            "(certificate parsing and chain verification, key derivation, the allocator: see "
            "the profile). Upstream resumption removes the client-side ECDHE and both "
            "verifies, which is how the target is met with it.")
    for peer in ("stunnel", "postfix"):
        for t in ("implicit", "starttls"):
            mine = results.get((f"sessions-{t}", "relabel"))
            theirs = results.get((f"sessions-{t}", peer))
            if not (mine and theirs and floors) or cpu_per_1000(mine) < cpu_per_1000(theirs):
                continue
            x = cpu_per_1000(theirs)
            res = res_share.get(t)
            ways.append(
                f"CPU per 1000 sessions ({t}) below {peer}: {peer}'s {x:.2f} CPU-s is "
                f"{x / floors['full']:.2f}× mbedTLS's own handshake floor "
                f"({floors['full']:.2f}), so its OpenSSL does the same handshakes in less "
                "than mbedTLS 2.28's bare primitives need: no caller of this library can "
                "match it with full handshakes"
                + (f"; with upstream resumption relabel spends {res[0]:.2f} "
                   f"({'below' if res[0] < x else 'still above'} {peer})" if res else "")
                + ".")
        for t in ("implicit", "starttls"):
            mine = results.get((f"bulk-{t}", "relabel"))
            theirs = results.get((f"bulk-{t}", peer))
            if not (mine and theirs) or cpu_per_gb(mine) < cpu_per_gb(theirs):
                continue
            c1 = floor_cipher(mine[0]["client_cipher"]) if floor else None
            c2 = floor_cipher(mine[0]["up_cipher"]) if floor else None
            per_gb = 1e9 / 1048576 * (1 / floor[c1] + 1 / floor[c2]) if c1 and c2 else None
            x, m = cpu_per_gb(theirs), cpu_per_gb(mine)
            if m <= 1.05 * x:
                why = (f"; relabel's {m:.2f} is {m / x:.2f}× that, within this machine's "
                       "run-to-run noise (CPU is counted in 10 ms ticks)")
            elif per_gb:
                why = (f", {x / per_gb:.2f}× mbedTLS's floor for the same bytes ({per_gb:.2f}): "
                       "OpenSSL's AES-GCM with AES-NI; relabel is at "
                       f"{m / per_gb:.2f}× that floor, so most of the gap is the library")
            else:
                why = ""
            ways.append(f"CPU per GB ({t}) below {peer}: {peer} spends {x:.2f} CPU-s per GB"
                        + why + ".")
    lat, direct = results.get(("latency", "relabel")), results.get(("latency", "direct"))
    if lat and direct:
        p99 = med([r[1] - d[1] for r, d in zip(lat, direct)])
        p50 = med([r[0] - d[0] for r, d in zip(lat, direct)])
        if p99 >= 1000:
            ways.append(
                f"Added p99 latency: {p99:.0f} µs in this run, with {p50:.0f} µs added at p50 "
                "and the per-repeat p99s "
                + ", ".join(f"{r[1]:.0f}" for r in lat)
                + " µs (direct to the sink: " + ", ".join(f"{d[1]:.0f}" for d in direct)
                + " µs): one NOOP at a time, so the tail is the shared machine's scheduler "
                "as much as relabel (see Comparability); compare runs, not one figure.")
    big = [r[0] for (k, p), r in results.items() if p == "relabel" and k.startswith("idle-")]
    if big and max(r["opened"] for r in big) < 10000:
        r = max(big, key=lambda r: r["opened"])
        ways.append(
            f"10 000 idle sessions: this run asked for {r.get('asked', r['opened'])} and "
            f"relabel held {r['opened']}"
            + (" (the descriptor limit: two per session in one process, and raising the hard "
               "limit needs CAP_SYS_RESOURCE)" if r.get("capped") else "")
            + f"; at {r['kb_per_session']:.0f} KiB each, 10 000 need about "
            f"{r['kb_per_session'] * 10000 / 1024:.0f} MiB.")
    return ways


COMPARABILITY = """## Comparability

- **Same work on the wire.** Every front end terminates the client's TLS with the
  same ECDSA P-256 certificate for smtp.example.com and opens a verified TLS
  connection (test CA, name smtp.mailgun.org) to the same sink. Client and sink
  cap TLS at 1.2 (all that relabel's mbedTLS 2.28 speaks) and never resume a
  session, so every leg is a full handshake for every peer (the one exception,
  labelled, is relabel's "upstream resumption" variant: a second sink that
  issues tickets and caches sessions, as a provider does). The ciphers are each
  front end's own choice and are listed above: HAProxy, stunnel and Postfix use
  OpenSSL with AES-NI, whose AES-GCM is an order of magnitude faster than
  mbedTLS's, so most of their lead per GB is the library (compare relabel with
  the floor line, which is mbedTLS's own speed).
- **relabel** relays SMTP: it parses each command and reply, rewrites the
  greeting and EHLO, scans DATA for the end of data and bare line ends. It logs
  one line per session and per message (info). `workers = auto`: one event
  loop per CPU (2 here), each with its own SO_REUSEPORT listeners; the
  variants table also shows it with one loop, and with upstream resumption
  (it keeps the last full, verified session per upstream and offers it on the
  next connection; the client-facing leg stays a full handshake, since the
  client never resumes).
- **HAProxy** (TCP mode, two threads by default) copies bytes: no SMTP, no
  STARTTLS, so it has no 587 figures. Its backend session cache would resume TLS
  sessions to the upstream, but the sink refuses resumption.
- **stunnel** is two services in one process chained over loopback: the
  client-facing service decrypts and sends plaintext to the second, which
  encrypts to the sink; a thread per connection per service. On 587 the
  client-facing service uses `protocol = smtp`: stunnel answers the client's
  EHLO and STARTTLS itself (relaying the upstream's greeting), the upstream
  leg stays implicit TLS. Like HAProxy it does not parse SMTP inside TLS.
  In that mode each session also waits about 0.2 s before stunnel goes on
  (measured here: wall time with no CPU behind it), which caps its 587
  sessions/s; its CPU figures are not affected.
- **Postfix** is a queueing relay: smtpd (a process per session) accepts the
  message into its queue on disk (the temporary directory), and the smtp client
  delivers it later over verified TLS. It could reuse upstream connections (its
  connection cache starts on demand, when a backlog builds), but "upstream
  handshakes per session" shows whether it did in this run. Its CPU is counted
  from the message's arrival until the sink has received every message, over
  all its processes (master, smtpd, cleanup, qmgr, smtp, tlsmgr, ...). It has no
  SASL here (no Cyrus/Dovecot set up), so its sessions skip AUTH (one round
  trip, no crypto); it answers NOOP itself, so its latency is its own, not a
  round trip to the upstream; and it is measured idle only up to
  --postfix-idle-max sessions (one smtpd process each), holding no upstream
  connection while idle.
- **Wall-clock rates** (sessions/s, MB/s) are the whole machine's: client,
  front end and sink share 2 cores, so for the cheap front ends (HAProxy,
  stunnel) the client and the sink bound the rate as much as the front end
  does. The CPU figures do not depend on that.
- **Idle memory** is the growth of the summed PSS of the front end's processes
  after opening the sessions (TLS, EHLO, AUTH done; for relabel, HAProxy and
  stunnel an upstream connection each), divided by the sessions.
- **Latency**: p50 and p99 of NOOP round trips, one session, one NOOP at a
  time, through the front end and straight to the sink; the median over the
  repeats. The added latency is the difference of the p50s. p99 on a shared
  2-core machine mostly measures the scheduler (other processes' bursts), so
  compare it only within one run and with care.
"""


if __name__ == "__main__":
    sys.exit(main())
