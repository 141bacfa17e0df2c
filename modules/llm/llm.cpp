// The llm module: a thin Python face over llama.cpp's C API, in the manner of llama.cpp's
// examples/simple — load, tokenize, batch, decode, sample, detokenize. Policy (queues,
// streaming, stop words, batching of requests) belongs to the frozen Python above.
//
// This file: what a request does with a loaded model, in the order a request does it: text to
// tokens and back (and the chat template), decoding and logits, grammars and Model.generate.
// llm.Sampler is in sampler.cpp, the chat templates and their parsers (llm.Chat) in chat.cpp.
// Loading the model is in model.cpp; llm_internal.h is what both share, among it the two rules
// that keep C++ exceptions and MicroPython's longjmp apart.
#include <cfloat>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <pthread.h>

#include "common.h"                     // llama.cpp's common library: common_params_sampling
#include "json-schema-to-grammar.h"     // and json_schema_to_grammar, what llama-server uses
#include "llm_internal.h"

extern "C" {
#include "py/objstr.h"
mp_obj_t llm_floats_to_ndarray(const float *values, size_t n);
}

// ---------------------------------------------------------------- text and tokens

llama_token token_arg(llm_model_obj_t *m, mp_obj_t o) {
    mp_int_t t = mp_obj_get_int(o);
    int n_vocab = llama_vocab_n_tokens(m->vocab);
    if (t < 0 || t >= n_vocab) {
        mp_raise_msg_varg(&mp_type_ValueError, MP_ERROR_TEXT("token id %d out of range [0, %d)"), (int)t, n_vocab);
    }
    return (llama_token)t;
}

// A Python sequence of token ids as a validated array on the GC heap.
llama_token *tokens_arg(llm_model_obj_t *m, mp_obj_t seq, size_t *n) {
    mp_obj_t *items;
    mp_obj_get_array(seq, n, &items);
    llama_token *tokens = m_new(llama_token, *n ? *n : 1);
    for (size_t i = 0; i < *n; i++) {
        tokens[i] = token_arg(m, items[i]);
    }
    return tokens;
}

// tokenize(text, add_special=True, parse_special=False) -> [int]
mp_obj_t llm_model_tokenize(size_t n_args, const mp_obj_t *pos_args, mp_map_t *kw_args) {
    enum { ARG_self, ARG_text, ARG_add_special, ARG_parse_special };
    static const mp_arg_t allowed[] = {
        { MP_QSTR_self, MP_ARG_REQUIRED | MP_ARG_OBJ, {.u_obj = MP_OBJ_NULL} },
        { MP_QSTR_text, MP_ARG_REQUIRED | MP_ARG_OBJ, {.u_obj = MP_OBJ_NULL} },
        { MP_QSTR_add_special, MP_ARG_BOOL, {.u_bool = true} },
        { MP_QSTR_parse_special, MP_ARG_BOOL, {.u_bool = false} },
    };
    mp_arg_val_t args[MP_ARRAY_SIZE(allowed)];
    mp_arg_parse_all(n_args, pos_args, kw_args, MP_ARRAY_SIZE(allowed), allowed, args);
    llm_model_obj_t *self = open_model(args[ARG_self].u_obj);
    size_t len;
    const char *text = mp_obj_str_get_data(args[ARG_text].u_obj, &len);
    bool add = args[ARG_add_special].u_bool, parse = args[ARG_parse_special].u_bool;
    int32_t cap = (int32_t)len + 8, n = 0;
    llama_token *tokens = m_new(llama_token, cap);
    GUARD(n = llama_tokenize(self->vocab, text, (int32_t)len, tokens, cap, add, parse));
    if (n < 0) {
        tokens = m_renew(llama_token, tokens, cap, -n);
        cap = -n;
        GUARD(n = llama_tokenize(self->vocab, text, (int32_t)len, tokens, cap, add, parse));
    }
    if (n < 0) {
        mp_raise_ValueError(MP_ERROR_TEXT("cannot tokenize text"));
    }
    mp_obj_t list = mp_obj_new_list(n, nullptr);
    mp_obj_t *items;
    size_t count;
    mp_obj_list_get(list, &count, &items);
    for (int32_t i = 0; i < n; i++) {
        items[i] = MP_OBJ_NEW_SMALL_INT(tokens[i]);
    }
    m_del(llama_token, tokens, cap);
    return list;
}

