#!/usr/bin/python3
"""
relabel's cost per relayed byte and per session, measured on loopback,
next to the crypto floor measured in the same run.

    /usr/bin/python3 bench/relay.py [--mb 256] [--sessions 200] [--parallel 4]

Needs build/relabel and build/bench/crypto_floor (ninja -C build).  The
upstream is the test suite's scripted SMTP server (Python, TLS through
OpenSSL), the client is Python's ssl module: only relabel's own CPU time
(/proc/PID/stat) is counted, so their speed does not enter the figures
except as wall time.  Every relayed byte is decrypted once and encrypted
once, so "floor" is the CPU that mbedTLS alone needs for that, measured by
crypto_floor in this run; the ratio says how much relabel spends on top.
"""
import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests", "e2e"))
import harness as h  # noqa: E402

TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def crypto_floor():
    out = subprocess.run([os.path.join(ROOT, "build", "bench", "crypto_floor")],
                         capture_output=True, text=True, check=True).stdout
    return {line.split()[1]: float(line.split()[2]) for line in out.splitlines()}


def start(certs, upstream):
    ports = {"smtps": h.free_port()}
    cfg = os.path.join(certs, "bench.ini")
    with open(cfg, "w") as f:
        f.write(f"""[relabel]
log_level = info
[listener "smtps"]
listen = 127.0.0.1:{ports['smtps']}
tls = implicit
[brand "example"]
hostname = smtp.example.com
cert = {certs}/brand.crt
key = {certs}/brand.key
upstream = bench
[upstream "bench"]
host = 127.0.0.1
port = {upstream.port}
tls = implicit
verify_name = smtp.mailgun.org
ca_file = {certs}/ca.crt
""")
    rl = h.Relabel(os.path.join(ROOT, "build", "relabel"), cfg, ports)
    rl.start()
    return rl


def one_session(rl, ctx, body):
    c = h.open_session(rl, "implicit", ctx)
    assert c.auth_plain().code == 235
    r = c.send_message(body)
    assert r.code == 250, r
    c.cmd("QUIT")
    c.close()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--mb", type=int, default=256, help="MB relayed in the throughput run")
    ap.add_argument("--sessions", type=int, default=200)
    ap.add_argument("--parallel", type=int, default=4)
    args = ap.parse_args()

    floor = crypto_floor()
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(["bash", os.path.join(ROOT, "certs", "gen-test-certs.sh"), tmp],
                       check=True, capture_output=True)
        up = h.ScriptedUpstream(tmp, tls="implicit").start()
        rl = start(tmp, up)
        ctx = h.client_context(tmp)
        try:
            # Throughput: one session, messages of 32 MB.
            body = h.make_body(32 * 1024 * 1024, b"bench", line_len=998)
            n = max(1, args.mb // 32)
            c = h.open_session(rl, "implicit", ctx)
            c.ls.settimeout(300)
            assert c.auth_plain().code == 235
            cpu0, t0 = cpu_seconds(rl.pid), time.monotonic()
            for _ in range(n):
                assert c.send_message(body).code == 250
            cpu1, t1 = cpu_seconds(rl.pid), time.monotonic()
            c.cmd("QUIT")
            c.close()
            mb = n * len(body) / (1024 * 1024)
            up_cipher = "AES-256-GCM"  # OpenSSL's first choice among relabel's suites
            cl_cipher = "CHACHA20-POLY1305"  # relabel's own first choice
            floor_s = mb / floor[cl_cipher] + mb / floor[up_cipher]
            print(f"crypto floor: {cl_cipher} {floor[cl_cipher]:.0f} MB/s, "
                  f"{up_cipher} {floor[up_cipher]:.0f} MB/s, AES-128-GCM "
                  f"{floor['AES-128-GCM']:.0f} MB/s (mbedTLS, one core)")
            print(f"throughput: {mb:.0f} MB in {t1 - t0:.2f} s wall; relabel CPU "
                  f"{cpu1 - cpu0:.2f} s = {(cpu1 - cpu0) / mb * 1024:.2f} CPU-s/GB; "
                  f"floor {floor_s / mb * 1024:.2f} CPU-s/GB; relabel/floor "
                  f"{(cpu1 - cpu0) / floor_s:.2f}")

            # Sessions: TLS both legs, EHLO, AUTH, 1 KB message, QUIT.
            small = h.make_body(1024, b"s")
            errors = []

            def worker(count):
                try:
                    for _ in range(count):
                        one_session(rl, ctx, small)
                except Exception as e:  # reported below
                    errors.append(e)

            per = args.sessions // args.parallel
            cpu0, t0 = cpu_seconds(rl.pid), time.monotonic()
            threads = [threading.Thread(target=worker, args=(per,)) for _ in range(args.parallel)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(600)
            cpu1, t1 = cpu_seconds(rl.pid), time.monotonic()
            done = per * args.parallel
            if errors:
                print(f"sessions: {len(errors)} failed, first: {errors[0]!r}")
            print(f"sessions: {done} in {t1 - t0:.2f} s wall ({done / (t1 - t0):.0f}/s, "
                  f"{args.parallel} parallel); relabel CPU {(cpu1 - cpu0) / done * 1000:.2f} "
                  f"ms per session (two ECDHE handshakes, one ECDSA P-256 signature, "
                  f"one chain verification)")
        finally:
            rc, killed = rl.stop()
            up.stop()
        if rc != 0 or killed:
            print(f"relabel exited with {rc} (killed: {killed})")
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
