import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))
from qemu import KERNEL, Guest  # noqa: E402


def pytest_configure(config):
    if not os.path.exists(KERNEL):
        pytest.exit(f"no kernel at {KERNEL}: run `make test`, which builds it first", returncode=2)


@pytest.fixture(scope="module")
def guest():
    """A kernel booted once for a module's read-only REPL tests."""
    with Guest() as g:
        g.wait_prompt()
        yield g
