# The cllm MicroPython port. Run from the repository root by the top-level Makefile:
#   make -f port/port.mk MPY_TOP=<unpacked MicroPython> ULAB_TOP=<unpacked ulab> \
#       LLAMA_SRC=<vendor/llama.cpp> LLAMA_BUILD=<its static i386 build> PORT_BUILD=<output folder>
# Sources are named relative to the repository root, one folder per layer, each depending only on
# those before it: kernel/, drivers/, net/, port/ (this MicroPython port), modules/, frozen/.

TOP := $(MPY_TOP)
BUILD := $(PORT_BUILD)

include $(TOP)/py/mkenv.mk

# The MicroPython tree sits inside this repository's build folder: stop git at its edge, or
# makeversionhdr.py would report this repository's commit as MicroPython's version.
export GIT_CEILING_DIRECTORIES := $(abspath $(TOP)/..)

# MicroPython's rules name mpconfigport.h as if the build ran inside the port folder.
vpath mpconfigport.h port

# Host gcc in 32-bit mode, through ccache; glibc and libstdc++ come from gcc-multilib.
CROSS_COMPILE :=
CC := ccache gcc
CXX := ccache g++
NM := nm

QSTR_DEFS = port/qstrdefsport.h
FROZEN_MANIFEST = $(abspath frozen/manifest.py)
# Debian's MicroPython repack ships lib/micropython-lib empty; nothing of it is frozen.
MPY_LIB_DIR = $(abspath .)
MPY_CROSS_FLAGS = -march=x86
MICROPY_ROM_TEXT_COMPRESSION = 1

# ulab (numpy for MicroPython, from ../shared/deps) as a user C module: MicroPython scans
# $(ULAB_TOP)/*/micropython.mk, i.e. ulab's code/micropython.mk.
USER_C_MODULES = $(ULAB_TOP)

# lwIP 2.2.1 (Debian source package, unpacked beside MicroPython) under extmod/modlwip.c.
# extmod.mk compiles it from $(TOP)/lib/lwip/src, which the repack leaves empty: link that
# to the unpacked tree before any rule runs. The port's lwipopts.h and arch/cc.h are in net/.
MICROPY_PY_LWIP = 1
LWIP_TOP := $(abspath $(TOP)/../lwip)
$(if $(wildcard $(TOP)/lib/lwip/src/core),,$(shell ln -sfn $(LWIP_TOP)/src $(TOP)/lib/lwip/src))
INC += -Inet

# mbedtls 3.6 (Debian source package, unpacked beside MicroPython) under extmod/modtls_mbedtls.c
# (the tls module), configured by port/mbedtls/mbedtls_config_port.h. As with lwIP, extmod.mk
# compiles it from $(TOP)/lib/mbedtls, which the repack leaves empty: link its two folders there.
MICROPY_PY_SSL = 1
MICROPY_SSL_MBEDTLS = 1
MBEDTLS_TOP := $(abspath $(TOP)/../mbedtls)
$(foreach d,include library,$(if $(wildcard $(TOP)/lib/mbedtls/$(d)),,$(shell ln -sfn $(MBEDTLS_TOP)/$(d) $(TOP)/lib/mbedtls/$(d))))

include $(TOP)/py/py.mk
include $(TOP)/extmod/extmod.mk

# What the tls module compiles in (and so its qstrs) follows the mbedtls configuration.
QSTR_GLOBAL_DEPENDENCIES += port/mbedtls/mbedtls_config_port.h

# The repack also leaves out MicroPython's generated short error strings (lib/mbedtls_errors):
# mbedtls' own error.c gives the full ones.
SRC_THIRDPARTY_C := $(filter-out lib/mbedtls_errors/mp_mbedtls_errors.c,$(SRC_THIRDPARTY_C)) lib/mbedtls/library/error.c
# TLS 1.3 (port/mbedtls/mbedtls_config_port.h), which extmod.mk's list leaves out: the protocol and
# the PSA crypto layer it is built on
SRC_THIRDPARTY_C += $(addprefix lib/mbedtls/library/,ssl_tls13_server.c ssl_tls13_generic.c ssl_tls13_keys.c \
	ssl_tls13_client.c hkdf.c psa_crypto.c psa_crypto_aead.c psa_crypto_cipher.c psa_crypto_client.c \
	psa_crypto_driver_wrappers_no_static.c psa_crypto_ecp.c psa_crypto_ffdh.c psa_crypto_hash.c psa_crypto_mac.c \
	psa_crypto_pake.c psa_crypto_rsa.c psa_crypto_se.c psa_crypto_slot_management.c psa_crypto_storage.c \
	psa_crypto_random.c psa_util.c)

