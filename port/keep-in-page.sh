#!/usr/bin/env bash
# port/keep-in-page.sh IN OUT: a copy of an object file or archive (built with -ffunction-sections) with
# each function smaller than a page aligned to the power of two at or above its size, so that no
# such function straddles a 4 KiB page however the linker places it. QEMU's TCG chains translated
# blocks directly only within a guest page: a branch to another page goes through a hash lookup
# every time it is taken (ggml's Q4_1 dot product placed across a page boundary ran prompts 12 %
# slower than inside one). IN may be OUT.
set -euo pipefail
args=$(readelf -SW "$1" | awk '
    function hex(h,   i, v) { v = 0; for (i = 1; i <= length(h); i++) v = v * 16 + index("0123456789abcdef", substr(h, i, 1)) - 1; return v }
    sub(/^ *\[ *[0-9]+\] +/, "") && $1 ~ /^\.text\./ && $2 == "PROGBITS" {
        size = hex($5); al = 1
        while (al < size) al *= 2
        if (size > 0 && al <= 4096 && al > $NF && al > want[$1]) want[$1] = al
    }
    END { for (s in want) print "--set-section-alignment " s "=" want[s] }')
# shellcheck disable=SC2086   # one argument per word
objcopy $args "$1" "$2"
