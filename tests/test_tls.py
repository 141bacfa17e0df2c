"""HTTPS (MicroPython's tls module over mbedtls, frozen/cllm/server.py's tls_context) in QEMU with the
tiny GGUF, certificates made by the host's openssl: every route over HTTPS with an EC and an RSA key,
the openai client, curl and Python's ssl verifying the test certificate (and failing without it),
http=on (a key over plain HTTP refused), http=redirect and http=off, a mismatched or missing key at
boot, and bad TLS input (garbage, a truncated ClientHello, a stalled handshake, old protocol versions,
no common cipher, a reset mid-stream, more connections than tls_conns) while /health answers on both
ports. Traffic goes only to 127.0.0.1."""
import base64
import hashlib
import http.client
import json
import os
import socket
import ssl
import struct
import subprocess
import threading
import time

import httpx2
import openai
import pytest

from qemu import Guest, free_port
from test_server import guest_value, repl, request
from tinymodel import make_tiny_model

KEY = "secret"


def make_pair(folder, name, kind):
    """(cert, key) paths of a self-signed certificate for 127.0.0.1 and localhost: kind "ec" (P-256)
    or "rsa" (2048 bits)."""
    cert, key = os.path.join(folder, name + ".pem"), os.path.join(folder, name + ".key")
    new_key = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"] if kind == "ec" else ["-newkey", "rsa:2048"]
    subprocess.run(["openssl", "req", "-x509", *new_key, "-nodes", "-days", "30", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1", "-keyout", key, "-out", cert],
                   check=True, capture_output=True)
    return cert, key


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = str(tmp_path_factory.mktemp("tls"))
    out = {"model": make_tiny_model(os.path.join(folder, "tiny.gguf"))}
    out["ec"] = make_pair(folder, "ec", "ec")
    out["rsa"] = make_pair(folder, "rsa", "rsa")
    out["der"] = (os.path.join(folder, "ec-cert.der"), os.path.join(folder, "ec-key.der"))
    subprocess.run(["openssl", "x509", "-in", out["ec"][0], "-outform", "der", "-out", out["der"][0]], check=True)
    subprocess.run(["openssl", "pkey", "-in", out["ec"][1], "-outform", "der", "-out", out["der"][1]], check=True)
    return out


def boot_tls(files, pair, append, extra=(), **machine):
    """A guest with the model and the pair (cert, key) as boot modules named on the command line;
    .port is plain HTTP's host port, .tls_port HTTPS's."""
    port, tls_port = free_port(), free_port()
    cert, key = pair
    g = Guest(modules=[files["model"], cert, key, *extra], mem="256M", timeout=120,
              append=f"tls_cert=/{os.path.basename(cert)} tls_key=/{os.path.basename(key)} https_port={tls_port} {append}",
              hostfwd=[f"tcp:127.0.0.1:{port}-:80", f"tcp:127.0.0.1:{tls_port}-:443"], **machine)
    g.port, g.tls_port, g.cafile = port, tls_port, cert
    g.expect(rb"serving on [^\r]*\r\n", timeout=120)
    g.boot_log = b"".join(g.log)
    g.wait_prompt()
    return g


@pytest.fixture(scope="module")
def srv(files):
    """EC key, http=on, an API key, at most 4 TLS connections, a 10 s request deadline."""
    g = boot_tls(files, files["ec"], f"n_ctx=512 parallel=2 api_key={KEY} tls_conns=4 timeout=10 cache_prompt=0",
                 extra=files["der"])
    try:
        yield g
    finally:
        g.close()


def context(cafile):
    return ssl.create_default_context(cafile=cafile)


def https(g, method, path, body=None, headers=None, timeout=60, key=KEY):
    """(status, parsed JSON or text, the TLS version) of one request over HTTPS, the certificate verified."""
    c = http.client.HTTPSConnection("127.0.0.1", g.tls_port, timeout=timeout, context=context(g.cafile))
    hdrs = {"Content-Type": "application/json"}
    if key:
        hdrs["Authorization"] = "Bearer " + key
    hdrs.update(headers or {})
    c.request(method, path, body=json.dumps(body).encode() if body is not None else None, headers=hdrs)
    version = c.sock.version()
    r = c.getresponse()
    text = r.read().decode()
    c.close()
    kind = r.getheader("Content-Type", "")
    return r.status, json.loads(text) if kind.startswith("application/json") else text, version


def health_both(g):
    """/health's status over HTTPS and over plain HTTP."""
    return https(g, "GET", "/health", key=None, timeout=30)[0], request(g, "GET", "/health", timeout=30)[0]


def test_boot_log_names_the_key_and_the_entropy_source(srv):
    log = srv.boot_log.decode(errors="replace")
    assert "tls: HTTPS on port 443 (/ec.pem, key EC 256 bits); random seed from " in log, log
    # QEMU's -cpu max has RDRAND and RDSEED
    assert "random seed from RDSEED" in log or "random seed from RDRAND" in log, log
    assert "serving on port 443 (https) and port 80 (http)" in log, log


def test_every_route_over_https(srv):
    status, body, version = https(srv, "GET", "/health", key=None)
    assert (status, body["status"]) == (200, "ok") and version in ("TLSv1.2", "TLSv1.3")
    assert https(srv, "GET", "/v1/models")[1]["data"][0]["id"] == "tiny.gguf"
    assert https(srv, "GET", "/props")[0] == 200
    status, tokens, _ = https(srv, "POST", "/tokenize", {"content": "Once upon a time"})
    assert status == 200 and tokens["tokens"]
    assert https(srv, "POST", "/detokenize", {"tokens": tokens["tokens"]})[1]["content"].strip() == "Once upon a time"
    greedy = {"prompt": "Once upon a time", "n_predict": 8, "temperature": 0}
    status, plain, _ = https(srv, "POST", "/completion", greedy)
    assert status == 200 and plain["tokens_predicted"] == 8
    # streamed (SSE): the same text, piece by piece
    status, text, _ = https(srv, "POST", "/completion", dict(greedy, stream=True))
    pieces = [json.loads(b[len("data: "):]) for b in text.split("\n\n") if b.startswith("data: ")]
    assert status == 200 and "".join(p["content"] for p in pieces) == plain["content"]
    chat = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 4, "temperature": 0}
    assert https(srv, "POST", "/v1/chat/completions", chat)[1]["choices"][0]["message"]["role"] == "assistant"
    assert https(srv, "GET", "/slots")[0] == 200
    status, metrics, _ = https(srv, "GET", "/metrics")
    assert status == 200 and "llamacpp:prompt_tokens_total" in metrics
    status, page, _ = https(srv, "GET", "/", key=None)
    assert status == 200 and "<html" in page.lower()
    assert https(srv, "GET", "/v1/models", key="wrong")[0] == 401


