// llm.Speculative: llama.cpp's self-speculative drafting from n-grams (common/speculative.cpp, what
// llama-server's --spec-type ngram-* runs): when the last tokens of a sequence repeat a stretch of
// what it holds (a prompt the answer quotes, code being edited), the tokens that followed that stretch
// are the draft. The engine decodes the draft beside the sampled token and keeps what
// Sampler.sample_n confirms, so greedy output is the same with and without it.
#include <cstring>

#include "common.h"
#include "speculative.h"
#include "llm_internal.h"

struct spec_state {
    common_speculative *spec;
    int n_seq;
    std::vector<llama_tokens> prompts, drafts;      // per sequence: what draft() saw and made
};

typedef struct {
    mp_obj_base_t base;
    spec_state *st;             // NULL once closed
} llm_spec_obj_t;

static spec_state *open_spec(mp_obj_t self_in) {
    llm_spec_obj_t *self = (llm_spec_obj_t *)MP_OBJ_TO_PTR(self_in);
    if (!self->st) {
        mp_raise_ValueError(MP_ERROR_TEXT("speculative state is closed"));
    }
    return self->st;
}

static int spec_seq(spec_state *st, mp_obj_t o) {
    mp_int_t seq = mp_obj_get_int(o);
    if (seq < 0 || seq >= st->n_seq) {
        mp_raise_msg_varg(&mp_type_ValueError, MP_ERROR_TEXT("seq_id %d out of range [0, %d)"), (int)seq, st->n_seq);
    }
    return (int)seq;
}

// A Python sequence of ints as a GC-heap array (token ids are only compared here, never decoded)
static llama_token *ints_arg(mp_obj_t seq, size_t *n) {
    mp_obj_t *items;
    mp_obj_get_array(seq, n, &items);
    llama_token *out = m_new(llama_token, *n ? *n : 1);
    for (size_t i = 0; i < *n; i++) {
        out[i] = (llama_token)mp_obj_get_int(items[i]);
    }
    return out;
}

// Speculative(n_seq, type="ngram-simple", size_n=12, size_m=48, min_hits=1): llama-server's
// --spec-type and its --spec-ngram-*-size-n / -size-m / -min-hits (ngram-mod: size_m is its n_max)
mp_obj_t llm_spec_make_new(const mp_obj_type_t *type, size_t n_args, size_t n_kw, const mp_obj_t *all_args) {
    enum { ARG_n_seq, ARG_type, ARG_size_n, ARG_size_m, ARG_min_hits };
    static const mp_arg_t allowed[] = {
        { MP_QSTR_n_seq, MP_ARG_REQUIRED | MP_ARG_INT, {.u_int = 0} },
        { MP_QSTR_type, MP_ARG_OBJ, {.u_obj = MP_OBJ_NULL} },
        { MP_QSTR_size_n, MP_ARG_KW_ONLY | MP_ARG_INT, {.u_int = 12} },
        { MP_QSTR_size_m, MP_ARG_KW_ONLY | MP_ARG_INT, {.u_int = 48} },
        { MP_QSTR_min_hits, MP_ARG_KW_ONLY | MP_ARG_INT, {.u_int = 1} },
    };
    mp_arg_val_t args[MP_ARRAY_SIZE(allowed)];
    mp_arg_parse_all_kw_array(n_args, n_kw, all_args, MP_ARRAY_SIZE(allowed), allowed, args);
    int n_seq = args[ARG_n_seq].u_int;
    const char *name = args[ARG_type].u_obj ? mp_obj_str_get_str(args[ARG_type].u_obj) : "ngram-simple";
    mp_int_t size_n = args[ARG_size_n].u_int, size_m = args[ARG_size_m].u_int, min_hits = args[ARG_min_hits].u_int;
    static const char *const kinds[] = { "ngram-simple", "ngram-map-k", "ngram-map-k4v", "ngram-mod" };
    bool known = false;
    for (const char *k : kinds) {
        known = known || strcmp(name, k) == 0;
    }
    if (!known) {
        mp_raise_msg_varg(&mp_type_ValueError, MP_ERROR_TEXT("speculative type %s: need ngram-simple, ngram-map-k, "
                          "ngram-map-k4v or ngram-mod"), name);
    }
    if (n_seq < 1 || n_seq > 64 || size_n < 1 || size_n > 1024 || size_m < 1 || size_m > 256 || min_hits < 1 || min_hits > 1024) {
        mp_raise_ValueError(MP_ERROR_TEXT("need 1 <= n_seq <= 64, 1 <= size_n <= 1024, 1 <= size_m <= 256, min_hits >= 1"));
    }
    llm_spec_obj_t *self = mp_obj_malloc_with_finaliser(llm_spec_obj_t, type);
    self->st = nullptr;
    common_params_speculative params;
    for (common_params_speculative_ngram_map *map : { &params.ngram_simple, &params.ngram_map_k, &params.ngram_map_k4v }) {
        map->size_n = (uint16_t)size_n;
        map->size_m = (uint16_t)size_m;
        map->min_hits = (uint16_t)min_hits;
    }
    params.ngram_mod.n_match = (int32_t)size_n;
    params.ngram_mod.n_max = (int32_t)size_m;
    params.ngram_mod.n_min = params.ngram_mod.n_min < size_m ? params.ngram_mod.n_min : (int32_t)size_m;
    spec_state *st = nullptr;
    GUARD(
        params.types = { common_speculative_type_from_name(name) };
        st = new spec_state();
        st->n_seq = n_seq;
        st->prompts.resize(n_seq);
        st->drafts.resize(n_seq);
        st->spec = common_speculative_init(params, (uint32_t)n_seq);
        if (!st->spec) {
            delete st;
            st = nullptr;
        });
    if (!st) {
        mp_raise_ValueError(MP_ERROR_TEXT("llama.cpp made no speculative state"));
    }
    self->st = st;
    return MP_OBJ_FROM_PTR(self);
}

