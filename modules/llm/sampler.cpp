// llm.Sampler: llama.cpp's common sampler (common/sampling.cpp), the one llama-server builds for each
// request: logit bias, penalties, DRY, top-n-sigma, top-k, typical, top-p, min-p, XTC, temperature
// and the draw, a grammar checked by rejection (eager, or lazy until a trigger), and the reasoning
// budget. Its defaults are llama.cpp's common_params_sampling, which sampling_defaults() hands to
// the HTTP API.
#include <cfloat>
#include <cmath>
#include <cstdlib>
#include <cstring>

#include "common.h"
#include "sampling.h"
#include "llm_internal.h"

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

// What the constructor gives common_sampler_init, filled outside any frame that calls MicroPython
static common_params_sampling params;

static void tokens_of(llm_model_obj_t *m, mp_obj_t text, std::vector<llama_token> &out) {
    const char *s = mp_obj_str_get_str(text);
    int n = -llama_tokenize(m->vocab, s, (int32_t)strlen(s), nullptr, 0, false, true);
    out.resize(n > 0 ? n : 0);
    if (n > 0) {
        llama_tokenize(m->vocab, s, (int32_t)strlen(s), out.data(), n, false, true);
    }
}

// Sampler(model, *, temperature, top_k, top_p, min_p, seed, repeat_penalty, repeat_last_n,
//         frequency_penalty, presence_penalty, grammar=None, logit_bias=None,
//         grammar_type="user", grammar_lazy=False, triggers=(), generation_prompt="",
//         reasoning_budget=-1, reasoning_start="", reasoning_end=(), reasoning_message=""):
//   the numbers' defaults are llama.cpp's (sampling_defaults()). temperature <= 0 means greedy, a
//   negative seed a random one. grammar_type "tool_calls" or "output_format" (a chat template's or
//   a JSON schema's grammar) first feeds the grammar generation_prompt, the text the prompt already
//   ends with; a lazy grammar applies from the first trigger: (0, token text, id) (1, word)
//   (2, pattern) (3, full pattern), as common_grammar_trigger. reasoning_budget >= 0 ends a
//   thinking block (begun by reasoning_start) after that many tokens with reasoning_message and the
//   first of reasoning_end.
mp_obj_t llm_sampler_make_new(const mp_obj_type_t *type, size_t n_args, size_t n_kw, const mp_obj_t *all_args) {
    enum { ARG_model, ARG_temperature, ARG_top_k, ARG_top_p, ARG_min_p, ARG_seed, ARG_repeat_penalty,
           ARG_repeat_last_n, ARG_frequency_penalty, ARG_presence_penalty, ARG_grammar, ARG_logit_bias,
           ARG_grammar_type, ARG_grammar_lazy, ARG_triggers, ARG_generation_prompt, ARG_reasoning_budget,
           ARG_reasoning_start, ARG_reasoning_end, ARG_reasoning_message };
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
        { MP_QSTR_logit_bias, MP_ARG_KW_ONLY | MP_ARG_OBJ, {.u_obj = mp_const_none} },
        { MP_QSTR_grammar_type, MP_ARG_KW_ONLY | MP_ARG_OBJ, {.u_obj = mp_const_none} },
        { MP_QSTR_grammar_lazy, MP_ARG_KW_ONLY | MP_ARG_BOOL, {.u_bool = false} },
        { MP_QSTR_triggers, MP_ARG_KW_ONLY | MP_ARG_OBJ, {.u_obj = mp_const_none} },
        { MP_QSTR_generation_prompt, MP_ARG_KW_ONLY | MP_ARG_OBJ, {.u_obj = mp_const_none} },
        { MP_QSTR_reasoning_budget, MP_ARG_KW_ONLY | MP_ARG_INT, {.u_int = -1} },
        { MP_QSTR_reasoning_start, MP_ARG_KW_ONLY | MP_ARG_OBJ, {.u_obj = mp_const_none} },
        { MP_QSTR_reasoning_end, MP_ARG_KW_ONLY | MP_ARG_OBJ, {.u_obj = mp_const_none} },
        { MP_QSTR_reasoning_message, MP_ARG_KW_ONLY | MP_ARG_OBJ, {.u_obj = mp_const_none} },
    };
    mp_arg_val_t args[MP_ARRAY_SIZE(allowed)];
    mp_arg_parse_all_kw_array(n_args, n_kw, all_args, MP_ARRAY_SIZE(allowed), allowed, args);
    if (!mp_obj_is_type(args[ARG_model].u_obj, &llm_model_type)) {
        mp_raise_TypeError(MP_ERROR_TEXT("first argument must be an llm.Model"));
    }
    llm_model_obj_t *m = has_context(args[ARG_model].u_obj);
    auto real = [&](int i, float dflt) {
        return args[i].u_obj == MP_OBJ_NULL ? dflt : (float)mp_obj_get_float(args[i].u_obj);
    };
    auto integer = [&](int i, mp_int_t dflt) {
        return args[i].u_obj == MP_OBJ_NULL ? dflt : mp_obj_get_int(args[i].u_obj);
    };
    auto text = [&](int i) { return args[i].u_obj == mp_const_none ? "" : mp_obj_str_get_str(args[i].u_obj); };

    GUARD(params = common_params_sampling());
    params.no_perf = true;
    params.temp = real(ARG_temperature, defaults.temp);
    params.top_k = integer(ARG_top_k, defaults.top_k);
    params.top_p = real(ARG_top_p, defaults.top_p);
    params.min_p = real(ARG_min_p, defaults.min_p);
    params.penalty_repeat = real(ARG_repeat_penalty, defaults.penalty_repeat);
    params.penalty_last_n = integer(ARG_repeat_last_n, defaults.penalty_last_n);
    params.penalty_freq = real(ARG_frequency_penalty, defaults.penalty_freq);
    params.penalty_present = real(ARG_presence_penalty, defaults.penalty_present);
    mp_int_t seed = integer(ARG_seed, python_seed(defaults.seed));
    params.seed = seed < 0 ? LLAMA_DEFAULT_SEED : (uint32_t)seed;

    // logit_bias: {token: bias} or [(token, bias)]
    mp_obj_t lb = args[ARG_logit_bias].u_obj;
    if (lb != mp_const_none) {
        mp_obj_t items = mp_obj_is_dict_or_ordereddict(lb) ? mp_call_function_0(mp_load_attr(lb, MP_QSTR_items)) : lb;
        mp_obj_t iter = mp_getiter(items, nullptr), item;
        while ((item = mp_iternext(iter)) != MP_OBJ_STOP_ITERATION) {
            mp_obj_t *pair;
            mp_obj_get_array_fixed_n(item, 2, &pair);
            llama_logit_bias b = { token_arg(m, pair[0]), pair[1] == mp_const_false ? -INFINITY : (float)mp_obj_get_float(pair[1]) };
            GUARD(params.logit_bias.push_back(b));
        }
    }
    if (args[ARG_grammar].u_obj != mp_const_none) {
        const char *kind = args[ARG_grammar_type].u_obj == mp_const_none ? "user" : mp_obj_str_get_str(args[ARG_grammar_type].u_obj);
        common_grammar_type t = !strcmp(kind, "user") ? COMMON_GRAMMAR_TYPE_USER
            : !strcmp(kind, "tool_calls") ? COMMON_GRAMMAR_TYPE_TOOL_CALLS
            : !strcmp(kind, "output_format") ? COMMON_GRAMMAR_TYPE_OUTPUT_FORMAT : COMMON_GRAMMAR_TYPE_NONE;
        if (t == COMMON_GRAMMAR_TYPE_NONE) {
            mp_raise_ValueError(MP_ERROR_TEXT("grammar_type must be 'user', 'tool_calls' or 'output_format'"));
        }
        const char *g = mp_obj_str_get_str(args[ARG_grammar].u_obj);
        if (*g) {
            GUARD(params.grammar = common_grammar(t, g));
        }
    }
    params.grammar_lazy = args[ARG_grammar_lazy].u_bool;
    if (args[ARG_triggers].u_obj != mp_const_none) {
        mp_obj_t iter = mp_getiter(args[ARG_triggers].u_obj, nullptr), item;
        while ((item = mp_iternext(iter)) != MP_OBJ_STOP_ITERATION) {
            size_t n;
            mp_obj_t *f;
            mp_obj_get_array(item, &n, &f);
            mp_int_t kind = n >= 2 ? mp_obj_get_int(f[0]) : -1;
            if (kind < COMMON_GRAMMAR_TRIGGER_TYPE_TOKEN || kind > COMMON_GRAMMAR_TRIGGER_TYPE_PATTERN_FULL
                || (kind == COMMON_GRAMMAR_TRIGGER_TYPE_TOKEN && n != 3)) {
                mp_raise_ValueError(MP_ERROR_TEXT("a trigger is (type, text) or (type, text, token)"));
            }
            llama_token token = n == 3 ? token_arg(m, f[2]) : LLAMA_TOKEN_NULL;
            const char *value = mp_obj_str_get_str(f[1]);
            GUARD(
                common_grammar_trigger trigger;
                trigger.type = (common_grammar_trigger_type)kind;
                trigger.value = value;
                trigger.token = token;
                params.grammar_triggers.push_back(trigger));
        }
    }
    if (params.grammar_lazy && params.grammar_triggers.empty()) {
        mp_raise_ValueError(MP_ERROR_TEXT("a lazy grammar needs triggers"));
    }
    const char *gen_prompt = text(ARG_generation_prompt);
    GUARD(params.generation_prompt = gen_prompt);
    params.reasoning_budget_tokens = args[ARG_reasoning_budget].u_int;
    if (args[ARG_reasoning_start].u_obj != mp_const_none) {
        GUARD(tokens_of(m, args[ARG_reasoning_start].u_obj, params.reasoning_budget_start));
    }
    if (args[ARG_reasoning_end].u_obj != mp_const_none) {
        mp_obj_t iter = mp_getiter(args[ARG_reasoning_end].u_obj, nullptr), item;
        while ((item = mp_iternext(iter)) != MP_OBJ_STOP_ITERATION) {
            if (*mp_obj_str_get_str(item)) {
                GUARD(params.reasoning_budget_end.emplace_back(); tokens_of(m, item, params.reasoning_budget_end.back()));
            }
        }
        if (!params.reasoning_budget_end.empty()) {
            GUARD(params.reasoning_budget_forced = params.reasoning_budget_end.front());
            if (args[ARG_reasoning_message].u_obj != mp_const_none) {
                static std::vector<llama_token> message;
                GUARD(tokens_of(m, args[ARG_reasoning_message].u_obj, message);
                      params.reasoning_budget_forced.insert(params.reasoning_budget_forced.begin(), message.begin(), message.end());
                      message.clear());
            }
        }
    }

    llm_sampler_obj_t *self = mp_obj_malloc_with_finaliser(llm_sampler_obj_t, type);
    self->model = m;
    self->chain = nullptr;
    log_error[0] = 0;
    bool made = guarded([&] { self->chain = common_sampler_init(m->model, params); });
    GUARD(params = common_params_sampling());
    if (!made) {
        if (strcmp(cpp_error, "out of memory") == 0) {
            raise_cpp_error();
        }
        if (strstr(log_error, "error initializing grammar sampler")) {     // its prefill of generation_prompt
            mp_raise_msg_varg(&mp_type_ValueError, MP_ERROR_TEXT("the grammar does not accept the generation prompt '%s' "
                "in this model's tokens (its tokenizer splits the template's markers)"), gen_prompt);
        }
        mp_raise_msg_varg(&mp_type_ValueError, MP_ERROR_TEXT("invalid grammar: %s"), log_error[0] ? log_error : cpp_error);
    }
    return MP_OBJ_FROM_PTR(self);
}

