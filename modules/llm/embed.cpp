// llm.Model's embeddings (what llama-server's /embedding and /rerank compute): each call gets a
// llama_context of its own with llama.cpp's embeddings output on and the model's pooling (or
// Model(pooling=)'s), sized to its inputs and freed once they are read. The generating context, its
// KV cache and its small output buffer (n_seq rows of logits) are not touched: an embedding context
// outputs every token it reads, n_vocab logits each, which the generating one never has to hold.
#include <cstdlib>
#include <cstring>

#include "common.h"             // common_embd_normalize, as llama-server normalises
#include "llm_internal.h"

extern "C" {
mp_obj_t llm_floats_to_ndarray(const float *values, size_t n);
mp_obj_t llm_floats_to_matrix(const float *values, size_t rows, size_t cols);
}

enum { MAX_INPUTS = 64 };       // sequences per call (llama.cpp allows 256)

struct embed_out {
    int n_inputs;
    int width;                  // floats per row: n_embd_out, or n_cls_out with rank pooling
    int pooling;                // the context's llama_pooling_type
    int rows[MAX_INPUTS];       // per input: 1 (pooled) or one per token (pooling none)
    float *values;
};

void embed_free(llm_model_obj_t *m) {
    if (m->embd) {
        free(m->embd->values);
        free(m->embd);
        m->embd = nullptr;
    }
}

// Model(pooling=...): llama-server's --pooling values; None is the model's own
int pooling_arg(mp_obj_t value) {
    if (value == mp_const_none) {
        return LLAMA_POOLING_TYPE_UNSPECIFIED;
    }
    static const char *const names[] = { "none", "mean", "cls", "last", "rank" };
    const char *s = mp_obj_str_get_str(value);
    for (int i = 0; i < 5; i++) {
        if (strcmp(s, names[i]) == 0) {
            return i;           // LLAMA_POOLING_TYPE_NONE .. _RANK
        }
    }
    mp_raise_msg_varg(&mp_type_ValueError, MP_ERROR_TEXT("pooling=%s: need none, mean, cls, last or rank"), s);
}

const char *pooling_name(int pooling) {
    static const char *const names[] = { "none", "mean", "cls", "last", "rank" };
    return pooling >= 0 && pooling < 5 ? names[pooling] : "unspecified";
}

// inputs: a list of token lists (or one token list: is_one), each non-empty; the checks llama-server
// makes before an embedding task reaches a slot
static decode_item *inputs_arg(llm_model_obj_t *m, mp_obj_t inputs, size_t *n, bool *is_one) {
    size_t len;
    mp_obj_t *items;
    mp_obj_get_array(inputs, &len, &items);
    *is_one = len > 0 && mp_obj_is_int(items[0]);
    if (*is_one) {
        decode_item *one = m_new(decode_item, 1);
        one->seq = 0;
        one->n_out = 1;
        one->tokens = tokens_arg(m, inputs, &one->n);
        *n = 1;
        return one;
    }
    if (len == 0 || len > MAX_INPUTS) {
        mp_raise_msg_varg(&mp_type_ValueError, MP_ERROR_TEXT("need 1 to %d inputs, not %d"), MAX_INPUTS, (int)len);
    }
    decode_item *out = m_new(decode_item, len);
    for (size_t i = 0; i < len; i++) {
        out[i].seq = (int)i;
        out[i].n_out = 1;
        out[i].tokens = tokens_arg(m, items[i], &out[i].n);
    }
    *n = len;
    return out;
}

static void embed_check(llm_model_obj_t *m, decode_item *items, size_t n) {
    size_t total = 0;
    for (size_t i = 0; i < n; i++) {
        if (items[i].n == 0) {
            mp_raise_ValueError(MP_ERROR_TEXT("Input content cannot be empty"));
        }
        total += items[i].n;
    }
    if ((int)total > m->n_batch) {
        mp_raise_msg_varg(&mp_type_ValueError,
            MP_ERROR_TEXT("input (%d tokens) is too large to process. increase the physical batch size (current batch size: %d)"),
            (int)total, m->n_batch);
    }
}