mp_obj_t llm_spec_close(mp_obj_t self_in) {
    llm_spec_obj_t *self = (llm_spec_obj_t *)MP_OBJ_TO_PTR(self_in);
    if (self->st) {
        common_speculative_free(self->st->spec);
        delete self->st;
        self->st = nullptr;
    }
    return mp_const_none;
}

// n_max() -> the longest draft it makes (Model(n_draft=) must allow it)
mp_obj_t llm_spec_n_max(mp_obj_t self_in) {
    spec_state *st = open_spec(self_in);
    return MP_OBJ_NEW_SMALL_INT(common_speculative_n_max(st->spec));
}

// begin(seq_id, tokens): a sequence starts generating after these tokens (its prompt)
mp_obj_t llm_spec_begin(mp_obj_t self_in, mp_obj_t seq_in, mp_obj_t tokens_in) {
    spec_state *st = open_spec(self_in);
    int seq = spec_seq(st, seq_in);
    size_t n;
    llama_token *tokens = ints_arg(tokens_in, &n);
    GUARD(
        st->prompts[seq].assign(tokens, tokens + n);
        common_speculative_begin(st->spec, seq, st->prompts[seq]));
    return mp_const_none;
}

// draft(seq_id, tokens, last, n_max) -> [token, ...]: the draft that follows `last` after the tokens
// the sequence holds (empty when nothing repeats), at most n_max long
mp_obj_t llm_spec_draft(size_t n_args, const mp_obj_t *args) {
    spec_state *st = open_spec(args[0]);
    int seq = spec_seq(st, args[1]);
    size_t n;
    llama_token *tokens = ints_arg(args[2], &n);
    llama_token last = (llama_token)mp_obj_get_int(args[3]);
    mp_int_t n_max = mp_obj_get_int(args[4]);
    if (n_max < 1) {
        return mp_obj_new_list(0, nullptr);
    }
    GUARD(
        st->prompts[seq].assign(tokens, tokens + n);
        st->drafts[seq].clear();
        common_speculative_draft_params &dp = common_speculative_get_draft_params(st->spec, seq);
        dp.drafting = true;
        dp.n_max = (int32_t)n_max;
        dp.pos0 = (llama_pos)n;
        dp.id_last = last;
        dp.prompt = &st->prompts[seq];
        dp.result = &st->drafts[seq];
        common_speculative_draft(st->spec));
    mp_obj_t out = mp_obj_new_list(0, nullptr);
    for (llama_token t : st->drafts[seq]) {
        mp_obj_list_append(out, MP_OBJ_NEW_SMALL_INT(t));
    }
    return out;
}

// accept(seq_id, n): how many tokens of the sequence's last draft were kept
mp_obj_t llm_spec_accept(mp_obj_t self_in, mp_obj_t seq_in, mp_obj_t n_in) {
    spec_state *st = open_spec(self_in);
    int seq = spec_seq(st, seq_in);
    mp_int_t n = mp_obj_get_int(n_in);
    if (n < 0 || n > (mp_int_t)st->drafts[seq].size()) {
        mp_raise_msg_varg(&mp_type_ValueError, MP_ERROR_TEXT("accepted %d of a draft of %d"), (int)n, (int)st->drafts[seq].size());
    }
    GUARD(common_speculative_accept(st->spec, seq, (uint16_t)n));
    return mp_const_none;
}
