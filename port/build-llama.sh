#!/usr/bin/env bash
# Build ggml (CPU backend) and libllama from the pinned sdist's vendor/llama.cpp as static i386
# archives for the kernel, plus the same build's host tools (llama-simple, llama-tokenize,
# llama-bench) that tests and benchmarks compare against.
#
#   port/build-llama.sh SRC OUT VARIANT
#
# VARIANT picks the ggml CPU kernels: sse2 (every GGML_<SIMD> option off, -msse2 -mfpmath=sse:
# the fastest under QEMU's TCG) or avx2 (AVX2+FMA+F16C: the fastest on real hardware).
set -euo pipefail
src=$1 out=$2 variant=$3

common=(-DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=OFF -DGGML_STATIC=ON -DGGML_NATIVE=OFF
        -DGGML_OPENMP=OFF -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF -DGGML_BACKEND_DL=OFF -DGGML_BMI2=OFF
        -DGGML_AVX512=OFF -DGGML_LLAMAFILE=ON -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_SERVER=OFF
        -DLLAMA_BUILD_EXAMPLES=ON -DLLAMA_BUILD_TOOLS=ON -DGGML_CCACHE=ON
        -DCMAKE_C_COMPILER=gcc -DCMAKE_CXX_COMPILER=g++
        -DCMAKE_EXE_LINKER_FLAGS="-m32 -static -no-pie")
case $variant in
    sse2) simd=(-DGGML_SSE42=OFF -DGGML_AVX=OFF -DGGML_AVX2=OFF -DGGML_FMA=OFF -DGGML_F16C=OFF) ;;
    avx2) simd=(-DGGML_SSE42=ON -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON) ;;
    *) echo "build-llama: unknown variant $variant (sse2 or avx2)" >&2; exit 1 ;;
esac
flags="-m32 -msse2 -mfpmath=sse -fno-pie -fno-omit-frame-pointer"

mkdir -p "$out"
echo "llama.cpp ($variant): configuring in $out"
cmake -S "$src" -B "$out" "${common[@]}" "${simd[@]}" \
    -DCMAKE_C_FLAGS="$flags" -DCMAKE_CXX_FLAGS="$flags" > "$out/configure.log" 2>&1 \
    || { echo "build-llama: cmake configure failed; see $out/configure.log" >&2; exit 1; }
echo "llama.cpp ($variant): building (first build takes minutes; progress in percent)"
cmake --build "$out" -j "${JOBS:-$(nproc)}" --target llama ggml llama-simple llama-tokenize llama-bench 2>&1 \
    | tee "$out/build.log" | grep --line-buffered -o '^\[ *[0-9]*%\]' | uniq | tr '\n' ' '
echo
test "${PIPESTATUS[0]}" -eq 0 || { echo "build-llama: build failed; see $out/build.log" >&2; exit 1; }