// detokenize(tokens, remove_special=False, unparse_special=False) -> str
mp_obj_t llm_model_detokenize(size_t n_args, const mp_obj_t *pos_args, mp_map_t *kw_args) {
    enum { ARG_self, ARG_tokens, ARG_remove_special, ARG_unparse_special };
    static const mp_arg_t allowed[] = {
        { MP_QSTR_self, MP_ARG_REQUIRED | MP_ARG_OBJ, {.u_obj = MP_OBJ_NULL} },
        { MP_QSTR_tokens, MP_ARG_REQUIRED | MP_ARG_OBJ, {.u_obj = MP_OBJ_NULL} },
        { MP_QSTR_remove_special, MP_ARG_BOOL, {.u_bool = false} },
        { MP_QSTR_unparse_special, MP_ARG_BOOL, {.u_bool = false} },
    };
    mp_arg_val_t args[MP_ARRAY_SIZE(allowed)];
    mp_arg_parse_all(n_args, pos_args, kw_args, MP_ARRAY_SIZE(allowed), allowed, args);
    llm_model_obj_t *self = open_model(args[ARG_self].u_obj);
    size_t n_tokens;
    llama_token *tokens = tokens_arg(self, args[ARG_tokens].u_obj, &n_tokens);
    bool remove = args[ARG_remove_special].u_bool, unparse = args[ARG_unparse_special].u_bool;
    vstr_t text;
    vstr_init(&text, n_tokens * 8 + 16);
    int32_t n = 0;
    GUARD(n = llama_detokenize(self->vocab, tokens, (int32_t)n_tokens, text.buf, (int32_t)text.alloc, remove, unparse));
    if (n < 0) {
        vstr_hint_size(&text, -n);
        GUARD(n = llama_detokenize(self->vocab, tokens, (int32_t)n_tokens, text.buf, (int32_t)text.alloc, remove, unparse));
    }
    if (n < 0) {
        mp_raise_ValueError(MP_ERROR_TEXT("cannot detokenize"));
    }
    text.len = n;
    mp_obj_t s = mp_obj_new_str(text.buf, text.len);     // raises UnicodeError on a cut UTF-8 sequence
    vstr_clear(&text);
    return s;
}

// token_to_piece(token, special=True) -> bytes: a token may end inside a UTF-8 sequence
mp_obj_t llm_model_token_to_piece(size_t n_args, const mp_obj_t *pos_args, mp_map_t *kw_args) {
    enum { ARG_self, ARG_token, ARG_special };
    static const mp_arg_t allowed[] = {
        { MP_QSTR_self, MP_ARG_REQUIRED | MP_ARG_OBJ, {.u_obj = MP_OBJ_NULL} },
        { MP_QSTR_token, MP_ARG_REQUIRED | MP_ARG_OBJ, {.u_obj = MP_OBJ_NULL} },
        { MP_QSTR_special, MP_ARG_BOOL, {.u_bool = true} },
    };
    mp_arg_val_t args[MP_ARRAY_SIZE(allowed)];
    mp_arg_parse_all(n_args, pos_args, kw_args, MP_ARRAY_SIZE(allowed), allowed, args);
    llm_model_obj_t *self = open_model(args[ARG_self].u_obj);
    llama_token t = token_arg(self, args[ARG_token].u_obj);
    char buf[256];
    int32_t n = 0;
    GUARD(n = llama_token_to_piece(self->vocab, t, buf, sizeof(buf), 0, args[ARG_special].u_bool));
    if (n < 0) {
        mp_raise_ValueError(MP_ERROR_TEXT("token piece too long"));
    }
    return mp_obj_new_bytes((const byte *)buf, n);
}

mp_obj_t llm_model_is_eog(mp_obj_t self_in, mp_obj_t token) {
    llm_model_obj_t *self = open_model(self_in);
    return mp_obj_new_bool(llama_vocab_is_eog(self->vocab, token_arg(self, token)));
}

