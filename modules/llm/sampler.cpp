// The llm module's sampling and generation: llm.Sampler, a llama.cpp sampler chain in the order of
// llama.cpp's common sampler, and Model.generate, the decode-then-sample loop as a Python iterator.
// The model, tokens and decoding are in llm.cpp; llm_internal.h is what both share.
#include <cfloat>
#include <cmath>
#include <cstdlib>

#include "common.h"                     // llama.cpp's common library: common_params_sampling
#include "llm_internal.h"

// ---------------------------------------------------------------- sampling

// llama.cpp's sampling defaults, which llama-server starts each request from: the Sampler's, and
// through sampling_defaults() those of the HTTP API's fields
static const common_params_sampling defaults;

// A seed as Python passes it: negative for LLAMA_DEFAULT_SEED, a new random seed per sampler
static mp_int_t python_seed(uint32_t seed) {
    return seed == LLAMA_DEFAULT_SEED ? -1 : (mp_int_t)seed;
}

// A float default as the decimal it is written as in C: 0.8f as 0.8, not 0.800000011920929
static mp_obj_t decimal(float f) {
    char text[32];
    snprintf(text, sizeof(text), "%.*g", FLT_DIG, (double)f);
    return mp_obj_new_float(strtod(text, nullptr));
}

// sampling_defaults() -> {keyword: value}: the defaults of Sampler's numeric keywords
mp_obj_t llm_sampling_defaults(void) {
    mp_obj_t d = mp_obj_new_dict(9);
    auto store = [&](qstr name, mp_obj_t value) { mp_obj_dict_store(d, MP_OBJ_NEW_QSTR(name), value); };
    store(MP_QSTR_temperature, decimal(defaults.temp));
    store(MP_QSTR_top_k, mp_obj_new_int(defaults.top_k));
    store(MP_QSTR_top_p, decimal(defaults.top_p));
    store(MP_QSTR_min_p, decimal(defaults.min_p));
    store(MP_QSTR_seed, mp_obj_new_int(python_seed(defaults.seed)));
    store(MP_QSTR_repeat_penalty, decimal(defaults.penalty_repeat));
    store(MP_QSTR_repeat_last_n, mp_obj_new_int(defaults.penalty_last_n));
    store(MP_QSTR_frequency_penalty, decimal(defaults.penalty_freq));
    store(MP_QSTR_presence_penalty, decimal(defaults.penalty_present));
    return d;
}

