"""`make image`: one BIOS-bootable hybrid ISO (GRUB + kernel + model + command line), booted as a
CD and as a raw disk, serving the same completions as the kernel booted by QEMU's own loader."""
import http.client
import json
import os
import subprocess

import pytest

from qemu import KERNEL, Guest, free_port
from tinymodel import make_tiny_model

ROOT = os.path.join(os.path.dirname(__file__), "..")
CMDLINE = "n_ctx=256 parallel=1 alias=tiny ggml=sse2"     # one CPU kernel: same floats each boot
PROMPT = {"prompt": "Once upon a time", "n_predict": 12, "temperature": 0}


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return make_tiny_model(str(tmp_path_factory.mktemp("models") / "tiny.gguf"))


@pytest.fixture(scope="module")
def image(model, tmp_path_factory):
    out = tmp_path_factory.mktemp("image") / "cllm.iso"
    r = subprocess.run([os.path.join(ROOT, "port", "mkimage.sh"), KERNEL, model, str(out), CMDLINE],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    return out, r.stdout


def post(port, path, body):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    c.request("POST", path, body=json.dumps(body), headers={"Content-Type": "application/json"})
    r = c.getresponse()
    data = json.loads(r.read())
    c.close()
    return r.status, data


def serve_and_complete(**boot):
    """Boot, wait for the server, and return (boot log, /health status, greedy completion)."""
    port = free_port()
    with Guest(mem="256M", timeout=180, hostfwd=[f"tcp:127.0.0.1:{port}-:80"], **boot) as g:
        g.expect(b"serving on port 80", timeout=180)
        log = g.child.before
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        c.request("GET", "/health")
        health = c.getresponse().status
        c.close()
        status, body = post(port, "/completion", PROMPT)
        assert status == 200, body
        return log, health, body["content"]


def test_image_size_and_report(image, model):
    path, report = image
    overhead = os.path.getsize(path) - os.path.getsize(model)
    assert overhead < 8 * 1024 * 1024, report
    assert f"kernel and GRUB {overhead // 1024} KiB" in report


def test_cdrom_and_disk_boot_serve_what_the_kernel_serves(image, model):
    _, _, expected = serve_and_complete(modules=[model], append=CMDLINE)
    assert expected
    for media in ("cdrom", "disk"):
        log, health, content = serve_and_complete(image=(media, image[0]))
        assert b'cmdline: "' in log and CMDLINE.encode() in log, log[-2000:]
        assert b"module: /tiny.gguf" in log, log[-2000:]
        assert (media, health, content) == (media, 200, expected)


def test_bad_input_is_refused(tmp_path, model):
    script = os.path.join(ROOT, "port", "mkimage.sh")
    r = subprocess.run([script, KERNEL, str(tmp_path / "missing.gguf"), str(tmp_path / "x.iso")],
                       capture_output=True, text=True)
    assert r.returncode != 0 and "missing.gguf does not exist" in r.stderr
    r = subprocess.run([script, KERNEL, model, str(tmp_path / "x.iso"), 'say "hi"'], capture_output=True, text=True)
    assert r.returncode != 0 and "double quotes" in r.stderr
    assert not (tmp_path / "x.iso").exists()
