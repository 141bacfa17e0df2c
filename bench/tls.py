"""What HTTPS costs the appliance: cllm booted with SmolLM2 and a self-signed pair (openssl, EC P-256
and then RSA 2048), HTTPS beside plain HTTP in the same boot, all over 127.0.0.1:

- handshakes per second, a new connection each (handshake, then close), TLS 1.3 and TLS 1.2;
- /health requests per second over HTTPS against plain HTTP (a new connection each: the server
  closes after each answer, so over HTTPS each request pays a handshake);
- a streamed greedy completion's tokens per second over HTTPS against plain HTTP (the rate at which
  events arrive, first token to last; alternated, medians): what TLS costs per token;
- with --profile, where the guest's time goes during EC handshakes (EIP samples through the QEMU
  monitor, as bench/profile.py).

    make bench-tls      (BENCH_SMP=make's SMP CPUs, BENCH_HANDSHAKES=40, BENCH_GEN=32, BENCH_ROUNDS=2)
"""
import bisect
import collections
import http.client
import json
import os
import re
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from compare import MODEL, machine, qemu_command  # noqa: E402
from qemu import Monitor, free_port, kernel_symbols  # noqa: E402
from test_tls import make_pair  # noqa: E402

SMP = int(os.environ.get("BENCH_SMP") or os.cpu_count())
HANDSHAKES = int(os.environ.get("BENCH_HANDSHAKES", 40))
N_GEN = int(os.environ.get("BENCH_GEN", 32))
ROUNDS = int(os.environ.get("BENCH_ROUNDS", 2))
KERNEL = os.environ.get("CLLM_KERNEL", os.path.join(os.path.dirname(__file__), "..", "build", "port", "cllm.elf"))
PROMPT = "Write a short story about a lighthouse keeper who finds a message in a bottle."


class Box:
    """cllm with the pair, plain HTTP on .port and HTTPS on .tls_port."""

    def __init__(self, pair, monitor=None):
        self.port, self.tls_port = free_port(), free_port()
        cert, key = pair
        self.cert = cert
        self.ctx = ssl.create_default_context(cafile=cert)
        cmd = qemu_command(modules=[MODEL, cert, key], mem="1024M", kernel=KERNEL, smp=SMP, monitor=monitor,
                           append=f"tls_cert=/{os.path.basename(cert)} tls_key=/{os.path.basename(key)} n_ctx=2048 "
                                  f"parallel=1 tls_conns=16",
                           hostfwd=[f"tcp:127.0.0.1:{self.port}-:80", f"tcp:127.0.0.1:{self.tls_port}-:443"])
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        end = time.monotonic() + 600
        while True:
            try:
                if self.get("/health", tls=False, timeout=0.5) == 200:
                    break
            except (OSError, http.client.HTTPException):
                pass
            if time.monotonic() > end or self.proc.poll() is not None:
                raise RuntimeError("cllm never answered /health")
            time.sleep(0.05)

    def connection(self, tls, timeout=60):
        if tls:
            return http.client.HTTPSConnection("127.0.0.1", self.tls_port, timeout=timeout, context=self.ctx)
        return http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)

    def get(self, path, tls, timeout=60):
        c = self.connection(tls, timeout)
        try:
            c.request("GET", path)
            r = c.getresponse()
            r.read()
            return r.status
        finally:
            c.close()

    def handshakes(self, n, version):
        """Handshakes per second (a new connection each, closed once the handshake is over) and the
        version they made; version "TLSv1.3" or "TLSv1.2" pins it, None lets the two sides agree."""
        ctx = ssl.create_default_context(cafile=self.cert)
        if version:
            ctx.minimum_version = ctx.maximum_version = getattr(ssl.TLSVersion, version.replace(".", "_"))
        t0 = time.monotonic()
        for _ in range(n):
            with socket.create_connection(("127.0.0.1", self.tls_port), timeout=60) as raw:
                with ctx.wrap_socket(raw, server_hostname="127.0.0.1") as s:
                    got = s.version()
        return n / (time.monotonic() - t0), got

    def health_rate(self, n, tls):
        t0 = time.monotonic()
        for _ in range(n):
            assert self.get("/health", tls) == 200
        return n / (time.monotonic() - t0)

    def stream_rate(self, tls):
        """Tokens per second of a streamed greedy completion, from the first event's arrival to the last's."""
        c = self.connection(tls, timeout=3600)
        body = {"prompt": PROMPT, "n_predict": N_GEN, "temperature": 0, "ignore_eos": True, "cache_prompt": False,
                "stream": True}
        c.request("POST", "/completion", body=json.dumps(body), headers={"Content-Type": "application/json"})
        r = c.getresponse()
        assert r.status == 200, r.status
        arrivals = []
        for line in r:
            if line.startswith(b"data: "):
                event = json.loads(line[6:])
                if event.get("content"):
                    arrivals.append(time.monotonic())
                if event.get("stop"):
                    break
        c.close()
        return (len(arrivals) - 1) / (arrivals[-1] - arrivals[0])

    def close(self):
        self.proc.kill()
        self.proc.wait()


