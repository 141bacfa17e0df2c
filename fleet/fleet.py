"""`make fleet`: N cllm appliances, each booted in QEMU as `make run` boots one, behind HAProxy with
fleet/haproxy.cfg, everything on 127.0.0.1. The balancer listens on PORT, box K on PORT+K, HAProxy's
stats page (and its Prometheus exporter, /metrics) on STATS_PORT. Each box's serial console is a pty
of its own (attach with `screen` or `mpremote connect`), also logged to DIR/boxK.log; HAProxy's log
goes to DIR/haproxy.log, and the boxes going down and up are printed here. A box whose QEMU ends
(killed, or powered off from its console) is booted again after RESTART_S, as an appliance's power
supervisor would: it rejoins once its /health answers. Ctrl-C stops HAProxy and every box.

The tests and bench/fleet.py use Fleet and Box from here."""
import argparse
import contextlib
import csv
import http.client
import io
import os
import re
import signal
import subprocess
import sys
import threading
import time

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, os.path.join(ROOT, "tests"))
from qemu import KERNEL, Guest, free_port, qemu_command  # noqa: E402

CONFIG = os.path.join(ROOT, "fleet", "haproxy.cfg")
RESTART_S = 1.0


def haproxy_config(boxes, port, stats_port, slots, text=None):
    """The text of fleet/haproxy.cfg for local boxes: its `server` lines replaced by one per (name,
    host port) with maxconn slots, the balancer's bind by 127.0.0.1:port, the stats page's by
    127.0.0.1:stats_port. Everything else is the file's own."""
    text = open(CONFIG).read() if text is None else text
    lines, servers_at = [], None
    for line in text.splitlines():
        if re.match(r"\s+server\s", line):
            servers_at = len(lines) if servers_at is None else servers_at
            continue
        lines.append(line)
    if servers_at is None:
        raise ValueError("no server lines in the config")
    lines[servers_at:servers_at] = [f"    server {name} 127.0.0.1:{p} maxconn {slots}" for name, p in boxes]
    text = "\n".join(lines) + "\n"
    binds = re.findall(r"^\s+bind\s+(\S+)", text, re.M)
    if len(binds) != 2:
        raise ValueError(f"expected the balancer's and the stats page's bind, found {binds}")
    text = re.sub(r"^(\s+bind\s+)\S+", lambda m, it=iter([port, stats_port]): f"{m.group(1)}127.0.0.1:{next(it)}",
                  text, flags=re.M)
    return text


def http_get(port, path, timeout=5):
    """(status, body bytes) of GET 127.0.0.1:port path."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path, headers={"Connection": "close"})
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


class Box:
    """One appliance: QEMU with the kernel, the model as boot module, port 80 on 127.0.0.1:port."""

    def __init__(self, name, port, model, append="", smp=1, mem="512M", logdir=None, kernel=KERNEL):
        self.name, self.port, self.model, self.append = name, port, model, append
        self.smp, self.mem, self.kernel = smp, mem, kernel
        self.log = os.path.join(logdir, f"{name}.log") if logdir else None
        self.proc = None
        self.pty = None

    def start(self):
        serial = ["-chardev", "pty,id=box" + (f",logfile={self.log},logappend=on" if self.log else "")]
        cmd = qemu_command(modules=[self.model], append=self.append, mem=self.mem, kernel=self.kernel,
                           hostfwd=[f"tcp:127.0.0.1:{self.port}-:80"], smp=self.smp, serial="chardev:box") + serial
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        self.pty = None
        threading.Thread(target=self._qemu_output, args=(self.proc,), daemon=True).start()
        return self

    def _qemu_output(self, proc):
        for line in proc.stdout:
            found = re.search(rb"char device redirected to (\S+) \(label box\)", line)
            if found:
                self.pty = found.group(1).decode()

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def healthy(self):
        try:
            return http_get(self.port, "/health", timeout=2)[0] == 200
        except OSError:
            return False

    def wait_ready(self, timeout=120):
        end = time.monotonic() + timeout
        while not self.healthy():
            if not self.alive():
                raise RuntimeError(f"{self.name}: QEMU ended with status {self.proc.returncode}")
            if time.monotonic() > end:
                raise TimeoutError(f"{self.name}: no /health 200 on port {self.port} after {timeout} s")
            time.sleep(0.2)
        return self

    def kill(self):
        """Power off at once (SIGKILL to QEMU): what the network sees of a box that dies."""
        if self.alive():
            self.proc.kill()
        if self.proc:
            self.proc.wait()


@contextlib.contextmanager
def rpc_workers(n, mem="512M", kernel=KERNEL):
    """n boxes booted as llama.cpp RPC workers (rpc=50052, one CPU, no model), up and listening:
    Guests with .port, the host port forwarded to each one's 50052 (llama-server --rpc 127.0.0.1:PORT)."""
    boxes = []
    try:
        for _ in range(n):
            port = free_port()
            g = Guest(append="rpc=50052", mem=mem, kernel=kernel, timeout=60, hostfwd=[f"tcp:127.0.0.1:{port}-:50052"])
            g.port = port
            boxes.append(g)
        for g in boxes:
            g.expect(rb"llama.cpp RPC worker on port 50052 \(1 thread", timeout=60)
            g.wait_prompt()
        yield boxes
    finally:
        for g in boxes:
            g.close()


