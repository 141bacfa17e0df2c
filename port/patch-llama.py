#!/usr/bin/env python3
"""The edits cllm makes to the pinned llama.cpp before building it: port/build-llama.sh runs this on
the unpacked vendor/llama.cpp for every build from it (the kernel's, its host tools', both peers'),
so cllm and the peers it is measured against run the same ggml.

    port/patch-llama.py SRC

Each edit replaces one exact piece of text, which must be there once: a different llama.cpp stops
the build here rather than building without the edit. The first run keeps each file it edits as
FILE.orig, and every run edits from that, so changing an edit here takes effect on the next build."""
import os
import sys

# Flash attention for one query row (each generated token) splits the keys between the threads
# when the view of the KV cache is >= 512 keys long. llama.cpp pads that view to a multiple of 256
# and masks the keys past the last one in use, and ggml split the whole view evenly: with 300 keys
# in use, one thread got 256 of them and the other 44, and attention took almost as long on two
# CPUs as on one. Split the keys in use instead. Masked keys add nothing either way, so one thread
# computes the same values as before, without stepping over the masked tail.
KEYS_IN_USE = (
    "ggml/src/ggml-cpu/ops.cpp",
    [("static void ggml_compute_forward_flash_attn_ext_f16(\n",
      """// cllm (port/patch-llama.py): one past the last key the one query row of dst may attend to;
// the mask is -inf past it (llama.cpp pads the KV view to a multiple of 256 keys).
static int64_t cllm_keys_in_use(const ggml_tensor * dst) {
    const ggml_tensor * k    = dst->src[1];
    const ggml_tensor * mask = dst->src[3];
    if (mask == nullptr || mask->type != GGML_TYPE_F16 || mask->ne[0] < k->ne[1]) {
        return k->ne[1];
    }
    int64_t used = 1;
    for (int64_t i2 = 0; i2 < mask->ne[2]; i2++) {
        const ggml_fp16_t * mp = (const ggml_fp16_t *) ((const char *) mask->data + i2*mask->nb[2]);
        for (int64_t j = k->ne[1]; j > used; j--) {
            if (GGML_CPU_FP16_TO_FP32(mp[j - 1]) != -INFINITY) {
                used = j;
                break;
            }
        }
    }
    return used;
}

static void ggml_compute_forward_flash_attn_ext_f16(
"""),
     ("""    if (use_split_kv_path) {
        const int64_t chunk_size = (nek1 + nth - 1) / nth;
""",
      """    if (use_split_kv_path) {
        const int64_t chunk_size = (cllm_keys_in_use(dst) + nth - 1) / nth;    // cllm: not nek1
""")])

EDITS = [KEYS_IN_USE]


def main(src):
    for path, replacements in EDITS:
        path = os.path.join(src, path)
        if not os.path.exists(path + ".orig"):
            os.replace(path, path + ".orig")
        with open(path + ".orig") as f:
            text = f.read()
        for old, new in replacements:
            if text.count(old) != 1:
                sys.exit(f"patch-llama: {path}.orig has {text.count(old)} of the text to replace, not 1:\n{old}")
            text = text.replace(old, new)
        try:
            with open(path) as f:
                unchanged = f.read() == text
        except FileNotFoundError:
            unchanged = False
        if not unchanged:       # an unchanged file keeps its time: nothing is rebuilt for it
            with open(path, "w") as f:
                f.write(text)
            print(f"patch-llama: {path} edited")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    main(sys.argv[1])