def profile_handshakes(pair, n):
    """The share of the guest's EIP samples (every CPU's) taken in hlt, and (function, share of the
    others) for the 15 most sampled functions, during n EC handshakes."""
    path = f"/tmp/cllm-tls-profile-{os.getpid()}.sock"
    box = Box(pair, monitor=f"unix:{path},server=on,wait=off")
    syms = kernel_symbols(KERNEL)
    starts = [a for a, _ in syms]
    counts, done = collections.Counter(), threading.Event()
    try:
        mon = Monitor(path)

        def sample():
            while not done.is_set():
                for regs in re.split(rb"CPU#\d+", mon.command("info registers -a"))[1:]:
                    if b"HLT=1" in regs:
                        counts["(halted)"] += 1
                        continue
                    i = bisect.bisect_right(starts, int(re.search(rb"EIP=([0-9a-f]+)", regs).group(1), 16)) - 1
                    counts[syms[i][1] if i >= 0 else "?"] += 1
                time.sleep(0.002)

        sampler = threading.Thread(target=sample)
        sampler.start()
        box.handshakes(n, None)
        done.set()
        sampler.join()
    finally:
        box.close()
        if os.path.exists(path):
            os.unlink(path)
    halted = counts.pop("(halted)", 0)
    busy = sum(counts.values())
    return halted / (halted + busy), [(name, count / busy) for name, count in counts.most_common(15)]


def main():
    profile = "--profile" in sys.argv
    print(f"{machine()}; {SMP} CPU(s); SmolLM2; {HANDSHAKES} handshakes, {N_GEN} streamed tokens x {ROUNDS}")
    with tempfile.TemporaryDirectory() as tmp:
        pairs = {kind: make_pair(tmp, kind, kind) for kind in ("ec", "rsa")}
        rows = {}
        for kind, pair in pairs.items():
            box = Box(pair)
            try:
                box.get("/health", tls=True)        # the first handshake pays for translation
                for version in ("TLSv1.3", "TLSv1.2"):
                    rate, got = box.handshakes(HANDSHAKES, version)
                    assert got == version, (got, version)
                    rows[f"{kind} handshakes/s, {version}"] = rate
                if kind == "ec":
                    https, plain = box.health_rate(HANDSHAKES, True), box.health_rate(HANDSHAKES, False)
                    rows["/health req/s, HTTPS / HTTP"] = (https, plain)
                    box.stream_rate(False)          # warm: the first completion after boot pays for page faults
                    streams = {True: [], False: []}
                    for _ in range(ROUNDS):
                        for tls in (False, True):
                            streams[tls].append(box.stream_rate(tls))
                    rows["streamed tok/s, HTTPS / HTTP"] = (statistics.median(streams[True]),
                                                            statistics.median(streams[False]))
            finally:
                box.close()
        print("| | figure | ratio |")
        print("|---|---|---|")
        for name, value in rows.items():
            if isinstance(value, tuple):
                print(f"| {name} | {value[0]:.2f} / {value[1]:.2f} | {value[0] / value[1]:.3f}x |")
            else:
                print(f"| {name} | {value:.2f} | |")
        ec, rsa = rows["ec handshakes/s, TLSv1.3"], rows["rsa handshakes/s, TLSv1.3"]
        print(f"EC P-256 handshakes are {ec / rsa:.2f}x RSA 2048's (TLS 1.3)")
        if profile:
            halted, top = profile_handshakes(pairs["ec"], HANDSHAKES)
            print(f"where the guest's time goes during EC handshakes: {100 * halted:.0f}% of EIP samples in hlt "
                  "(idle CPUs); of the others:")
            for name, share in top:
                print(f"  {100 * share:5.1f}%  {name}")


if __name__ == "__main__":
    main()