// Sampler(model, *, temperature, top_k, top_p, min_p, seed, repeat_penalty, repeat_last_n,
//         frequency_penalty, presence_penalty, grammar=None, grammar_root="root", logit_bias=None):
//         the numbers' defaults are llama.cpp's (sampling_defaults()). temperature <= 0 means
//         greedy, a negative seed a random one.
mp_obj_t llm_sampler_make_new(const mp_obj_type_t *type, size_t n_args, size_t n_kw, const mp_obj_t *all_args) {
    enum { ARG_model, ARG_temperature, ARG_top_k, ARG_top_p, ARG_min_p, ARG_seed, ARG_repeat_penalty,
           ARG_repeat_last_n, ARG_frequency_penalty, ARG_presence_penalty, ARG_grammar, ARG_grammar_root,
           ARG_logit_bias };
    static const mp_arg_t allowed[] = {
        { MP_QSTR_model, MP_ARG_REQUIRED | MP_ARG_OBJ, {.u_obj = MP_OBJ_NULL} },
        { MP_QSTR_temperature, MP_ARG_KW_ONLY | MP_ARG_OBJ, {.u_obj = MP_OBJ_NULL} },
        { MP_QSTR_top_k, MP_ARG_KW_ONLY | MP_ARG_OBJ, {.u_obj = MP_OBJ_NULL} },
        { MP_QSTR_top_p, MP_ARG_KW_ONLY | MP_ARG_OBJ, {.u_obj = MP_OBJ_NULL} },
        { MP_QSTR_min_p, MP_ARG_KW_ONLY | MP_ARG_OBJ, {.u_obj = MP_OBJ_NULL} },
        { MP_QSTR_seed, MP_ARG_KW_ONLY | MP_ARG_OBJ, {.u_obj = MP_OBJ_NULL} },
        { MP_QSTR_repeat_penalty, MP_ARG_KW_ONLY | MP_ARG_OBJ, {.u_obj = MP_OBJ_NULL} },
        { MP_QSTR_repeat_last_n, MP_ARG_KW_ONLY | MP_ARG_OBJ, {.u_obj = MP_OBJ_NULL} },
        { MP_QSTR_frequency_penalty, MP_ARG_KW_ONLY | MP_ARG_OBJ, {.u_obj = MP_OBJ_NULL} },
        { MP_QSTR_presence_penalty, MP_ARG_KW_ONLY | MP_ARG_OBJ, {.u_obj = MP_OBJ_NULL} },
        { MP_QSTR_grammar, MP_ARG_KW_ONLY | MP_ARG_OBJ, {.u_obj = mp_const_none} },
        { MP_QSTR_grammar_root, MP_ARG_KW_ONLY | MP_ARG_OBJ, {.u_obj = mp_const_none} },
        { MP_QSTR_logit_bias, MP_ARG_KW_ONLY | MP_ARG_OBJ, {.u_obj = mp_const_none} },
    };
    mp_arg_val_t args[MP_ARRAY_SIZE(allowed)];
    mp_arg_parse_all_kw_array(n_args, n_kw, all_args, MP_ARRAY_SIZE(allowed), allowed, args);
    if (!mp_obj_is_type(args[ARG_model].u_obj, &llm_model_type)) {
        mp_raise_TypeError(MP_ERROR_TEXT("first argument must be an llm.Model"));
    }
    llm_model_obj_t *m = open_context(args[ARG_model].u_obj);
    auto real = [&](int i, float dflt) {
        return args[i].u_obj == MP_OBJ_NULL ? dflt : (float)mp_obj_get_float(args[i].u_obj);
    };
    auto integer = [&](int i, mp_int_t dflt) {
        return args[i].u_obj == MP_OBJ_NULL ? dflt : mp_obj_get_int(args[i].u_obj);
    };
    float temperature = real(ARG_temperature, defaults.temp), top_p = real(ARG_top_p, defaults.top_p);
    float min_p = real(ARG_min_p, defaults.min_p), repeat = real(ARG_repeat_penalty, defaults.penalty_repeat);
    float freq = real(ARG_frequency_penalty, defaults.penalty_freq), pres = real(ARG_presence_penalty, defaults.penalty_present);
    int top_k = integer(ARG_top_k, defaults.top_k), last_n = integer(ARG_repeat_last_n, defaults.penalty_last_n);
    mp_int_t seed_in = integer(ARG_seed, python_seed(defaults.seed));
    int n_vocab = llama_vocab_n_tokens(m->vocab);

    // logit_bias: {token: bias} or [(token, bias)], checked before anything is allocated
    size_t n_bias = 0;
    llama_logit_bias *bias = nullptr;
    mp_obj_t lb = args[ARG_logit_bias].u_obj;
    if (lb != mp_const_none) {
        mp_obj_t items = mp_obj_is_dict_or_ordereddict(lb)
            ? mp_call_function_0(mp_load_attr(lb, MP_QSTR_items)) : lb;
        mp_obj_t list = mp_obj_new_list(0, nullptr);
        mp_obj_t iter = mp_getiter(items, nullptr), item;
        while ((item = mp_iternext(iter)) != MP_OBJ_STOP_ITERATION) {
            mp_obj_list_append(list, item);
        }
        mp_obj_t *entries;
        mp_obj_list_get(list, &n_bias, &entries);
        bias = m_new(llama_logit_bias, n_bias ? n_bias : 1);
        for (size_t i = 0; i < n_bias; i++) {
            mp_obj_t *pair;
            mp_obj_get_array_fixed_n(entries[i], 2, &pair);
            bias[i].token = token_arg(m, pair[0]);
            bias[i].bias = pair[1] == mp_const_false ? -INFINITY : (float)mp_obj_get_float(pair[1]);
        }
    }
    const char *grammar = args[ARG_grammar].u_obj == mp_const_none ? nullptr : mp_obj_str_get_str(args[ARG_grammar].u_obj);
    const char *root = args[ARG_grammar_root].u_obj == mp_const_none ? "root" : mp_obj_str_get_str(args[ARG_grammar_root].u_obj);
    uint32_t seed = seed_in < 0 ? LLAMA_DEFAULT_SEED : (uint32_t)seed_in;

    llm_sampler_obj_t *self = mp_obj_malloc_with_finaliser(llm_sampler_obj_t, type);
    self->model = m;
    self->chain = nullptr;
    bool grammar_ok = true;
    log_error[0] = 0;
    // The order of llama.cpp's common sampler: bias, penalties, grammar, then the truncations.
    GUARD(
        llama_sampler_chain_params p = llama_sampler_chain_default_params();
        p.no_perf = true;
        self->chain = llama_sampler_chain_init(p);
        if (n_bias) {
            llama_sampler_chain_add(self->chain, llama_sampler_init_logit_bias(n_vocab, (int32_t)n_bias, bias));
        }
        if (repeat != 1.0f || freq != 0.0f || pres != 0.0f) {
            llama_sampler_chain_add(self->chain, llama_sampler_init_penalties(n_vocab, last_n, repeat, freq, pres));
        }
        if (grammar) {
            llama_sampler *g = llama_sampler_init_grammar(m->vocab, grammar, root);
            grammar_ok = g != nullptr;
            if (g) {
                llama_sampler_chain_add(self->chain, g);
            }
        }
        if (temperature <= 0.0f) {
            llama_sampler_chain_add(self->chain, llama_sampler_init_greedy());
        } else {
            if (top_k > 0) {
                llama_sampler_chain_add(self->chain, llama_sampler_init_top_k(top_k));
            }
            llama_sampler_chain_add(self->chain, llama_sampler_init_top_p(top_p, 1));
            llama_sampler_chain_add(self->chain, llama_sampler_init_min_p(min_p, 1));
            llama_sampler_chain_add(self->chain, llama_sampler_init_temp(temperature));
            llama_sampler_chain_add(self->chain, llama_sampler_init_dist(seed));
        }
    );
    if (!grammar_ok) {
        mp_raise_msg_varg(&mp_type_ValueError, MP_ERROR_TEXT("invalid grammar: %s"), log_error[0] ? log_error : "parse error");
    }
    return MP_OBJ_FROM_PTR(self);
}

