// A hash index over the qstrs in ROM, for MicroPython's qstr lookups.
//
// MicroPython looks a string up among the qstrs every time it makes a str object (mp_obj_new_str:
// str.split, slicing, format, decode, json's keys, ... return the interned qstr when there is one),
// and every time it interns one. qstr_find_strn scans the first pool (the ~220 qstrs whose numbers
// are fixed) one entry at a time and binary-searches the others with strncmp: ~1.7 us per string
// under TCG, several times what making the string costs. This builds one open-addressing table
// over every pool in ROM (the core's, the C modules' and the frozen code's, fixed at link time) and
// leaves the pools MicroPython makes at run time to its own scan. The answers are the same: a string
// is in at most one pool. The linker routes the calls from outside qstr.c here (port.mk's --wrap).
#include <string.h>

#include "py/mpstate.h"
#include "py/qstr.h"
#include "port/qstrindex.h"

#define INDEX_BITS 12               // 4096 slots for the ~1,800 qstrs in ROM: under half full
#define INDEX_SIZE (1u << INDEX_BITS)

extern const qstr_pool_t MICROPY_QSTR_EXTRA_POOL;   // the newest pool in ROM (the frozen code's)

static struct slot {
    const char *str;                // NULL: an empty slot
    qstr_len_t len;
    qstr q;
} slots[INDEX_SIZE];
static const qstr_pool_t *rom;      // NULL until qstr_index_init has run
static size_t indexed;

qstr __real_qstr_find_strn(const char *str, size_t len);
qstr __real_qstr_from_strn(const char *str, size_t len);

static uint32_t hash_of(const char *str, size_t len) {
    uint32_t h = 2166136261u;       // FNV-1a
    for (size_t i = 0; i < len; i++) {
        h = (h ^ (uint8_t)str[i]) * 16777619u;
    }
    return h;
}

size_t qstr_index_init(void) {
    if (rom) {
        return indexed;
    }
    for (const qstr_pool_t *pool = &MICROPY_QSTR_EXTRA_POOL; pool; pool = pool->prev) {
        for (size_t at = 0; at < pool->len; at++) {
            const char *str = pool->qstrs[at];
            size_t len = pool->lengths[at];
            if (len == 0) {
                continue;                   // MP_QSTR_ (the empty string): qstr_find_strn's own case
            }
            if (indexed >= INDEX_SIZE * 3 / 4) {
                indexed = 0;                // a ROM this large would need a bigger table: do without
                memset(slots, 0, sizeof(slots));
                return 0;
            }
            uint32_t i = hash_of(str, len);
            while (slots[i & (INDEX_SIZE - 1)].str) {
                i++;
            }
            slots[i & (INDEX_SIZE - 1)] = (struct slot){str, len, pool->total_prev_len + at};
            indexed++;
        }
    }
    rom = &MICROPY_QSTR_EXTRA_POOL;
    return indexed;
}

qstr __wrap_qstr_find_strn(const char *str, size_t len) {
    if (!rom || len == 0) {
        return __real_qstr_find_strn(str, len);
    }
    // The pools made at run time, newest first, as qstr_find_strn scans them (they are unsorted).
    #if MICROPY_QSTR_BYTES_IN_HASH
    size_t hash = 0;
    #endif
    for (const qstr_pool_t *pool = MP_STATE_VM(last_pool); pool && pool != rom; pool = pool->prev) {
        #if MICROPY_QSTR_BYTES_IN_HASH
        if (!hash) {
            hash = qstr_compute_hash((const byte *)str, len);
        }
        #endif
        for (size_t at = 0; at < pool->len; at++) {
            if (
                #if MICROPY_QSTR_BYTES_IN_HASH
                pool->hashes[at] == hash &&
                #endif
                pool->lengths[at] == len && memcmp(pool->qstrs[at], str, len) == 0) {
                return pool->total_prev_len + at;
            }
        }
    }
    // Those in ROM, through the index.
    for (uint32_t i = hash_of(str, len);; i++) {
        const struct slot *slot = &slots[i & (INDEX_SIZE - 1)];
        if (!slot->str) {
            return MP_QSTRnull;
        }
        if (slot->len == len && memcmp(slot->str, str, len) == 0) {
            return slot->q;
        }
    }
}

qstr __wrap_qstr_from_strn(const char *str, size_t len) {
    qstr q = __wrap_qstr_find_strn(str, len);
    return q != MP_QSTRnull ? q : __real_qstr_from_strn(str, len);
}
