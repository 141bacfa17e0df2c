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

// The numeric keywords, as llama-server's request fields name them, and where each goes
struct real_field { qstr name; float common_params_sampling::*field; };
struct int_field { qstr name; int32_t common_params_sampling::*field; };
static const real_field reals[] = {
    { MP_QSTR_temperature, &common_params_sampling::temp },
    { MP_QSTR_top_p, &common_params_sampling::top_p },
    { MP_QSTR_min_p, &common_params_sampling::min_p },
    { MP_QSTR_typical_p, &common_params_sampling::typ_p },
    { MP_QSTR_top_n_sigma, &common_params_sampling::top_n_sigma },
    { MP_QSTR_xtc_probability, &common_params_sampling::xtc_probability },
    { MP_QSTR_xtc_threshold, &common_params_sampling::xtc_threshold },
    { MP_QSTR_dynatemp_range, &common_params_sampling::dynatemp_range },
    { MP_QSTR_dynatemp_exponent, &common_params_sampling::dynatemp_exponent },
    { MP_QSTR_repeat_penalty, &common_params_sampling::penalty_repeat },
    { MP_QSTR_frequency_penalty, &common_params_sampling::penalty_freq },
    { MP_QSTR_presence_penalty, &common_params_sampling::penalty_present },
    { MP_QSTR_dry_multiplier, &common_params_sampling::dry_multiplier },
    { MP_QSTR_dry_base, &common_params_sampling::dry_base },
    { MP_QSTR_mirostat_tau, &common_params_sampling::mirostat_tau },
    { MP_QSTR_mirostat_eta, &common_params_sampling::mirostat_eta },
};
static const int_field ints[] = {
    { MP_QSTR_top_k, &common_params_sampling::top_k },
    { MP_QSTR_min_keep, &common_params_sampling::min_keep },
    { MP_QSTR_repeat_last_n, &common_params_sampling::penalty_last_n },
    { MP_QSTR_dry_allowed_length, &common_params_sampling::dry_allowed_length },
    { MP_QSTR_dry_penalty_last_n, &common_params_sampling::dry_penalty_last_n },
    { MP_QSTR_mirostat, &common_params_sampling::mirostat },
};

