#!/usr/bin/env bash
# Build llama.cpp from the pinned sdist's vendor/llama.cpp, with cllm's edits (port/patch-llama.py),
# for the kernel: static i386 archives of libllama and ggml with two CPU backends, plus the host tools
# tests and benchmarks compare against; or the static i386 llama-server of the Linux-guest peer that
# `make bench` compares cllm with.
#
#   port/build-llama.sh SRC OUT          the kernel's builds:
#
# OUT/sse2  the whole build with every GGML_<SIMD> option off and -msse2 -mfpmath=sse (the fastest
#           under QEMU's TCG), libllama-common (the kernel takes its JSON-schema-to-grammar converter)
#           and its llama-simple, llama-tokenize and llama-bench
# OUT/avx2  only ggml's CPU backend, with AVX2+FMA+F16C (the fastest on real hardware)
# OUT/libggml-cpu-sse2.a, OUT/libggml-cpu-avx2.a
#           the two CPU backends with every symbol they define prefixed (sse2_..., avx2_...), so one
#           static image holds both; modules/llm/cpu_variant.c picks one at boot
# OUT/libggml-base-paged.a
#           ggml's base library; it and the SSE2 backend with no function under a page across a page
#
#   port/build-llama.sh SRC OUT peer     the peer's llama-server, twice (peer-same: only the first, and
#                                        llama-embedding: the tests' reference for embeddings):
#
# OUT/peer-stock/bin/llama-server  llama.cpp's default x86 options for a portable build (GGML_NATIVE=OFF:
#           SSE4.2, AVX, AVX2, FMA, F16C; BMI2 off as it does not build for i386) and no extra flags
# OUT/peer-same/bin/llama-server   the kernel's sse2 build options and flags exactly, with ggml's RPC client (--rpc)
set -euo pipefail
src=$1 out=$2 what=${3:-kernel}

# cllm's edits to llama.cpp (port/patch-llama.py), in every build from this source: the peers too
python3 "$(dirname "$0")/patch-llama.py" "$src"

common=(-DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=OFF -DGGML_STATIC=ON -DGGML_NATIVE=OFF
        -DGGML_OPENMP=OFF -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF -DGGML_BACKEND_DL=OFF -DGGML_BMI2=OFF
        -DGGML_AVX512=OFF -DGGML_LLAMAFILE=ON -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_SERVER=OFF
        -DLLAMA_BUILD_EXAMPLES=ON -DLLAMA_BUILD_TOOLS=ON -DGGML_CCACHE=ON
        -DCMAKE_C_COMPILER=gcc -DCMAKE_CXX_COMPILER=g++
        -DCMAKE_EXE_LINKER_FLAGS="-m32 -static -no-pie")
# No frame pointer (GCC's default at -O3): an i386 function has six free registers with one and
# seven without, and ggml's Q4_1 dot product reloaded a pointer from the stack for every pair of
# weights with one; TCG pays a software TLB lookup for each memory access. A section per function,
# so the kernel can keep each small ggml function inside one page (port/keep-in-page.sh). No
# auto-vectorisation: TCG runs SSE integer vector code (unpacks, compares, 16-bit multiplies) through
# helper calls, and scalar code faster - ggml's generic Q4_1 dot product vectorised by GCC ran prompts
# at half the speed, and the whole build so generates 11 % faster. (The sse2 backend is chosen only
# where it times faster than avx2: under TCG. -O2 instead of -O3 measured slower.)
sse2_flags="-m32 -msse2 -mfpmath=sse -fno-pie -ffunction-sections -fno-tree-vectorize"
sse2_options=(-DGGML_SSE42=OFF -DGGML_AVX=OFF -DGGML_AVX2=OFF -DGGML_FMA=OFF -DGGML_F16C=OFF)
flags=$sse2_flags

build() {   # variant targets... -- cmake options...
    local variant=$1; shift
    local targets=()
    while [[ $1 != -- ]]; do targets+=("$1"); shift; done
    shift
    mkdir -p "$out/$variant"
    echo "llama.cpp ($variant): configuring in $out/$variant"
    cmake -S "$src" -B "$out/$variant" "${common[@]}" "$@" \
        -DCMAKE_C_FLAGS="$flags" -DCMAKE_CXX_FLAGS="$flags" > "$out/$variant/configure.log" 2>&1 \
        || { echo "build-llama: cmake configure failed; see $out/$variant/configure.log" >&2; exit 1; }
    echo "llama.cpp ($variant): building ${targets[*]} (the first build takes minutes)"
    local step=0
    cmake --build "$out/$variant" -j "${JOBS:-$(nproc)}" --target "${targets[@]}" > "$out/$variant/build.log" 2>&1 &
    local pid=$!
    while kill -0 $pid 2>/dev/null; do      # progress: objects compiled so far
        sleep 10
        step=$((step + 10))
        printf '  %3ds: %s objects\n' $step "$(grep -c 'Building' "$out/$variant/build.log" || true)"
    done
    wait $pid || { echo "build-llama: build failed; see $out/$variant/build.log" >&2; exit 1; }
}

# libggml-cpu.a with every symbol it defines renamed to variant_symbol. The names of its COMDAT
# groups too: inline functions and constructors live in groups the linker keeps once per name, so
# a group still named as in the other variant would be thrown away and its symbols end up at 0.
prefixed() {    # variant
    local lib=$out/$1/ggml/src/libggml-cpu.a
    { nm -g --defined-only "$lib" | awk 'NF == 3 && $2 ~ /[A-Z]/ { print $3 }'
      readelf -gW "$lib" | sed -n "s/^COMDAT group section \[ *[0-9]*\] \`[^']*' \[\(.*\)\].*/\1/p"
    } | sort -u | awk -v p="$1_" '{ print $1, p $1 }' > "$out/$1/prefix.map"
    objcopy --redefine-syms="$out/$1/prefix.map" "$lib" "$out/libggml-cpu-$1.a"
}

if [[ $what == peer || $what == peer-same ]]; then
    # with ggml's RPC client (--rpc): the tests put its layers on cllm boxes (rpc=)
    build peer-same llama-server llama-embedding -- "${sse2_options[@]}" -DLLAMA_BUILD_SERVER=ON -DGGML_RPC=ON -DGGML_RPC_RDMA=OFF
    if [[ $what == peer-same ]]; then      # the tests compare the kernel with this one
        echo "llama.cpp: $out/peer-same/bin/llama-server and llama-embedding ready"
        exit 0
    fi
    flags="-m32"
    build peer-stock llama-server -- -DLLAMA_BUILD_SERVER=ON
    echo "llama.cpp: $out/peer-same/bin/llama-server and $out/peer-stock/bin/llama-server ready"
    exit 0
fi
build sse2 llama ggml llama-common llama-simple llama-tokenize llama-bench -- "${sse2_options[@]}"
build avx2 ggml-cpu -- -DGGML_SSE42=ON -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON
prefixed sse2
prefixed avx2
# no small function of the SSE2 backend or ggml-base across a page (port/keep-in-page.sh)
"$(dirname "$0")/keep-in-page.sh" "$out/libggml-cpu-sse2.a" "$out/libggml-cpu-sse2.a"
"$(dirname "$0")/keep-in-page.sh" "$out/sse2/ggml/src/libggml-base.a" "$out/libggml-base-paged.a"
echo "llama.cpp: $out/libggml-cpu-sse2.a, $out/libggml-cpu-avx2.a and $out/libggml-base-paged.a ready"