// apply_chat_template(messages, add_generation_prompt=True) -> str, with the model's template
mp_obj_t llm_model_apply_chat_template(size_t n_args, const mp_obj_t *pos_args, mp_map_t *kw_args) {
    enum { ARG_self, ARG_messages, ARG_add_generation_prompt };
    static const mp_arg_t allowed[] = {
        { MP_QSTR_self, MP_ARG_REQUIRED | MP_ARG_OBJ, {.u_obj = MP_OBJ_NULL} },
        { MP_QSTR_messages, MP_ARG_REQUIRED | MP_ARG_OBJ, {.u_obj = MP_OBJ_NULL} },
        { MP_QSTR_add_generation_prompt, MP_ARG_BOOL, {.u_bool = true} },
    };
    mp_arg_val_t args[MP_ARRAY_SIZE(allowed)];
    mp_arg_parse_all(n_args, pos_args, kw_args, MP_ARRAY_SIZE(allowed), allowed, args);
    llm_model_obj_t *self = open_model(args[ARG_self].u_obj);
    const char *tmpl = llama_model_chat_template(self->model, nullptr);
    if (!tmpl) {
        mp_raise_ValueError(MP_ERROR_TEXT("the model has no chat template"));
    }
    size_t n_msg;
    mp_obj_t *msgs;
    mp_obj_get_array(args[ARG_messages].u_obj, &n_msg, &msgs);
    llama_chat_message *chat = m_new(llama_chat_message, n_msg ? n_msg : 1);
    size_t total = 0;
    for (size_t i = 0; i < n_msg; i++) {
        if (!mp_obj_is_dict_or_ordereddict(msgs[i])) {
            mp_raise_TypeError(MP_ERROR_TEXT("each message must be a dict with 'role' and 'content'"));
        }
        mp_obj_t role = mp_obj_dict_get(msgs[i], MP_OBJ_NEW_QSTR(MP_QSTR_role));
        mp_obj_t content = mp_obj_dict_get(msgs[i], MP_OBJ_NEW_QSTR(MP_QSTR_content));
        chat[i].role = mp_obj_str_get_str(role);
        chat[i].content = mp_obj_str_get_str(content);
        total += strlen(chat[i].role) + strlen(chat[i].content);
    }
    vstr_t out;
    vstr_init(&out, total * 2 + 256);
    int32_t n = 0;
    bool add = args[ARG_add_generation_prompt].u_bool;
    GUARD(n = llama_chat_apply_template(tmpl, chat, n_msg, add, out.buf, (int32_t)out.alloc));
    if (n > (int32_t)out.alloc) {
        vstr_hint_size(&out, n);
        GUARD(n = llama_chat_apply_template(tmpl, chat, n_msg, add, out.buf, (int32_t)out.alloc));
    }
    if (n < 0) {
        mp_raise_ValueError(MP_ERROR_TEXT("the model's chat template is not one llama.cpp knows"));
    }
    out.len = n;
    return mp_obj_new_str_from_vstr(&out);
}

// ---------------------------------------------------------------- decoding

int seq_arg(llm_model_obj_t *m, mp_obj_t o) {
    mp_int_t seq = mp_obj_get_int(o);
    if (seq < 0 || seq >= m->n_seq) {
        mp_raise_msg_varg(&mp_type_ValueError, MP_ERROR_TEXT("seq_id %d out of range [0, %d)"), (int)seq, m->n_seq);
    }
    return (int)seq;
}

static llama_pos next_pos(llm_model_obj_t *m, int seq) {
    return llama_memory_seq_pos_max(llama_get_memory(m->ctx), seq) + 1;
}

static void batch_add(llama_batch *b, llama_token t, llama_pos pos, int seq, bool logits) {
    int i = b->n_tokens++;
    b->token[i] = t;
    b->pos[i] = pos;
    b->n_seq_id[i] = 1;
    b->seq_id[i][0] = seq;
    b->logits[i] = logits;
}


static bool run_batch(llm_model_obj_t *m, decode_result *r) {
    llama_batch *b = model_batch(m);
    int32_t ret = 0;
    log_error[0] = 0;
    bool ok = guarded([&] { ret = llama_decode(m->ctx, *b); });
    b->n_tokens = 0;
    if (!ok) {
        r->cpp_failed = true;
        snprintf(r->message, sizeof(r->message), "%s", cpp_error);
        return false;
    }
    if (ret != 0) {
        r->ret = ret;
        snprintf(r->message, sizeof(r->message), "%s", log_error);
        return false;
    }
    return true;
}