def test_tls_1_3_and_1_2(srv):
    assert https(srv, "GET", "/health", key=None)[2] == "TLSv1.3"
    ctx = context(srv.cafile)
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    c = http.client.HTTPSConnection("127.0.0.1", srv.tls_port, timeout=60, context=ctx)
    c.request("GET", "/health")
    assert c.sock.version() == "TLSv1.2" and c.getresponse().status == 200
    c.close()


def test_cors_preflight_over_https(srv):
    c = http.client.HTTPSConnection("127.0.0.1", srv.tls_port, timeout=60, context=context(srv.cafile))
    c.request("OPTIONS", "/v1/chat/completions", headers={
        "Origin": "https://example.test", "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization, content-type"})
    r = c.getresponse()
    r.read()
    headers = {k.lower(): v for k, v in r.getheaders()}
    c.close()
    assert r.status == 200 and headers["access-control-allow-origin"] in ("*", "https://example.test")


def test_openai_client_verifies_the_certificate(srv):
    http_client = httpx2.Client(verify=context(srv.cafile))
    client = openai.OpenAI(base_url=f"https://127.0.0.1:{srv.tls_port}/v1", api_key=KEY, http_client=http_client)
    reply = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hi"}],
                                           max_tokens=4, temperature=0)
    assert reply.choices[0].message.role == "assistant"
    streamed = client.completions.create(model="tiny", prompt="Once upon a time", max_tokens=6, temperature=0,
                                         stream=True)
    assert len("".join(c.choices[0].text for c in streamed)) > 0
    # SSL_CERT_FILE: the client's own default context
    env = dict(os.environ, SSL_CERT_FILE=srv.cafile)
    code = ("import openai, sys; c = openai.OpenAI(base_url=sys.argv[1], api_key=sys.argv[2]); "
            "print(c.models.list().data[0].id)")
    out = subprocess.run([os.sys.executable, "-c", code, f"https://127.0.0.1:{srv.tls_port}/v1", KEY],
                         env=env, capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "tiny.gguf", out.stderr


def test_curl_with_and_without_the_certificate(srv):
    url = f"https://127.0.0.1:{srv.tls_port}/health"
    ok = subprocess.run(["curl", "-sS", "--cacert", srv.cafile, url], capture_output=True, text=True, timeout=60)
    assert json.loads(ok.stdout)["status"] == "ok", ok.stderr
    untrusted = subprocess.run(["curl", "-sS", url], capture_output=True, text=True, timeout=60)
    assert untrusted.returncode == 60, (untrusted.returncode, untrusted.stderr)     # peer certificate not trusted


def test_a_client_that_does_not_trust_the_certificate_fails(srv):
    with pytest.raises(ssl.SSLCertVerificationError):
        http.client.HTTPSConnection("127.0.0.1", srv.tls_port, timeout=60,
                                    context=ssl.create_default_context()).request("GET", "/health")
    assert health_both(srv) == (200, 200)


def test_plain_http_refuses_a_key_and_says_to_use_https(srv):
    status, body = request(srv, "GET", "/v1/models", headers={"Authorization": "Bearer " + KEY})
    assert status == 401 and f"https://127.0.0.1:{srv.tls_port}/v1/models" in body["error"]["message"], body
    status, body = request(srv, "GET", "/v1/models")       # no key: still refused, the server wants one
    assert status == 401 and "HTTPS only" in body["error"]["message"]
    assert request(srv, "GET", "/health")[0] == 200       # load balancers poll it plain
    status, page = request(srv, "GET", "/")                 # the page, whose calls then get the 401 above
    assert status == 200 and "<html" in page.lower()


def raw_tls(g, data, wait=15):
    """Send data to the TLS port and read until the guest closes: (bytes back, seconds it took)."""
    t0 = time.monotonic()
    with socket.create_connection(("127.0.0.1", g.tls_port), timeout=wait) as s:
        if data:
            s.sendall(data)
        got = b""
        try:
            while True:
                chunk = s.recv(4096)
                if not chunk:
                    break
                got += chunk
        except (ConnectionResetError, TimeoutError, socket.timeout):
            pass
    return got, time.monotonic() - t0


def client_hello():
    """A real ClientHello's bytes (Python's ssl over a socket pair, captured)."""
    a, b = socket.socketpair()
    ctx = ssl.create_default_context()
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    tls = ctx.wrap_socket(a, do_handshake_on_connect=False, server_hostname="localhost")
    tls.setblocking(False)
    try:
        tls.do_handshake()
    except ssl.SSLWantReadError:
        pass
    hello = b.recv(65536)
    tls.close()
    b.close()
    return hello


def test_bad_tls_input_ends_that_connection_and_nothing_else(srv):
    hello = client_hello()
    assert hello[0] == 0x16 and len(hello) > 100
    cases = {
        "garbage": os.urandom(3000),
        "http on the tls port": b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n",
        "truncated ClientHello": hello[:len(hello) // 2],
        "record header claiming 16 MB": b"\x16\x03\x01\xff\xff" + os.urandom(100),
        "stalled before sending anything": b"",
    }
    for name, data in cases.items():
        got, took = raw_tls(srv, data, wait=30)
        # closed by the server: at once, or at the request deadline (timeout=10) for a stalled one
        assert took < 25, (name, took)
        assert health_both(srv) == (200, 200), name


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion")
def test_old_protocols_and_no_common_cipher_are_refused(srv):
    for version in (ssl.TLSVersion.TLSv1, ssl.TLSVersion.TLSv1_1):
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.load_verify_locations(srv.cafile)
        ctx.minimum_version = ctx.maximum_version = version
        ctx.set_ciphers("ALL:@SECLEVEL=0")
        with pytest.raises((ssl.SSLError, ConnectionResetError)):
            http.client.HTTPSConnection("127.0.0.1", srv.tls_port, timeout=30, context=ctx).request("GET", "/health")
    ctx = context(srv.cafile)
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_ciphers("CAMELLIA")         # mbedtls has no Camellia here
    with pytest.raises((ssl.SSLError, ConnectionResetError)):
        http.client.HTTPSConnection("127.0.0.1", srv.tls_port, timeout=30, context=ctx).request("GET", "/health")
    assert health_both(srv) == (200, 200)


def test_a_client_reset_mid_stream(srv):
    ctx = context(srv.cafile)
    raw = socket.create_connection(("127.0.0.1", srv.tls_port), timeout=60)
    s = ctx.wrap_socket(raw, server_hostname="127.0.0.1")
    body = json.dumps({"prompt": "Once upon a time", "n_predict": 200, "stream": True}).encode()
    s.sendall(b"POST /completion HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + KEY.encode() +
              b"\r\nContent-Type: application/json\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
    assert b"data: " in s.recv(4096) + s.recv(4096)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    s.close()                               # RST under the TLS session, no close_notify
    assert health_both(srv) == (200, 200)
    deadline = time.monotonic() + 30        # the slot is given back
    while guest_value(srv, "len(engine.busy_slots())") and time.monotonic() < deadline:
        time.sleep(1)
    assert guest_value(srv, "len(engine.busy_slots())") == 0


def test_connections_past_tls_conns_are_closed_and_memory_is_counted(srv):
    ctx = context(srv.cafile)
    held = [ctx.wrap_socket(socket.create_connection(("127.0.0.1", srv.tls_port), timeout=30),
                            server_hostname="127.0.0.1") for _ in range(4)]
    memory = guest_value(srv, "__import__('tlsport').memory()")
    assert memory["in_use"] > 0 and memory["in_use"] <= memory["limit"], memory
    with pytest.raises((ssl.SSLError, ConnectionResetError, ConnectionAbortedError, OSError)):
        ctx.wrap_socket(socket.create_connection(("127.0.0.1", srv.tls_port), timeout=30), server_hostname="127.0.0.1")
    assert request(srv, "GET", "/health")[0] == 200      # plain HTTP meanwhile
    # the connections held still work
    held[0].sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
    assert b" 200 " in held[0].recv(4096)
    for s in held:
        s.close()
    deadline = time.monotonic() + 20
    while guest_value(srv, "server.app.tls_open") and time.monotonic() < deadline:
        time.sleep(0.5)
    assert https(srv, "GET", "/health", key=None)[0] == 200
    after = guest_value(srv, "__import__('tlsport').memory()")
    assert after["peak"] <= after["limit"] and after["in_use"] < memory["in_use"], (memory, after)
    stats = guest_value(srv, "server.stats()['tls']")
    assert stats["refused"] >= 1 and stats["open"] == 0 and stats["memory"]["limit"] == 4 * 48 * 1024, stats


def test_past_the_memory_cap_a_handshake_fails_and_the_open_connection_works(srv):
    ctx = context(srv.cafile)
    first = ctx.wrap_socket(socket.create_connection(("127.0.0.1", srv.tls_port), timeout=30), server_hostname="127.0.0.1")
    limit = guest_value(srv, "__import__('tlsport').memory()['limit']")
    used = guest_value(srv, "__import__('tlsport').memory()['in_use']")
    repl(srv, f"__import__('tlsport').set_limit({used + 8000})")      # less than one more connection takes
    try:
        with pytest.raises((ssl.SSLError, ConnectionResetError, ConnectionAbortedError, OSError)):
            ctx.wrap_socket(socket.create_connection(("127.0.0.1", srv.tls_port), timeout=30),
                            server_hostname="127.0.0.1")
        assert guest_value(srv, "__import__('tlsport').memory()['refused']") > 0
        first.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        assert b" 200 " in first.recv(4096)
        assert request(srv, "GET", "/health")[0] == 200
    finally:
        first.close()
        repl(srv, f"__import__('tlsport').set_limit({limit})")
    assert https(srv, "GET", "/health", key=None)[0] == 200


def test_unreadable_pairs_are_named_errors(srv):
    """tlsport.check, which the boot runs before serving: what is wrong, in words."""
    repl(srv, "import tlsport; c = open('/ec.pem', 'rb').read(); k = open('/ec.key', 'rb').read()")
    srv.send(b"\x05")                                       # paste mode: no auto-indent
    srv.expect_exact(b"paste mode; Ctrl-C to cancel, Ctrl-D to finish")
    srv.send(b"def why(c, k):\r    try:\r        return tlsport.check(c, k)\r    except ValueError as e:\r"
             b"        return 'ERR ' + str(e)\r\x04")
    srv.wait_prompt()
    for args, expected in (("b'junk', k", "ERR the certificate: X509 - "), ("c, b'junk'", "ERR the key: PK - "),
                           ("c[:300], k", "ERR the certificate: "), ("c, k", "EC 256 bits"),
                           ("open('/ec-cert.der', 'rb').read(), open('/ec-key.der', 'rb').read()", "EC 256 bits")):
        out = repl(srv, f"print(why({args}))").decode(errors="replace")
        assert expected in out, (args, out)
    # DER loads into the tls module as PEM does
    out = repl(srv, "import tls; tls.SSLContext(tls.PROTOCOL_TLS_SERVER).load_cert_chain("
                    "open('/ec-cert.der', 'rb').read(), open('/ec-key.der', 'rb').read()); print('loaded')")
    assert b"loaded" in out, out


def test_stop_and_start_from_the_console_close_and_reopen_both_ports(srv):
    srv.send(b"server.stop()\r")
    srv.expect_exact(b"stopped; server.start() serves again", timeout=30)
    srv.wait_prompt()
    with pytest.raises((ssl.SSLError, OSError)):
        https(srv, "GET", "/health", key=None, timeout=5)
    with pytest.raises(OSError):
        request(srv, "GET", "/health", timeout=5)
    srv.send(b"server.start()\r")
    srv.expect(rb"serving on port 443 \(https\) and port 80 \(http\)", timeout=60)
    srv.wait_prompt()
    assert health_both(srv) == (200, 200)


def test_rsa_key_and_http_redirect(files):
    g = boot_tls(files, files["rsa"], "n_ctx=256 parallel=1 http=redirect")
    try:
        assert "key RSA 2048 bits" in g.boot_log.decode(errors="replace")
        assert "port 80 (http, redirects)" in g.boot_log.decode(errors="replace")
        status, body, version = https(g, "POST", "/completion", {"prompt": "Once", "n_predict": 4}, key=None)
        assert status == 200 and body["tokens_predicted"] == 4 and version == "TLSv1.3"
        c = http.client.HTTPConnection("127.0.0.1", g.port, timeout=60)
        c.request("GET", "/v1/models?x=1", headers={"Host": f"127.0.0.1:{g.port}"})
        r = c.getresponse()
        r.read()
        assert r.status == 308 and r.getheader("Location") == f"https://127.0.0.1:{g.tls_port}/v1/models?x=1"
        assert request(g, "GET", "/health")[0] == 200        # /health stays plain
    finally:
        g.close()


def test_http_off_has_no_plain_port_and_a_cpu_without_rdrand_seeds_from_jitter(files):
    g = boot_tls(files, files["ec"], "n_ctx=256 parallel=1 http=off timeout=3", cpu="max,-rdrand,-rdseed")
    try:
        assert "random seed from timer jitter and the RTC" in g.boot_log.decode(errors="replace")
        assert "serving on port 443 (https)\r\n" in g.boot_log.decode(errors="replace")
        assert https(g, "GET", "/health", key=None)[0] == 200
        with pytest.raises((ConnectionError, http.client.RemoteDisconnected, OSError)):
            request(g, "GET", "/health", timeout=10)
        got, took = raw_tls(g, client_hello()[:40], wait=30)   # the request deadline holds without port 80
        assert took < 10, took
    finally:
        g.close()


def test_a_mismatched_key_is_a_boot_log_error_and_http_still_serves(files):
    pair = (files["ec"][0], files["rsa"][1])        # EC certificate, RSA key
    g = boot_tls(files, pair, f"n_ctx=256 parallel=1 api_key={KEY}")
    try:
        log = g.boot_log.decode(errors="replace")
        assert "tls: cannot serve HTTPS with /ec.pem and /rsa.key: the key is not the certificate's" in log, log
        assert "serving on port 80 (http)" in log
        assert request(g, "GET", "/health")[0] == 200
        status, body = request(g, "GET", "/v1/models", headers={"Authorization": "Bearer " + KEY})
        assert status == 401 and "HTTPS did not start" in body["error"]["message"]
        with pytest.raises((ssl.SSLError, OSError)):      # nothing listens on 443
            https(g, "GET", "/health", key=None, timeout=10)
    finally:
        g.close()


def test_a_missing_module_is_a_boot_log_error(files):
    port = free_port()
    g = Guest(modules=[files["model"]], mem="256M", timeout=120, append="n_ctx=256 tls_cert=/none.pem tls_key=/none.key",
              hostfwd=[f"tcp:127.0.0.1:{port}-:80"])
    g.port = port
    try:
        g.expect(rb"serving on [^\r]*\r\n", timeout=120)
        log = b"".join(g.log).decode(errors="replace")
        assert "tls: cannot serve HTTPS with /none.pem and /none.key: the certificate /none.pem: no such boot module" in log
        g.wait_prompt()
        assert request(g, "GET", "/health")[0] == 200
    finally:
        g.close()


def test_the_pair_baked_into_the_image(files, tmp_path):
    """make image TLS_CERT=... TLS_KEY=...: the pair as two more GRUB modules, named on the image's
    command line (port/mkimage.sh), booted as a CD."""
    root = os.path.join(os.path.dirname(__file__), "..")
    cert, key = files["ec"]
    out = tmp_path / "cllm.iso"
    r = subprocess.run([os.path.join(root, "port", "mkimage.sh"), os.path.join(root, "build", "port", "cllm.elf"),
                        files["model"], str(out), "n_ctx=256 parallel=1 tls_cert=/ec.pem tls_key=/ec.key", cert, key],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    tls_port = free_port()
    g = Guest(image=("cdrom", out), mem="256M", timeout=180, hostfwd=[f"tcp:127.0.0.1:{tls_port}-:443"])
    g.tls_port, g.cafile = tls_port, cert
    try:
        g.expect(rb"serving on port 443 \(https\)", timeout=180)
        assert b"tls: HTTPS on port 443 (/ec.pem, key EC 256 bits)" in b"".join(g.log)
        assert https(g, "GET", "/health", key=None)[:2] == (200, {"status": "ok"})
    finally:
        g.close()


def test_make_run_tls_wires_the_pair_and_the_port():
    """make run TLS=1 (dry run): the test pair as boot modules named on the command line, guest port
    443 forwarded to TLS_PORT, and https_port for redirects."""
    root = os.path.join(os.path.dirname(__file__), "..")
    out = subprocess.run(["make", "-n", "--no-print-directory", "run", "TLS=1", "TLS_PORT=8999", "PORT=8998",
                          "MODEL=/m.gguf"], cwd=root, capture_output=True, text=True, timeout=60).stdout
    line = next(l for l in out.splitlines() if "qemu-system-i386" in l)
    assert "hostfwd=tcp:127.0.0.1:8998-:80,hostfwd=tcp:127.0.0.1:8999-:443" in line, line
    assert '-initrd "/m.gguf,build/tls/cert.pem,build/tls/key.pem"' in line, line
    assert '-append "tls_cert=/cert.pem tls_key=/key.pem https_port=8999' in line, line
    mine = subprocess.run(["make", "-n", "--no-print-directory", "run", "TLS_CERT=/a/site.pem", "TLS_KEY=/a/site.key",
                           "MODEL=/m.gguf"], cwd=root, capture_output=True, text=True, timeout=60).stdout
    assert '-initrd "/m.gguf,/a/site.pem,/a/site.key"' in mine and "tls_cert=/site.pem tls_key=/site.key" in mine
    assert "openssl" not in mine        # no test pair made when the files are given


def spki_sha256(cert):
    """The base64 SHA-256 of a certificate's public key: what Chromium's
    --ignore-certificate-errors-spki-list trusts (as a pinned key, the way to trust one test
    certificate without a system CA store)."""
    pub = subprocess.run(["openssl", "x509", "-pubkey", "-noout", "-in", cert], capture_output=True, check=True).stdout
    der = subprocess.run(["openssl", "pkey", "-pubin", "-outform", "der"], input=pub, capture_output=True,
                         check=True).stdout
    return base64.b64encode(hashlib.sha256(der).digest()).decode()


def test_the_chat_page_in_chromium_over_https(srv, tmp_path):
    from test_page import Browser
    url = f"https://127.0.0.1:{srv.tls_port}/?temperature=0&max_tokens=8"
    untrusting = Browser(str(tmp_path / "untrusting"))
    try:                                    # without the certificate: Chromium's own error page
        untrusting.call("Page.navigate", url=url)
        time.sleep(3)
        assert untrusting.js("location.href").startswith("chrome-error://"), untrusting.js("location.href")
    finally:
        untrusting.close()
    b = Browser(str(tmp_path / "trusting"), extra=[f"--ignore-certificate-errors-spki-list={spki_sha256(srv.cafile)}"])
    try:
        b.call("Page.navigate", url=url)
        b.wait("document.readyState === 'complete' && document.getElementById('model').textContent !== ''")
        assert b.js("location.protocol") == "https:" and b.js("window.isSecureContext")
        b.type_into("key", KEY)
        b.js("document.getElementById('input').focus()")
        b.wait("document.getElementById('model').textContent === 'tiny.gguf'")
        b.type_into("input", "Hello")
        b.click("send")
        b.wait("document.querySelectorAll('.assistant').length === 1 && document.body.dataset.state === 'idle'")
        reply = b.js("document.querySelector('.assistant').textContent")
        chat = {"messages": [{"role": "user", "content": "Hello"}], "temperature": 0, "max_tokens": 8}
        assert reply == https(srv, "POST", "/v1/chat/completions", chat)[1]["choices"][0]["message"]["content"]
    finally:
        b.close()
