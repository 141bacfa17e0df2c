#!/usr/bin/env bash
# Make sure the Debian packages the build needs are installed. Quiet when they all are.
# As root it installs what is missing (apt-get update + install); otherwise it says what to run.
set -euo pipefail

# gcc/g++-multilib: the i386 kernel build; qemu-system-x86: running it; ccache, make, cmake: building;
# xz-utils: unpacking the Debian .orig.tar.xz sources; debian-archive-keyring: deps/fetch.sh's apt-src.
# qemu-user: bench/llm.py runs the same llama.cpp build under qemu-i386 as the emulator's ceiling.
# grub-pc-bin, grub-common, xorriso, mtools: `make image` (grub-mkrescue's BIOS hybrid ISO).
# chromium, fonts-dejavu-core: tests/test_page.py drives the chat page in headless Chromium and reads
# text pixels off its screenshot (a font for the glyphs). curl: tests/test_server.py uses it as people do.
# haproxy: `make fleet` and the fleet tests balance boxes with it (fleet/haproxy.cfg).
# bzip2: mbedtls' .orig.tar.bz2. openssl: `make run TLS=1`'s self-signed test certificate, and the tests'.
packages=(gcc-multilib g++-multilib qemu-system-x86 qemu-user ccache xz-utils bzip2 make cmake debian-archive-keyring
	grub-pc-bin grub-common xorriso mtools chromium fonts-dejavu-core curl openssl haproxy)

installed() { [[ $(dpkg-query -W -f='${Status}' "$1" 2>/dev/null) == "install ok installed" ]]; }

missing=()
for p in "${packages[@]}"; do
	installed "$p" || missing+=("$p")
done

# deps/venv.sh needs `python3 -m venv` and deps/fetch.sh needs `python3 -m pip`. Debian's python3
# gets them from python3-venv and python3-pip; another python3 (e.g. a pyenv build) has them built
# in, so check the capability there instead of a package.
if ! prefix=$(python3 -c 'import sys; print(sys.base_prefix)' 2>/dev/null); then
	missing+=(python3 python3-venv python3-pip)
elif [[ $prefix == /usr ]]; then
	installed python3-venv || missing+=(python3-venv)
	installed python3-pip || missing+=(python3-pip)
elif ! python3 -c 'import venv, ensurepip' 2>/dev/null || ! python3 -m pip --version >/dev/null 2>&1; then
	echo "sysdeps: $(command -v python3) (from $prefix) cannot make venvs or run pip (needs venv, ensurepip and pip); put Debian's python3 first in PATH or use a complete python build" >&2
	exit 1
fi

[[ ${#missing[@]} -eq 0 ]] && exit 0

if [[ $(id -u) -ne 0 ]]; then
	echo "sysdeps: missing Debian packages; run: sudo apt-get install -y ${missing[*]}" >&2
	exit 1
fi

echo "sysdeps: installing Debian packages: ${missing[*]}"
apt-get -q update
DEBIAN_FRONTEND=noninteractive apt-get -q install -y "${missing[@]}"

still=()
for p in "${missing[@]}"; do
	installed "$p" || still+=("$p")
done
if [[ ${#still[@]} -gt 0 ]]; then
	echo "sysdeps: apt-get could not install: ${still[*]}; check the apt output above" >&2
	exit 1
fi