// [(seq_id, tokens[, n_out]), ...] as decode items (on the GC heap), checked against the model
decode_item *items_arg(llm_model_obj_t *m, mp_obj_t items_in, size_t *n) {
    mp_obj_t *pairs;
    mp_obj_get_array(items_in, n, &pairs);
    decode_item *items = m_new(decode_item, *n ? *n : 1);
    for (size_t i = 0; i < *n; i++) {
        size_t len;
        mp_obj_t *pair;
        mp_obj_get_array(pairs[i], &len, &pair);
        if (len != 2 && len != 3) {
            mp_raise_ValueError(MP_ERROR_TEXT("each item is (seq_id, tokens) or (seq_id, tokens, n_out)"));
        }
        items[i].seq = seq_arg(m, pair[0]);
        items[i].tokens = tokens_arg(m, pair[1], &items[i].n);
        items[i].n_out = len == 3 ? (size_t)mp_obj_get_int(pair[2]) : 1;
    }
    return items;
}

void decode_check(llm_model_obj_t *m, decode_item *items, size_t n_items) {
    if ((int)n_items > m->n_batch) {
        mp_raise_ValueError(MP_ERROR_TEXT("more sequences than n_batch"));
    }
    size_t n_out = 0;
    for (size_t i = 0; i < n_items; i++) {
        if (items[i].n == 0) {
            mp_raise_ValueError(MP_ERROR_TEXT("nothing to decode: empty token list"));
        }
        if (items[i].n_out < 1 || items[i].n_out > items[i].n || (int)items[i].n_out > 1 + m->n_draft) {
            mp_raise_msg_varg(&mp_type_ValueError, MP_ERROR_TEXT("n_out must be 1 to the tokens given and at most "
                              "1 + n_draft (%d)"), 1 + m->n_draft);
        }
        n_out += items[i].n_out;
        llama_pos pos = next_pos(m, items[i].seq);
        if (pos + (llama_pos)items[i].n > m->n_ctx) {
            mp_raise_msg_varg(&mp_type_ValueError,
                MP_ERROR_TEXT("exceed_context_size_error: %d tokens + %d in sequence %d exceed n_ctx %d"),
                (int)items[i].n, (int)pos, items[i].seq, m->n_ctx);
        }
        for (size_t j = i + 1; j < n_items; j++) {
            if (items[j].seq == items[i].seq) {
                mp_raise_ValueError(MP_ERROR_TEXT("a sequence appears twice in one decode"));
            }
        }
    }
    if ((int)n_out > m->n_batch) {
        mp_raise_ValueError(MP_ERROR_TEXT("more tokens with logits than n_batch"));
    }
}

// Each sequence's tokens but the last n_out go through in chunks of n_batch; then all the last ones
// share one batch, so every sequence has its logits at once. No MicroPython in here.
void decode_run(llm_model_obj_t *m, decode_item *items, size_t n_items, decode_result *r) {
    r->cpp_failed = false;
    r->ret = 0;
    for (int s = 0; s < m->n_seq; s++) {
        m->logits_index[s] = -1;
    }
    llama_batch *b = model_batch(m);
    b->n_tokens = 0;
    for (size_t i = 0; i < n_items; i++) {
        llama_pos pos = next_pos(m, items[i].seq);
        for (size_t k = 0; k + items[i].n_out < items[i].n; k++) {
            batch_add(b, items[i].tokens[k], pos + (llama_pos)k, items[i].seq, false);
            if (b->n_tokens == m->n_batch && !run_batch(m, r)) {
                return;
            }
        }
    }
    if (b->n_tokens && !run_batch(m, r)) {
        return;
    }
    for (size_t i = 0; i < n_items; i++) {
        llama_pos pos = next_pos(m, items[i].seq);
        for (size_t k = 0; k < items[i].n_out; k++) {
            batch_add(b, items[i].tokens[items[i].n - items[i].n_out + k], pos + (llama_pos)k, items[i].seq, true);
        }
        m->logits_index[items[i].seq] = b->n_tokens - 1;
        m->logits_n[items[i].seq] = (int)items[i].n_out;
    }
    run_batch(m, r);
}