// sampling_defaults() -> {keyword: value}: the defaults of Sampler's numeric keywords
mp_obj_t llm_sampling_defaults(void) {
    mp_obj_t d = mp_obj_new_dict(0);
    for (const auto &f : reals) {
        mp_obj_dict_store(d, MP_OBJ_NEW_QSTR(f.name), decimal(defaults.*f.field));
    }
    for (const auto &f : ints) {
        mp_obj_dict_store(d, MP_OBJ_NEW_QSTR(f.name), mp_obj_new_int(defaults.*f.field));
    }
    mp_obj_dict_store(d, MP_OBJ_NEW_QSTR(MP_QSTR_seed), mp_obj_new_int(python_seed(defaults.seed)));
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

static void add_bias(llm_model_obj_t *m, mp_obj_t lb) {     // {token: bias} or [(token, bias)]
    mp_obj_t items = mp_obj_is_dict_or_ordereddict(lb) ? mp_call_function_0(mp_load_attr(lb, MP_QSTR_items)) : lb;
    mp_obj_t iter = mp_getiter(items, nullptr), item;
    while ((item = mp_iternext(iter)) != MP_OBJ_STOP_ITERATION) {
        mp_obj_t *pair;
        mp_obj_get_array_fixed_n(item, 2, &pair);
        llama_logit_bias b = { token_arg(m, pair[0]), pair[1] == mp_const_false ? -INFINITY : (float)mp_obj_get_float(pair[1]) };
        GUARD(params.logit_bias.push_back(b));
    }
}

static void add_trigger(llm_model_obj_t *m, mp_obj_t item) {
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

// A list of str as a std::vector, each element checked first
static void strings(mp_obj_t list, std::vector<std::string> &out) {
    size_t n;
    mp_obj_t *items;
    mp_obj_get_array(list, &n, &items);
    for (size_t i = 0; i < n; i++) {
        mp_obj_str_get_str(items[i]);
    }
    GUARD(out.clear());
    for (size_t i = 0; i < n; i++) {
        const char *s = mp_obj_str_get_str(items[i]);
        GUARD(out.emplace_back(s));
    }
}

static void samplers_arg(mp_obj_t order) {        // ["top_k", "temperature", ...] or "kt..."
    static std::vector<std::string> names;
    bool chars = mp_obj_is_str(order);
    const char *text = chars ? mp_obj_str_get_str(order) : "";
    if (!chars) {
        strings(order, names);
    }
    GUARD(params.samplers = chars ? common_sampler_types_from_chars(text) : common_sampler_types_from_names(names);
          names.clear());
}

// Sampler(model, **keywords). Numbers, with llama.cpp's defaults (sampling_defaults()):
//   temperature (<= 0: greedy), top_k, top_p, min_p, typical_p, top_n_sigma, xtc_probability,
//   xtc_threshold, dynatemp_range, dynatemp_exponent, repeat_penalty, repeat_last_n,
//   frequency_penalty, presence_penalty, dry_multiplier, dry_base, dry_allowed_length,
//   dry_penalty_last_n, mirostat (0, 1, 2), mirostat_tau, mirostat_eta, min_keep, seed (negative:
//   a random one). Also dry_sequence_breakers=[str], samplers=[name] or "chars" (the chain's order,
//   common_sampler_types_from_names/_chars), logit_bias={token: bias or False}, grammar=GBNF and
//   grammar_type="user"; "tool_calls" or "output_format" (a chat template's or a JSON schema's
//   grammar) first feeds the grammar generation_prompt, the text the prompt already ends with;
//   grammar_lazy=True applies it from the first of triggers: (0, token text, id) (1, word)
//   (2, pattern) (3, full pattern), as common_grammar_trigger. reasoning_budget >= 0 ends a
//   thinking block (begun by reasoning_start) after that many tokens with reasoning_message and the
//   first of reasoning_end.
mp_obj_t llm_sampler_make_new(const mp_obj_type_t *type, size_t n_args, size_t n_kw, const mp_obj_t *all_args) {
    mp_arg_check_num(n_args, n_kw, 1, 1, true);
    if (!mp_obj_is_type(all_args[0], &llm_model_type)) {
        mp_raise_TypeError(MP_ERROR_TEXT("first argument must be an llm.Model"));
    }
    llm_model_obj_t *m = has_context(all_args[0]);
    GUARD(params = common_params_sampling());
    params.no_perf = true;
    mp_obj_t grammar = mp_const_none, grammar_type = mp_const_none, gen_prompt = mp_const_none;
    mp_obj_t reasoning_end = mp_const_none, reasoning_message = mp_const_none;
    for (size_t i = 0; i < n_kw; i++) {
        qstr name = mp_obj_str_get_qstr(all_args[1 + 2 * i]);
        mp_obj_t value = all_args[2 + 2 * i];
        bool known = false;
        for (const auto &f : reals) {
            if (f.name == name) {
                params.*f.field = (float)mp_obj_get_float(value);
                known = true;
            }
        }
        for (const auto &f : ints) {
            if (f.name == name) {
                params.*f.field = (int32_t)mp_obj_get_int(value);
                known = true;
            }
        }
        if (known || value == mp_const_none) {
            continue;
        }
        switch (name) {
            case MP_QSTR_seed: {
                mp_int_t seed = mp_obj_get_int(value);
                params.seed = seed < 0 ? LLAMA_DEFAULT_SEED : (uint32_t)seed;
                break;
            }
            case MP_QSTR_logit_bias: add_bias(m, value); break;
            case MP_QSTR_grammar: grammar = value; break;
            case MP_QSTR_grammar_type: grammar_type = value; break;
            case MP_QSTR_grammar_lazy: params.grammar_lazy = mp_obj_is_true(value); break;
            case MP_QSTR_triggers: {
                mp_obj_t iter = mp_getiter(value, nullptr), item;
                while ((item = mp_iternext(iter)) != MP_OBJ_STOP_ITERATION) {
                    add_trigger(m, item);
                }
                break;
            }
            case MP_QSTR_generation_prompt: gen_prompt = value; break;
            case MP_QSTR_reasoning_budget: params.reasoning_budget_tokens = mp_obj_get_int(value); break;
            case MP_QSTR_reasoning_start: GUARD(tokens_of(m, value, params.reasoning_budget_start)); break;
            case MP_QSTR_reasoning_end: reasoning_end = value; break;
            case MP_QSTR_reasoning_message: reasoning_message = value; break;
            case MP_QSTR_dry_sequence_breakers: strings(value, params.dry_sequence_breakers); break;
            case MP_QSTR_samplers: samplers_arg(value); break;
            default:
                mp_raise_msg_varg(&mp_type_TypeError, MP_ERROR_TEXT("unexpected keyword argument '%q'"), name);
        }
    }
    if (grammar != mp_const_none) {
        const char *kind = grammar_type == mp_const_none ? "user" : mp_obj_str_get_str(grammar_type);
        common_grammar_type t = !strcmp(kind, "user") ? COMMON_GRAMMAR_TYPE_USER
            : !strcmp(kind, "tool_calls") ? COMMON_GRAMMAR_TYPE_TOOL_CALLS
            : !strcmp(kind, "output_format") ? COMMON_GRAMMAR_TYPE_OUTPUT_FORMAT : COMMON_GRAMMAR_TYPE_NONE;
        if (t == COMMON_GRAMMAR_TYPE_NONE) {
            mp_raise_ValueError(MP_ERROR_TEXT("grammar_type must be 'user', 'tool_calls' or 'output_format'"));
        }
        const char *g = mp_obj_str_get_str(grammar);
        if (*g) {
            GUARD(params.grammar = common_grammar(t, g));
        }
    }
    if (params.grammar_lazy && params.grammar_triggers.empty()) {
        mp_raise_ValueError(MP_ERROR_TEXT("a lazy grammar needs triggers"));
    }
    if (params.mirostat < 0 || params.mirostat > 2) {
        mp_raise_ValueError(MP_ERROR_TEXT("mirostat must be 0, 1 or 2"));
    }
    const char *gen = gen_prompt == mp_const_none ? "" : mp_obj_str_get_str(gen_prompt);
    GUARD(params.generation_prompt = gen);
    if (reasoning_end != mp_const_none) {
        mp_obj_t iter = mp_getiter(reasoning_end, nullptr), item;
        while ((item = mp_iternext(iter)) != MP_OBJ_STOP_ITERATION) {
            if (*mp_obj_str_get_str(item)) {
                GUARD(params.reasoning_budget_end.emplace_back(); tokens_of(m, item, params.reasoning_budget_end.back()));
            }
        }
        if (!params.reasoning_budget_end.empty()) {
            GUARD(params.reasoning_budget_forced = params.reasoning_budget_end.front());
            if (reasoning_message != mp_const_none) {
                static std::vector<llama_token> message;
                GUARD(tokens_of(m, reasoning_message, message);
                      auto &forced = params.reasoning_budget_forced;
                      forced.insert(forced.begin(), message.begin(), message.end());
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
                "in this model's tokens (its tokenizer splits the template's markers)"), gen);
        }
        if (log_error[0] || strstr(cpp_error, "grammar")) {     // the parser's ERROR line says where
            mp_raise_msg_varg(&mp_type_ValueError, MP_ERROR_TEXT("invalid grammar: %s"), log_error[0] ? log_error : cpp_error);
        }
        mp_raise_msg_varg(&mp_type_ValueError, MP_ERROR_TEXT("%s"), cpp_error);     // e.g. a repeat_penalty <= 0
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
// accept(token or tokens, grammar=True): tokens the sampler's history takes in (penalties, DRY, ...);
// with grammar=False not the grammar, as llama-server takes a prompt in before its first draw
mp_obj_t llm_sampler_accept(size_t n_args, const mp_obj_t *args) {
    llm_sampler_obj_t *self = open_sampler(args[0]);
    bool grammar = n_args < 3 || mp_obj_is_true(args[2]);
    size_t n = 1;
    llama_token one, *tokens = &one;
    if (mp_obj_is_int(args[1])) {
        one = token_arg(self->model, args[1]);
    } else {
        tokens = tokens_arg(self->model, args[1], &n);
    }
    GUARD(
        for (size_t i = 0; i < n; i++) {
            common_sampler_accept(self->chain, tokens[i], grammar);
        });
    return mp_const_none;
}

mp_obj_t llm_sampler_reset(mp_obj_t self_in) {
    llm_sampler_obj_t *self = open_sampler(self_in);
    GUARD(common_sampler_reset(self->chain));
    return mp_const_none;
}

// sample_n(seq_id, draft) -> [token, ...]: a draft verified as llama-server verifies one
// (common_sampler_sample_and_accept_n): the last decode gave the sequence logits for its sampled token
// and each draft token (a decode item (seq_id, [t] + draft, 1 + len(draft))); the draft's tokens as
// long as the sampler draws them, then the one it drew instead (or after the whole draft), all accepted
static std::vector<int> verify_idxs;            // outside any frame that calls MicroPython
static llama_tokens verify_draft, verified;

mp_obj_t llm_sampler_sample_n(mp_obj_t self_in, mp_obj_t seq_in, mp_obj_t draft_in) {
    llm_sampler_obj_t *s = open_sampler(self_in);
    llm_model_obj_t *m = s->model;
    int seq = seq_arg(m, seq_in);
    size_t n;
    llama_token *draft = tokens_arg(m, draft_in, &n);
    int last = logits_index(m, seq);
    if ((int)n + 1 != m->logits_n[seq]) {
        mp_raise_msg_varg(&mp_type_ValueError, MP_ERROR_TEXT("the last decode gave sequence %d logits at %d positions, "
                          "not 1 + %d draft tokens"), seq, m->logits_n[seq], (int)n);
    }
    GUARD(
        verify_idxs.clear();
        for (size_t i = 0; i <= n; i++) {
            verify_idxs.push_back(last - (int)n + (int)i);
        }
        verify_draft.assign(draft, draft + n);
        verified = common_sampler_sample_and_accept_n(s->chain, m->ctx, verify_idxs, verify_draft));
    mp_obj_t out = mp_obj_new_list(0, nullptr);
    for (llama_token t : verified) {
        mp_obj_list_append(out, MP_OBJ_NEW_SMALL_INT(t));
    }
    return out;
}

mp_obj_t llm_sampler_close(mp_obj_t self_in) {
    llm_sampler_obj_t *self = (llm_sampler_obj_t *)MP_OBJ_TO_PTR(self_in);
    if (self->chain) {
        common_sampler_free(self->chain);
        self->chain = nullptr;
    }
    return mp_const_none;
}