static llm_sampler_obj_t *open_sampler(mp_obj_t self_in) {
    llm_sampler_obj_t *self = (llm_sampler_obj_t *)MP_OBJ_TO_PTR(self_in);
    if (!self->chain) {
        mp_raise_ValueError(MP_ERROR_TEXT("sampler is closed"));
    }
    open_context(MP_OBJ_FROM_PTR(self->model));
    return self;
}

static llama_token sample(llm_sampler_obj_t *s, int seq) {
    llm_model_obj_t *m = s->model;
    int idx = logits_index(m, seq);
    llama_token t = LLAMA_TOKEN_NULL;
    GUARD(t = llama_sampler_sample(s->chain, m->ctx, idx));    // also accepts t into the chain
    if (t == LLAMA_TOKEN_NULL) {
        mp_raise_msg(&mp_type_RuntimeError, MP_ERROR_TEXT("no token can be sampled (the grammar allows none?)"));
    }
    return t;
}

// sample(seq_id=0) -> token, from the sequence's logits of the last decode; the chain accepts it
mp_obj_t llm_sampler_sample(size_t n_args, const mp_obj_t *args) {
    llm_sampler_obj_t *self = open_sampler(args[0]);
    int seq = seq_arg(self->model, n_args > 1 ? args[1] : MP_OBJ_NEW_SMALL_INT(0));
    return MP_OBJ_NEW_SMALL_INT(sample(self, seq));
}

// accept(token): tell the chain about a token chosen elsewhere (penalties, grammar state)
mp_obj_t llm_sampler_accept(mp_obj_t self_in, mp_obj_t token) {
    llm_sampler_obj_t *self = open_sampler(self_in);
    llama_token t = token_arg(self->model, token);
    GUARD(llama_sampler_accept(self->chain, t));
    return mp_const_none;
}

mp_obj_t llm_sampler_reset(mp_obj_t self_in) {
    llm_sampler_obj_t *self = open_sampler(self_in);
    GUARD(llama_sampler_reset(self->chain));
    return mp_const_none;
}

mp_obj_t llm_sampler_close(mp_obj_t self_in) {
    llm_sampler_obj_t *self = (llm_sampler_obj_t *)MP_OBJ_TO_PTR(self_in);
    if (self->chain) {
        llama_sampler_free(self->chain);
        self->chain = nullptr;
    }
    return mp_const_none;
}