ARCH_FLAGS = -m32 -march=i686 -msse2 -mfpmath=sse
INC += -I. -Iport -I$(TOP) -I$(BUILD)
CFLAGS += $(INC) $(ARCH_FLAGS) -std=gnu11 -Wall -Werror -O2 -g -DNDEBUG \
	-fno-omit-frame-pointer -fno-pie -fno-stack-protector -ffunction-sections -fdata-sections
AFLAGS = $(ARCH_FLAGS)

# The kernel layer runs before glibc is initialised and inside interrupts: no implicit
# memcpy/memset, no SSE registers (interrupt entry does not save them).
KERNEL_SRC_C = $(wildcard kernel/*.c drivers/*.c)
KERNEL_SRC_S = kernel/entry.S kernel/traps.S kernel/smp_entry.S
KERNEL_OBJ = $(addprefix $(BUILD)/, $(KERNEL_SRC_C:.c=.o) $(KERNEL_SRC_S:.S=.o))
$(addprefix $(BUILD)/, $(KERNEL_SRC_C:.c=.o)): CFLAGS += -ffreestanding -fno-builtin -mgeneral-regs-only

SRC_C += \
	port/main.c \
	port/mphalport.c \
	port/qstrindex.c \
	port/repl.c \
	modules/kernel/modkernel.c \
	modules/repl/modrepl.c \
	shared/readline/readline.c \
	shared/runtime/gchelper_generic.c \
	shared/runtime/pyexec.c \
	shared/runtime/stdout_helpers.c \
	shared/timeutils/timeutils.c \

# The lwIP netif, and the drivers as Python modules
SRC_C += \
	net/net.c \
	net/sockets.c \
	modules/pci/modpci.c \
	modules/network/network_lan.c \
	modules/serial/modserial.c \
	modules/vga/modvga.c \
	modules/tls/modtlsport.c \

# llama.cpp inside: the llm module (C tables + C++ glue) against ggml and libllama, built as
# static i386 archives by port/build-llama.sh into $(LLAMA_BUILD) from $(LLAMA_SRC), with two
# CPU backends (SSE2 and AVX2) of which modules/llm/cpu_variant.c picks one at boot.
SRC_C += modules/llm/modllm.c modules/llm/cpu_variant.c
SRC_CXX += modules/llm/model.cpp modules/llm/llm.cpp modules/llm/json_check.cpp modules/llm/decoder.cpp modules/llm/sampler.cpp modules/llm/chat.cpp modules/llm/common_log.cpp modules/llm/embed.cpp modules/llm/spec.cpp modules/llm/rpc.cpp
INC += -I$(LLAMA_SRC)/include -I$(LLAMA_SRC)/ggml/include -I$(LLAMA_SRC)/common -I$(LLAMA_SRC)/vendor -I$(ULAB_TOP)/code
CXXFLAGS += $(filter-out -std=gnu11,$(CFLAGS)) -std=gnu++17 -fexceptions
LLAMA_LIBS = $(addprefix $(LLAMA_BUILD)/, sse2/common/libllama-common.a sse2/common/libllama-common-base.a \
	sse2/src/libllama.a sse2/ggml/src/libggml.a \
	libggml-cpu-sse2.a libggml-cpu-avx2.a libggml-base-paged.a)

# llama.cpp's RPC server (modules/llm/rpc.cpp starts it): ggml-rpc's two files, edited by
# port/patch-llama.py, built as build-llama.sh builds ggml-base (the same flags and defines).
RPC_OBJ = $(BUILD)/ggml-rpc/ggml-rpc.o $(BUILD)/ggml-rpc/transport.o
$(BUILD)/ggml-rpc/%.o: $(LLAMA_SRC)/ggml/src/ggml-rpc/%.cpp $(LLAMA_LIBS)
	$(ECHO) "CXX $<"
	$(Q)mkdir -p $(@D)
	$(Q)$(CXX) -m32 -msse2 -mfpmath=sse -fno-pie -ffunction-sections -fno-tree-vectorize -O3 -DNDEBUG -std=gnu++17 \
		-DGGML_SCHED_MAX_COPIES=4 -D_GNU_SOURCE -D_XOPEN_SOURCE=600 -I$(LLAMA_SRC)/ggml/src -I$(LLAMA_SRC)/ggml/include -c -o $@ $<

SRC_QSTR += $(SRC_C) $(SRC_CXX)

OBJ += $(PY_O)
OBJ += $(addprefix $(BUILD)/, $(SRC_C:.c=.o) $(SRC_CXX:.cpp=.o))
OBJ += $(KERNEL_OBJ)
OBJ += $(RPC_OBJ)

# What the kernel links: each object with no function under a page across a page (port/keep-in-page.sh;
# TCG chains translated blocks only within a page). The interpreter's own small functions -
# mp_binary_op, str.split, lwIP's tcp_write among them - would otherwise sit wherever the link puts them.
PAGED_OBJ = $(patsubst $(BUILD)/%,$(BUILD)/paged/%,$(OBJ))
$(BUILD)/paged/%.o: $(BUILD)/%.o port/keep-in-page.sh
	$(Q)mkdir -p $(@D)
	$(Q)port/keep-in-page.sh $< $@

LDFLAGS = -m32 -static -no-pie -Wl,-e,mb_entry -Wl,-T,$(BUILD)/kernel.ld -Wl,--gc-sections
LIBS = $(LLAMA_LIBS) -lstdc++ -lm
# extmod/modlwip.c sets err and recv callbacks on listening pcbs too, which lwIP 2.2 asserts
# against and which write past the smaller listen pcb: route its calls through net/net.c,
# as tcp_write's (to count the writes that find no memory).
LDFLAGS += -Wl,--wrap=tcp_err -Wl,--wrap=tcp_recv -Wl,--wrap=tcp_write
# MicroPython's qstr lookups from outside qstr.c go through a hash index over the qstrs in ROM
# (port/qstrindex.c): making a str looks it up among the qstrs, which scanned ~220 of them each time.
LDFLAGS += -Wl,--wrap=qstr_find_strn -Wl,--wrap=qstr_from_strn

all: $(BUILD)/cllm.elf

# binutils' own default script for static i386 programs, with the Multiboot header placed
# right after the program headers: loaders look for it in the first 8 KiB of the file.
# Linked at 1 MiB: the PC's low memory holds the BIOS data area, VGA memory and ROMs.
$(BUILD)/kernel.ld: port/port.mk
	$(ECHO) "GEN $@"
	$(Q)mkdir -p $(BUILD)
	$(Q)ld --verbose -m elf_i386 | sed -n '/^=======/,/^=======/p' | sed '1d;$$d' \
		| sed 's/0x08048000/0x00100000/g' \
		| sed 's/\(SIZEOF_HEADERS;\)/\1\n  .multiboot : { KEEP (*(.multiboot)) }/' > $@
	$(Q)grep -q 'KEEP (\*(.multiboot))' $@

# Two links: the second carries the symbol table the panic dump uses for backtraces. It sits
# in .rodata, after .text, so function addresses cannot move; ksyms.py checks that they did not.
$(BUILD)/cllm-nosyms.elf: $(PAGED_OBJ) $(BUILD)/kernel.ld $(LLAMA_LIBS)
	$(ECHO) "LINK $@"
	$(Q)$(CXX) $(LDFLAGS) -Wl,-Map=$(@:.elf=.map) -o $@ $(PAGED_OBJ) $(LIBS)

$(BUILD)/ksyms.S: $(BUILD)/cllm-nosyms.elf port/ksyms.py
	$(Q)python3 port/ksyms.py generate $< $@

$(BUILD)/ksyms.o: $(BUILD)/ksyms.S
	$(Q)$(CC) $(AFLAGS) -c -o $@ $<

$(BUILD)/cllm.elf: $(BUILD)/cllm-nosyms.elf $(BUILD)/ksyms.o
	$(ECHO) "LINK $@"
	$(Q)$(CXX) $(LDFLAGS) -Wl,-Map=$(@:.elf=.map) -o $@ $(PAGED_OBJ) $(BUILD)/ksyms.o $(LIBS)
	$(Q)python3 port/ksyms.py check $(BUILD)/cllm-nosyms.elf $@
	$(Q)strip -o $(BUILD)/cllm-stripped.elf $@
	$(Q)echo "kernel: $@ ($$(stat -c %s $(BUILD)/cllm-stripped.elf) bytes stripped)"

# makemanifest.py rewrites frozen_content.c only when the frozen files change, but the qstrs it
# declares are those the C code does not have: when the C code's set changes, start it afresh
# (else "redeclaration of enumerator MP_QSTR_...").
$(BUILD)/frozen_content.c: $(BUILD)/frozen_qstrs.stamp
$(BUILD)/frozen_qstrs.stamp: $(BUILD)/genhdr/qstrdefs.generated.h
	$(Q)rm -f $(BUILD)/frozen_content.c
	$(Q)touch $@

include $(TOP)/py/mkrules.mk