// The inputs through a context of their own, one sequence each, in one decode (as llama-embedding
// batches its prompts); the results into m->embd. No MicroPython in here: it may run in the decoder thread.
void embed_run(llm_model_obj_t *m, decode_item *items, size_t n_items, decode_result *r) {
    r->cpp_failed = false;
    r->ret = 0;
    embed_free(m);
    int total = 0;
    for (size_t i = 0; i < n_items; i++) {
        total += (int)items[i].n;
    }
    // one ubatch for all (pooling reads a sequence whole), of a multiple of n_seq tokens: llama.cpp
    // reserves its worst-case graph for n_ubatch / n_seq tokens a sequence, and every token is output
    int n_ubatch = (total + (int)n_items - 1) / (int)n_items * (int)n_items;
    llama_context_params cparams = llama_context_default_params();
    cparams.n_ctx = n_ubatch;
    cparams.n_batch = n_ubatch;
    cparams.n_ubatch = n_ubatch;
    cparams.n_seq_max = n_items;
    cparams.n_outputs_max = n_ubatch;
    cparams.n_threads = cparams.n_threads_batch = llama_n_threads(m->ctx);
    cparams.kv_unified = true;
    cparams.embeddings = true;
    cparams.pooling_type = (enum llama_pooling_type)m->pooling;
    llama_context *ctx = nullptr;
    llama_batch batch = {};
    embed_out *out = (embed_out *)calloc(1, sizeof(embed_out));
    log_error[0] = 0;
    bool ok = guarded([&] {
        if (!out) {
            throw std::bad_alloc();
        }
        ctx = llama_init_from_model(m->model, cparams);
        if (!ctx) {
            throw std::runtime_error(log_error[0] ? log_error : "cannot create an embeddings context");
        }
        if (m->threadpool) {
            llama_attach_threadpool(ctx, m->threadpool, m->threadpool);
        }
        batch = llama_batch_init(total, 0, 1);
        for (size_t i = 0; i < n_items; i++) {
            for (size_t k = 0; k < items[i].n; k++) {
                int j = batch.n_tokens++;
                batch.token[j] = items[i].tokens[k];
                batch.pos[j] = (llama_pos)k;
                batch.n_seq_id[j] = 1;
                batch.seq_id[j][0] = (llama_seq_id)i;
                batch.logits[j] = true;
            }
        }
        r->ret = llama_decode(ctx, batch);
        if (r->ret == -2) {     // its buffers: every token is an output, of n_vocab logits
            snprintf(r->message, sizeof(r->message), "not enough memory for the embeddings of %d tokens "
                     "(llama.cpp computes %d logits for each)", total, llama_vocab_n_tokens(m->vocab));
        }
        if (r->ret != 0) {
            if (r->ret != -2) {
                snprintf(r->message, sizeof(r->message), "%s", log_error);
            }
            return;
        }
        out->pooling = llama_pooling_type(ctx);
        out->n_inputs = (int)n_items;
        out->width = out->pooling == LLAMA_POOLING_TYPE_RANK ? (int)llama_model_n_cls_out(m->model)
                                                             : llama_model_n_embd_out(m->model);
        int n_rows = out->pooling == LLAMA_POOLING_TYPE_NONE ? total : (int)n_items;
        out->values = (float *)malloc(sizeof(float) * (size_t)n_rows * out->width);
        if (!out->values) {
            throw std::bad_alloc();
        }
        float *next = out->values;
        int j = 0;
        for (size_t i = 0; i < n_items; i++) {
            out->rows[i] = out->pooling == LLAMA_POOLING_TYPE_NONE ? (int)items[i].n : 1;
            for (int row = 0; row < out->rows[i]; row++, j++) {
                const float *e = out->pooling == LLAMA_POOLING_TYPE_NONE ? llama_get_embeddings_ith(ctx, j)
                                                                         : llama_get_embeddings_seq(ctx, (llama_seq_id)i);
                if (!e) {
                    throw std::runtime_error("llama.cpp returned no embeddings");
                }
                memcpy(next, e, sizeof(float) * out->width);
                next += out->width;
            }
        }
    });
    if (batch.token) {
        llama_batch_free(batch);
    }
    if (ctx) {
        llama_free(ctx);
    }
    if (!ok) {
        r->cpp_failed = true;
        snprintf(r->message, sizeof(r->message), "%s", cpp_error);
    }
    if (!ok || r->ret != 0) {
        if (out) {
            free(out->values);
            free(out);
        }
        return;
    }
    m->embd = out;
}

// embed_result(normalize=2) -> [array, ...]: the last embed's results, one per input: pooled, a 1-D
// array normalised as llama-server's embd_normalize says (-1 none, 0 max-abs to int16, 1 taxicab,
// 2 Euclidean, p > 2 p-norm; rank scores are not normalised); with pooling none a 2-D array, a row
// per token, as it came
mp_obj_t llm_model_embed_result(size_t n_args, const mp_obj_t *args) {
    llm_model_obj_t *m = has_context(args[0]);
    int normalize = n_args > 1 ? (int)mp_obj_get_int(args[1]) : 2;
    embed_out *out = m->embd;
    if (!out || decoder_busy(m)) {
        mp_raise_ValueError(MP_ERROR_TEXT("no embeddings: embed_start() has not finished"));
    }
    mp_obj_t list = mp_obj_new_list(0, nullptr);
    const float *row = out->values;
    float *scratch = m_new(float, out->width);
    for (int i = 0; i < out->n_inputs; i++) {
        if (out->pooling == LLAMA_POOLING_TYPE_NONE) {
            mp_obj_list_append(list, llm_floats_to_matrix(row, out->rows[i], out->width));
        } else if (out->pooling == LLAMA_POOLING_TYPE_RANK) {
            mp_obj_list_append(list, llm_floats_to_ndarray(row, out->width));
        } else {
            common_embd_normalize(row, scratch, out->width, normalize);
            mp_obj_list_append(list, llm_floats_to_ndarray(scratch, out->width));
        }
        row += (size_t)out->rows[i] * out->width;
    }
    m_del(float, scratch, out->width);
    return list;
}

// embed(inputs, normalize=2): embeddings of one token list (an array) or of a list of them (a list
// of arrays), computed in this thread; see embed_result
mp_obj_t llm_model_embed(size_t n_args, const mp_obj_t *args) {
    llm_model_obj_t *m = open_context(args[0]);
    size_t n;
    bool is_one;
    decode_item *items = inputs_arg(m, args[1], &n, &is_one);
    embed_check(m, items, n);
    run_here(m, items, n, embed_run);
    mp_obj_t result_args[2] = { args[0], n_args > 2 ? args[2] : MP_OBJ_NEW_SMALL_INT(2) };
    mp_obj_t list = llm_model_embed_result(2, result_args);
    return is_one ? mp_obj_subscr(list, MP_OBJ_NEW_SMALL_INT(0), MP_OBJ_SENTINEL) : list;
}

// embed_start(inputs): embed's work in the decoder thread (a list of token lists); decode_done()
// says when it is over, embed_result() then has the results
mp_obj_t llm_model_embed_start(mp_obj_t self_in, mp_obj_t inputs) {
    llm_model_obj_t *m = open_context(self_in);
    size_t n;
    bool is_one;
    decode_item *items = inputs_arg(m, inputs, &n, &is_one);
    embed_check(m, items, n);
    decoder_queue(m, items, n, true);
    return mp_const_none;
}