// ---------------------------------------------------------------- generation

// generate(tokens, sampler, seq_id=0, max_tokens=-1) -> iterator of token ids, one decode per
// step, so Python can stream and stay responsive in between. The end-of-generation token is
// yielded too (check model.is_eog) and ends the iteration.
mp_obj_t llm_model_generate(size_t n_args, const mp_obj_t *pos_args, mp_map_t *kw_args) {
    enum { ARG_self, ARG_tokens, ARG_sampler, ARG_seq_id, ARG_max_tokens };
    static const mp_arg_t allowed[] = {
        { MP_QSTR_self, MP_ARG_REQUIRED | MP_ARG_OBJ, {.u_obj = MP_OBJ_NULL} },
        { MP_QSTR_tokens, MP_ARG_REQUIRED | MP_ARG_OBJ, {.u_obj = MP_OBJ_NULL} },
        { MP_QSTR_sampler, MP_ARG_REQUIRED | MP_ARG_OBJ, {.u_obj = MP_OBJ_NULL} },
        { MP_QSTR_seq_id, MP_ARG_INT, {.u_int = 0} },
        { MP_QSTR_max_tokens, MP_ARG_INT, {.u_int = -1} },
    };
    mp_arg_val_t args[MP_ARRAY_SIZE(allowed)];
    mp_arg_parse_all(n_args, pos_args, kw_args, MP_ARRAY_SIZE(allowed), allowed, args);
    llm_model_obj_t *m = open_context(args[ARG_self].u_obj);
    if (!mp_obj_is_type(args[ARG_sampler].u_obj, &llm_sampler_type)) {
        mp_raise_TypeError(MP_ERROR_TEXT("sampler must be an llm.Sampler"));
    }
    llm_sampler_obj_t *s = open_sampler(args[ARG_sampler].u_obj);
    if (s->model != m) {
        mp_raise_ValueError(MP_ERROR_TEXT("the sampler belongs to another model"));
    }
    int seq = seq_arg(m, MP_OBJ_NEW_SMALL_INT(args[ARG_seq_id].u_int));
    size_t n;
    mp_obj_t *items;
    mp_obj_get_array(args[ARG_tokens].u_obj, &n, &items);
    mp_obj_t prompt = mp_obj_new_list(0, nullptr);
    for (size_t i = 0; i < n; i++) {
        token_arg(m, items[i]);                     // validate now, not at the first step
        mp_obj_list_append(prompt, items[i]);
    }
    if (n == 0 && m->logits_index[seq] < 0) {
        mp_raise_ValueError(MP_ERROR_TEXT("empty prompt and no logits to continue from"));
    }
    llm_generator_obj_t *g = mp_obj_malloc(llm_generator_obj_t, &llm_generator_type);
    g->model = m;
    g->sampler = s;
    g->prompt = n ? prompt : mp_const_none;
    g->seq = seq;
    g->remaining = args[ARG_max_tokens].u_int < 0 ? m->n_ctx : args[ARG_max_tokens].u_int;
    g->pending = -1;
    return MP_OBJ_FROM_PTR(g);
}

mp_obj_t llm_generator_iternext(mp_obj_t self_in) {
    llm_generator_obj_t *g = (llm_generator_obj_t *)MP_OBJ_TO_PTR(self_in);
    if (g->remaining <= 0) {
        return MP_OBJ_STOP_ITERATION;
    }
    llm_model_obj_t *m = open_context(MP_OBJ_FROM_PTR(g->model));
    decode_item item;
    item.seq = g->seq;
    if (g->prompt != mp_const_none) {
        item.tokens = tokens_arg(m, g->prompt, &item.n);
        g->prompt = mp_const_none;
        decode_items(m, &item, 1);
    } else if (g->pending >= 0) {
        llama_token t = g->pending;
        item.tokens = &t;
        item.n = 1;
        g->pending = -1;
        decode_items(m, &item, 1);
    }
    llama_token t = sample(g->sampler, g->seq);
    g->remaining--;
    g->pending = t;
    if (llama_vocab_is_eog(m->vocab, t)) {
        g->remaining = 0;
    }
    return MP_OBJ_NEW_SMALL_INT(t);
}