llm_sampler_obj_t *open_sampler(mp_obj_t self_in) {
    llm_sampler_obj_t *self = (llm_sampler_obj_t *)MP_OBJ_TO_PTR(self_in);
    if (!self->chain) {
        mp_raise_ValueError(MP_ERROR_TEXT("sampler is closed"));
    }
    open_context(MP_OBJ_FROM_PTR(self->model));
    return self;
}

llama_token sampler_sample(llm_sampler_obj_t *s, int seq) {
    llm_model_obj_t *m = s->model;
    int idx = logits_index(m, seq);
    llama_token t = LLAMA_TOKEN_NULL;
    GUARD(
        t = common_sampler_sample(s->chain, m->ctx, idx);
        if (t != LLAMA_TOKEN_NULL) {
            common_sampler_accept(s->chain, t, true);
        });
    if (t == LLAMA_TOKEN_NULL) {
        mp_raise_msg(&mp_type_RuntimeError, MP_ERROR_TEXT("no token can be sampled (the grammar allows none?)"));
    }
    return t;
}

// sample(seq_id=0) -> token, from the sequence's logits of the last decode; the sampler accepts it
mp_obj_t llm_sampler_sample(size_t n_args, const mp_obj_t *args) {
    llm_sampler_obj_t *self = open_sampler(args[0]);
    int seq = seq_arg(self->model, n_args > 1 ? args[1] : MP_OBJ_NEW_SMALL_INT(0));
    return MP_OBJ_NEW_SMALL_INT(sampler_sample(self, seq));
}

// accept(token): tell the sampler about a token chosen elsewhere (penalties, grammar state)
mp_obj_t llm_sampler_accept(mp_obj_t self_in, mp_obj_t token) {
    llm_sampler_obj_t *self = open_sampler(self_in);
    llama_token t = token_arg(self->model, token);
    GUARD(common_sampler_accept(self->chain, t, true));
    return mp_const_none;
}

mp_obj_t llm_sampler_reset(mp_obj_t self_in) {
    llm_sampler_obj_t *self = open_sampler(self_in);
    GUARD(common_sampler_reset(self->chain));
    return mp_const_none;
}

mp_obj_t llm_sampler_close(mp_obj_t self_in) {
    llm_sampler_obj_t *self = (llm_sampler_obj_t *)MP_OBJ_TO_PTR(self_in);
    if (self->chain) {
        common_sampler_free(self->chain);
        self->chain = nullptr;
    }
    return mp_const_none;
}