void decode_raise(const decode_result *r) {
    if (r->cpp_failed) {
        if (strcmp(r->message, "out of memory") == 0) {
            mp_raise_msg(&mp_type_MemoryError, MP_ERROR_TEXT("llama.cpp: out of memory"));
        }
        mp_raise_msg_varg(&mp_type_RuntimeError, MP_ERROR_TEXT("llama.cpp: %s"), r->message);
    }
    if (r->ret == 1) {
        mp_raise_msg(&mp_type_MemoryError, MP_ERROR_TEXT("no room in the KV cache: remove finished sequences first"));
    } else if (r->ret != 0) {
        mp_raise_msg_varg(&mp_type_RuntimeError, MP_ERROR_TEXT("decode failed (%d): %s"), r->ret, r->message);
    }
}

// run (decode_run or embed_run) in this thread, the timer tick paused meanwhile (kernel/clock.c:
// what it costs under TCG); its error raised
void run_here(llm_model_obj_t *m, decode_item *items, size_t n_items,
              void (*run)(llm_model_obj_t *, decode_item *, size_t, decode_result *)) {
    decode_result r;
    clock_pause_tick(1);
    run(m, items, n_items, &r);
    clock_pause_tick(0);
    decode_raise(&r);
}

void decode_items(llm_model_obj_t *m, decode_item *items, size_t n_items) {
    decode_check(m, items, n_items);
    run_here(m, items, n_items, decode_run);
}

// decode(tokens, seq_id=0): append tokens to a sequence; its logits become available
mp_obj_t llm_model_decode(size_t n_args, const mp_obj_t *pos_args, mp_map_t *kw_args) {
    enum { ARG_self, ARG_tokens, ARG_seq_id };
    static const mp_arg_t allowed[] = {
        { MP_QSTR_self, MP_ARG_REQUIRED | MP_ARG_OBJ, {.u_obj = MP_OBJ_NULL} },
        { MP_QSTR_tokens, MP_ARG_REQUIRED | MP_ARG_OBJ, {.u_obj = MP_OBJ_NULL} },
        { MP_QSTR_seq_id, MP_ARG_INT, {.u_int = 0} },
    };
    mp_arg_val_t args[MP_ARRAY_SIZE(allowed)];
    mp_arg_parse_all(n_args, pos_args, kw_args, MP_ARRAY_SIZE(allowed), allowed, args);
    llm_model_obj_t *self = open_context(args[ARG_self].u_obj);
    decode_item item;
    item.seq = seq_arg(self, MP_OBJ_NEW_SMALL_INT(args[ARG_seq_id].u_int));
    item.tokens = tokens_arg(self, args[ARG_tokens].u_obj, &item.n);
    item.n_out = 1;
    decode_items(self, &item, 1);
    return mp_const_none;
}

// decode_batch([(seq_id, tokens), ...]): several sequences advanced by one llama_decode
mp_obj_t llm_model_decode_batch(mp_obj_t self_in, mp_obj_t items_in) {
    llm_model_obj_t *self = open_context(self_in);
    size_t n;
    decode_item *items = items_arg(self, items_in, &n);
    decode_items(self, items, n);
    return mp_const_none;
}

int logits_index(llm_model_obj_t *m, int seq) {
    int idx = m->logits_index[seq];
    if (idx < 0) {
        mp_raise_msg_varg(&mp_type_ValueError, MP_ERROR_TEXT("sequence %d has no logits: it was not in the last decode"), seq);
    }
    return idx;
}

// logits(seq_id=0) -> ulab float array of n_vocab: the last decoded position's logits
mp_obj_t llm_model_logits(size_t n_args, const mp_obj_t *args) {
    llm_model_obj_t *self = open_context(args[0]);
    int seq = seq_arg(self, n_args > 1 ? args[1] : MP_OBJ_NEW_SMALL_INT(0));
    float *logits = nullptr;
    GUARD(logits = llama_get_logits_ith(self->ctx, logits_index(self, seq)));
    if (!logits) {
        mp_raise_msg(&mp_type_RuntimeError, MP_ERROR_TEXT("llama.cpp returned no logits"));
    }
    return llm_floats_to_ndarray(logits, llama_vocab_n_tokens(self->vocab));
}

