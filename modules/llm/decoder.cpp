// The llm module's decoder thread: decode_start()/decode_done() (decode_batch's work beside Python),
// and embed_start() (embed.cpp) the same way.
#include <cstdlib>
#include <cstring>
#include <pthread.h>

#include "llm_internal.h"

// ---------------------------------------------------------------- decoding in the background
// decode_start() hands a decode to the model's decoder thread and returns at once; the caller goes
// on (the server answers requests) and asks decode_done() until it says the decode is over. The
// thread is a plain pthread, made at the first decode_start(): the kernel gives it a CPU of its own
// or, once every other CPU has a thread (ggml's workers), CPU 0 in turn with MicroPython.

enum { DEC_IDLE, DEC_QUEUED, DEC_DONE };

struct decoder {
    pthread_t thread;
    pthread_mutex_t lock;
    pthread_cond_t wake;
    volatile int state;             // DEC_*: QUEUED and DONE belong to the thread until decode_done()
    bool quit;
    bool embed;                     // the queued work is embed_run's, not decode_run's
    llm_model_obj_t *model;
    decode_item *items;             // copies of the caller's, in memory of the decoder's own
    size_t n_items, items_cap;
    llama_token *tokens;
    size_t tokens_cap;
    decode_result result;
};

static void *decoder_main(void *arg) {
    decoder *d = (decoder *)arg;
    pthread_mutex_lock(&d->lock);
    for (;;) {
        while (d->state != DEC_QUEUED && !d->quit) {
            pthread_cond_wait(&d->wake, &d->lock);
        }
        if (d->state != DEC_QUEUED) {
            break;
        }
        pthread_mutex_unlock(&d->lock);
        if (d->embed) {
            embed_run(d->model, d->items, d->n_items, &d->result);
        } else {
            decode_run(d->model, d->items, d->n_items, &d->result);
        }
        pthread_mutex_lock(&d->lock);
        __atomic_store_n(&d->state, DEC_DONE, __ATOMIC_RELEASE);
    }
    pthread_mutex_unlock(&d->lock);
    return nullptr;
}

bool decoder_busy(llm_model_obj_t *m) {
    return m->decoder && __atomic_load_n(&m->decoder->state, __ATOMIC_ACQUIRE) != DEC_IDLE;
}

void decoder_stop(llm_model_obj_t *m) {
    decoder *d = m->decoder;
    if (!d) {
        return;
    }
    pthread_mutex_lock(&d->lock);
    d->quit = true;
    pthread_cond_signal(&d->wake);
    pthread_mutex_unlock(&d->lock);
    pthread_join(d->thread, nullptr);
    pthread_cond_destroy(&d->wake);
    pthread_mutex_destroy(&d->lock);
    free(d->items);
    free(d->tokens);
    free(d);
    m->decoder = nullptr;
}

static decoder *decoder_of(llm_model_obj_t *m) {
    if (m->decoder) {
        return m->decoder;
    }
    decoder *d = (decoder *)calloc(1, sizeof(decoder));
    if (!d) {
        mp_raise_msg(&mp_type_MemoryError, MP_ERROR_TEXT("no memory for the decoder thread"));
    }
    d->model = m;
    pthread_mutex_init(&d->lock, nullptr);
    pthread_cond_init(&d->wake, nullptr);
    int err = pthread_create(&d->thread, nullptr, decoder_main, d);
    if (err) {
        pthread_cond_destroy(&d->wake);
        pthread_mutex_destroy(&d->lock);
        free(d);
        mp_raise_OSError(err);
    }
    m->decoder = d;
    return d;
}

// The items (checked) copied into the decoder's own memory, the thread woken to run them.
void decoder_queue(llm_model_obj_t *self, decode_item *items, size_t n, bool embed) {
    size_t total = 0;
    for (size_t i = 0; i < n; i++) {
        total += items[i].n;
    }
    decoder *d = decoder_of(self);
    if (n > d->items_cap || total > d->tokens_cap) {
        decode_item *more_items = (decode_item *)realloc(d->items, (n ? n : 1) * sizeof(decode_item));
        if (more_items) {
            d->items = more_items;
            d->items_cap = n;
        }
        llama_token *more_tokens = (llama_token *)realloc(d->tokens, (total ? total : 1) * sizeof(llama_token));
        if (more_tokens) {
            d->tokens = more_tokens;
            d->tokens_cap = total;
        }
        if (!more_items || !more_tokens) {
            mp_raise_msg(&mp_type_MemoryError, MP_ERROR_TEXT("no memory for the decode's tokens"));
        }
    }
    llama_token *next = d->tokens;
    for (size_t i = 0; i < n; i++) {
        d->items[i].seq = items[i].seq;
        d->items[i].n = items[i].n;
        d->items[i].n_out = items[i].n_out;
        d->items[i].tokens = next;
        memcpy(next, items[i].tokens, items[i].n * sizeof(llama_token));
        next += items[i].n;
    }
    d->n_items = n;
    d->embed = embed;
    pthread_mutex_lock(&d->lock);
    __atomic_store_n(&d->state, DEC_QUEUED, __ATOMIC_RELEASE);
    pthread_cond_signal(&d->wake);
    pthread_mutex_unlock(&d->lock);
}

// decode_start([(seq_id, tokens), ...]): decode_batch's work, in the decoder thread; the model's
// context is its own (open_context refuses it) until decode_done() returns True
mp_obj_t llm_model_decode_start(mp_obj_t self_in, mp_obj_t items_in) {
    llm_model_obj_t *self = open_context(self_in);
    size_t n;
    decode_item *items = items_arg(self, items_in, &n);
    decode_check(self, items, n);
    decoder_queue(self, items, n, false);
    return mp_const_none;
}

// decode_done() -> bool: whether the decode_start() decode is over (True also with none started);
// the first True for a decode that failed raises its error instead, as decode_batch would have
mp_obj_t llm_model_decode_done(mp_obj_t self_in) {
    llm_model_obj_t *self = open_model(self_in);
    decoder *d = self->decoder;
    if (!d) {
        return mp_const_true;
    }
    int state = __atomic_load_n(&d->state, __ATOMIC_ACQUIRE);
    if (state == DEC_QUEUED) {
        return mp_const_false;
    }
    if (state == DEC_DONE) {
        __atomic_store_n(&d->state, DEC_IDLE, __ATOMIC_RELEASE);
        decode_raise(&d->result);
    }
    return mp_const_true;
}