class Fleet:
    """n boxes and HAProxy in front. Box K (box1 ...) on port + K (or box_ports[K - 1]), the
    balancer on port, the stats page on stats_port; files (the HAProxy config made, logs) in workdir."""

    def __init__(self, n, port, stats_port, model, append="", smp=1, mem="512M", slots=None,
                 workdir=os.path.join(ROOT, "build", "fleet"), kernel=KERNEL, box_ports=None):
        os.makedirs(workdir, exist_ok=True)
        self.port, self.stats_port, self.workdir = port, stats_port, workdir
        self.slots = slots or self._slots(append)
        box_ports = box_ports or [port + k for k in range(1, n + 1)]
        self.boxes = [Box(f"box{k}", p, model, append, smp, mem, workdir, kernel) for k, p in enumerate(box_ports, 1)]
        self.haproxy = None
        self.config = os.path.join(workdir, "haproxy.cfg")
        self.haproxy_log = os.path.join(workdir, "haproxy.log")
        self.events = []            # HAProxy's lines about boxes going down or up, as they come

    @staticmethod
    def _slots(append):
        found = re.search(r"(?:^|\s)parallel=(\d+)", append)
        return int(found.group(1)) if found else 2     # the kernel's default (frozen/cllm/config.py)

    def start(self, wait=True, timeout=180):
        for box in self.boxes:
            if box.log and os.path.exists(box.log):
                os.remove(box.log)
            box.start()
        with open(self.config, "w") as f:
            f.write(haproxy_config([(b.name, b.port) for b in self.boxes], self.port, self.stats_port, self.slots))
        check = subprocess.run(["haproxy", "-c", "-q", "-f", self.config], capture_output=True, text=True)
        if check.returncode:
            raise RuntimeError(f"haproxy -c {self.config}: {check.stdout}{check.stderr}")
        self.haproxy = subprocess.Popen(["haproxy", "-db", "-f", self.config], stdin=subprocess.DEVNULL,
                                        stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        threading.Thread(target=self._haproxy_output, args=(self.haproxy,), daemon=True).start()
        if wait:
            for box in self.boxes:
                box.wait_ready(timeout)
            self.wait_state({b.name: "UP" for b in self.boxes}, timeout=10)
        return self

    def _haproxy_output(self, proc):
        with open(self.haproxy_log, "ab") as log:
            for line in proc.stdout:
                log.write(line)
                log.flush()
                if re.search(rb"Server \S+ is (DOWN|UP)", line) and not line.startswith(b"<"):   # not the log's copy
                    self.events.append((time.monotonic(), line.decode(errors="replace").strip()))

    def stats(self):
        """HAProxy's view of each box: {name: row of its stats CSV (status, scur, qcur, stot, ...)}."""
        return {r["svname"]: r for r in self._csv() if r["pxname"] == "boxes" and r["svname"] != "BACKEND"}

    def backend(self):
        """The stats CSV's row of the backend as a whole (qcur: requests queued here, ...)."""
        return next(r for r in self._csv() if r["pxname"] == "boxes" and r["svname"] == "BACKEND")

    def _csv(self):
        status, body = http_get(self.stats_port, "/;csv")
        if status != 200:
            raise RuntimeError(f"the stats page answered {status}")
        return list(csv.DictReader(io.StringIO(body.decode().lstrip("# "))))

    def states(self):
        """{box name: "UP", "DOWN", "UP 1/2" (going down), "DOWN 1/2" (coming up), ...}"""
        return {name: row["status"] for name, row in self.stats().items()}

    def wait_state(self, want, timeout):
        """Wait until each named box has the HAProxy status given; the seconds it took."""
        t0 = time.monotonic()
        while True:
            try:
                now = self.states()
            except OSError:
                now = {}
            if all(now.get(name) == s for name, s in want.items()):
                return time.monotonic() - t0
            if time.monotonic() - t0 > timeout:
                raise TimeoutError(f"boxes not {want} after {timeout} s: {now}")
            time.sleep(0.05)

    def stop(self):
        if self.haproxy and self.haproxy.poll() is None:
            self.haproxy.terminate()
            try:
                self.haproxy.wait(5)
            except subprocess.TimeoutExpired:
                self.haproxy.kill()
        for box in self.boxes:
            box.kill()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--boxes", type=int, default=3)
    ap.add_argument("--port", type=int, default=8080, help="the balancer's; box K gets port + K")
    ap.add_argument("--stats-port", type=int, default=8404)
    ap.add_argument("--model", required=True)
    ap.add_argument("--append", default="", help="each box's kernel command line")
    ap.add_argument("--smp", type=int, default=1, help="CPUs per box")
    ap.add_argument("--mem", default="512M", help="RAM per box")
    ap.add_argument("--kernel", default=KERNEL)
    args = ap.parse_args()
    if args.boxes < 1:
        ap.error("--boxes must be at least 1")
    fleet = Fleet(args.boxes, args.port, args.stats_port, args.model, args.append, args.smp, args.mem, kernel=args.kernel)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        fleet.start(wait=False)
        print(f"fleet: {args.boxes} boxes ({args.smp} CPU{'s' * (args.smp > 1)}, {args.mem}, {fleet.slots} slots each) "
              f"booting; HAProxy with {fleet.config}")
        for box in fleet.boxes:
            box.wait_ready(600)
            print(f"  {box.name}: http://127.0.0.1:{box.port}/  console {box.pty} (log {box.log})")
        print(f"balancer: http://127.0.0.1:{args.port}/   stats: http://127.0.0.1:{args.stats_port}/   "
              f"HAProxy's metrics: http://127.0.0.1:{args.stats_port}/metrics   log: {fleet.haproxy_log}")
        print("Ctrl-C stops the fleet")
        shown, down_since = len(fleet.events), {}      # the boxes were down while they booted
        while True:
            for _, line in fleet.events[shown:]:
                print("haproxy:", line.split("]: ", 1)[-1])
            shown = len(fleet.events)
            for box in fleet.boxes:
                if box.alive():
                    continue
                down_since.setdefault(box.name, time.monotonic())
                if time.monotonic() - down_since[box.name] >= RESTART_S:
                    print(f"fleet: {box.name}'s QEMU ended (status {box.proc.returncode}); booting it again")
                    del down_since[box.name]
                    box.start()
                    time.sleep(1)
                    print(f"  {box.name}: console {box.pty}")
            time.sleep(0.2)
    except KeyboardInterrupt:
        pass
    finally:
        print("fleet: stopping HAProxy and the boxes")
        fleet.stop()


if __name__ == "__main__":
    main()