// probs(seq_id, n, token=None) -> (p, [(id, p), ...]): the softmax of the last decoded position's
// raw logits (before any sampler), as llama-server's n_probs reports them: the probability of
// `token` (None if not given) and the n most probable tokens, most probable first.
mp_obj_t llm_model_probs(size_t n_args, const mp_obj_t *args) {
    llm_model_obj_t *self = open_context(args[0]);
    int seq = seq_arg(self, args[1]);
    mp_int_t n = mp_obj_get_int(args[2]);
    int n_vocab = llama_vocab_n_tokens(self->vocab);
    llama_token chosen = n_args > 3 && args[3] != mp_const_none ? token_arg(self, args[3]) : -1;
    if (n < 0) {
        mp_raise_ValueError(MP_ERROR_TEXT("n must be >= 0"));
    }
    n = n > n_vocab ? n_vocab : n;
    float *logits = nullptr;
    GUARD(logits = llama_get_logits_ith(self->ctx, logits_index(self, seq)));
    if (!logits) {
        mp_raise_msg(&mp_type_RuntimeError, MP_ERROR_TEXT("llama.cpp returned no logits"));
    }
    float max = logits[0];
    for (int i = 1; i < n_vocab; i++) {
        max = logits[i] > max ? logits[i] : max;
    }
    double sum = 0;
    for (int i = 0; i < n_vocab; i++) {
        sum += std::exp((double)(logits[i] - max));
    }
    // the top n by insertion into a sorted prefix: one comparison per token for the usual small n
    int *top = m_new(int, n ? n : 1);       // on the GC heap: nothing leaks if Python raises below
    mp_int_t have = 0;
    for (int i = 0; i < n_vocab; i++) {
        if (have == n && (n == 0 || logits[i] <= logits[top[n - 1]])) {
            continue;
        }
        mp_int_t j = have < n ? have++ : n - 1;
        while (j > 0 && logits[top[j - 1]] < logits[i]) {
            top[j] = top[j - 1];
            j--;
        }
        top[j] = i;
    }
    mp_obj_t list = mp_obj_new_list(0, nullptr);
    for (mp_int_t i = 0; i < have; i++) {
        mp_obj_t pair[2] = { MP_OBJ_NEW_SMALL_INT(top[i]),
                             mp_obj_new_float((mp_float_t)(std::exp((double)(logits[top[i]] - max)) / sum)) };
        mp_obj_list_append(list, mp_obj_new_tuple(2, pair));
    }
    m_del(int, top, n ? n : 1);
    mp_obj_t p = chosen < 0 ? mp_const_none : mp_obj_new_float((mp_float_t)(std::exp((double)(logits[chosen] - max)) / sum));
    mp_obj_t out[2] = { p, list };
    return mp_obj_new_tuple(2, out);
}

// seq_pos(seq_id) -> the next position of a sequence (= tokens it holds in the KV cache)
mp_obj_t llm_model_seq_pos(mp_obj_t self_in, mp_obj_t seq) {
    llm_model_obj_t *self = open_context(self_in);
    return MP_OBJ_NEW_SMALL_INT(next_pos(self, seq_arg(self, seq)));
}

// state_get(seq_id) -> bytes: the sequence's KV cells as llama_state_seq_get_data writes them (what
// llama_state_seq_save_file puts after its header and the tokens)
mp_obj_t llm_model_state_get(mp_obj_t self_in, mp_obj_t seq_in) {
    llm_model_obj_t *m = open_context(self_in);
    int seq = seq_arg(m, seq_in);
    size_t n = 0, got = 0;
    GUARD(n = llama_state_seq_get_size(m->ctx, seq));
    vstr_t data;
    vstr_init_len(&data, n);                    // MemoryError here, before llama.cpp writes
    GUARD(got = llama_state_seq_get_data(m->ctx, (uint8_t *)data.buf, n, seq));
    if (got != n) {
        mp_raise_msg(&mp_type_RuntimeError, MP_ERROR_TEXT("llama.cpp wrote less sequence state than it said"));
    }
    return mp_obj_new_bytes_from_vstr(&data);
}

// state_set(seq_id, data) -> bytes read: the sequence's cells replaced by state_get's data. Data
// llama.cpp refuses (another model's, truncated, more cells than are free) is a ValueError and
// leaves the sequence empty.
mp_obj_t llm_model_state_set(mp_obj_t self_in, mp_obj_t seq_in, mp_obj_t data_in) {
    llm_model_obj_t *m = open_context(self_in);
    int seq = seq_arg(m, seq_in);
    mp_buffer_info_t buf;
    mp_get_buffer_raise(data_in, &buf, MP_BUFFER_READ);
    size_t n = 0;
    log_error[0] = 0;
    bool ok = guarded([&] { n = llama_state_seq_set_data(m->ctx, (const uint8_t *)buf.buf, buf.len, seq); });
    if (!ok || n == 0) {
        GUARD(llama_memory_seq_rm(llama_get_memory(m->ctx), seq, -1, -1));
        mp_raise_msg_varg(&mp_type_ValueError, MP_ERROR_TEXT("cannot restore the sequence: %s"),
                          log_error[0] ? log_error : ok ? "llama.cpp refused the data" : cpp_error);
    }
    m->logits_index[seq] = -1;
    return mp_obj_new_int_from_uint(n);
}

// kv_remove(seq_id=-1, p0=0, p1=-1): drop positions [p0, p1) of a sequence (-1: all sequences / to the end)
mp_obj_t llm_model_kv_remove(size_t n_args, const mp_obj_t *args) {
    llm_model_obj_t *self = open_context(args[0]);
    mp_int_t seq = n_args > 1 ? mp_obj_get_int(args[1]) : -1;
    if (seq != -1) {
        seq_arg(self, args[1]);
    }
    mp_int_t p0 = n_args > 2 ? mp_obj_get_int(args[2]) : 0;
    mp_int_t p1 = n_args > 3 ? mp_obj_get_int(args[3]) : -1;
    bool ok = false;
    GUARD(ok = llama_memory_seq_rm(llama_get_memory(self->ctx), (llama_seq_id)seq, (llama_pos)p0, (llama_pos)p1));
    if (!ok) {
        mp_raise_ValueError(MP_ERROR_TEXT("cannot remove a partial range from this model's memory"));
    }
    for (int s = 0; s < self->n_seq; s++) {
        if (seq == -1 || s == seq) {
            self->logits_index[s] = -1;
        }
    }
    return mp_const_none;
}

// kv_shift(seq_id, p0, p1, delta): move positions [p0, p1) of a sequence by delta (llama-server's
// context shift, after kv_remove of the positions it drops); the keys are re-rotated at the next decode
mp_obj_t llm_model_kv_shift(size_t n_args, const mp_obj_t *args) {
    llm_model_obj_t *self = open_context(args[0]);
    int seq = seq_arg(self, args[1]);
    mp_int_t p0 = mp_obj_get_int(args[2]), p1 = mp_obj_get_int(args[3]), delta = mp_obj_get_int(args[4]);
    if (!llama_memory_can_shift(llama_get_memory(self->ctx))) {
        mp_raise_ValueError(MP_ERROR_TEXT("this model's memory cannot be shifted"));
    }
    GUARD(llama_memory_seq_add(llama_get_memory(self->ctx), (llama_seq_id)seq, (llama_pos)p0, (llama_pos)p1, (llama_pos)delta));
    self->logits_index[seq] = -1;
    return mp_const_none;
}

// ---------------------------------------------------------------- grammars

// json_schema_to_grammar(schema_json) -> GBNF text: llama.cpp's own converter, as llama-server
// applies it to json_schema and response_format
static std::string converted;     // the converter's output, outside any frame that calls MicroPython

mp_obj_t llm_json_schema_to_grammar(mp_obj_t schema_in) {
    const char *schema = mp_obj_str_get_str(schema_in);
    if (!guarded([&] { converted = json_schema_to_grammar(common_json::parse(schema), false); })) {
        if (strcmp(cpp_error, "out of memory") == 0) {
            raise_cpp_error();
        }
        mp_raise_msg_varg(&mp_type_ValueError, MP_ERROR_TEXT("invalid JSON schema: %s"), cpp_error);
    }
    mp_obj_t out = mp_obj_new_str(converted.data(), converted.size());
    converted.clear();
    return out;
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
    item.n_out = 1;
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
    llama_token t = sampler_sample(g->sampler, g->seq);
    g->remaining--;
    g->pending = t;
    if (llama_vocab_is_eog(m->vocab, t)) {
        g->remaining = 0;
    }
    return MP_OBJ_NEW_SMALL_INT(t);
}
