// What the llm module's C++ files share (model.cpp: loading a model; llm.cpp: tokens, decoding,
// sampling; json_check.cpp). C++ only: llm.h is the part modllm.c sees too.
//
// Two rules keep C++ and MicroPython's non-local returns (longjmp) apart:
// - every llama.cpp call that might throw runs inside guarded(), which turns a C++ exception
//   into a message; the Python exception is raised only after the try block has ended;
// - no object with a destructor is alive in a frame that calls into MicroPython.
#pragma once
#include <cstdio>
#include <exception>
#include <new>
#include <stdexcept>

#include "llama.h"

extern "C" {
#include "py/runtime.h"
#include "llm.h"
}

extern char cpp_error[256];     // what the last failed guarded() call threw
extern char log_error[512];     // the latest ERROR line llama.cpp logged

template <typename F>
bool guarded(F body) {
    try {
        body();
        return true;
    } catch (const std::bad_alloc &) {
        snprintf(cpp_error, sizeof(cpp_error), "out of memory");
    } catch (const std::exception &e) {
        snprintf(cpp_error, sizeof(cpp_error), "%s", e.what());
    } catch (...) {
        snprintf(cpp_error, sizeof(cpp_error), "unknown C++ exception");
    }
    return false;
}

[[noreturn]] void raise_cpp_error(void);

// model.cpp: where llama.cpp's log lines go (an ERROR line into log_error; the console with
// llm.verbose(True)); common_log.cpp sends its common library's lines there too.
void log_callback(enum ggml_log_level level, const char *text, void *);

#define GUARD(...) do { if (!guarded([&] { __VA_ARGS__; })) raise_cpp_error(); } while (0)

// model.cpp: a Model argument that is open (and, for decoding, not vocab_only), its batch.
llm_model_obj_t *open_model(mp_obj_t self_in);
llm_model_obj_t *open_context(mp_obj_t self_in);     // ... and no decode_start() running
llm_model_obj_t *has_context(mp_obj_t self_in);      // ... while one may run (it uses the vocab only)
llama_batch *model_batch(llm_model_obj_t *m);

// llm.cpp: Python arguments checked against a model; each raises ValueError with what is wrong.
llama_token token_arg(llm_model_obj_t *m, mp_obj_t o);
llama_token *tokens_arg(llm_model_obj_t *m, mp_obj_t seq, size_t *n);
int seq_arg(llm_model_obj_t *m, mp_obj_t o);
int logits_index(llm_model_obj_t *m, int seq);          // the sequence's logits in the last decode

// sampler.cpp: a Sampler argument that is open (and its model's context), its next token (accepted).
llm_sampler_obj_t *open_sampler(mp_obj_t self_in);
llama_token sampler_sample(llm_sampler_obj_t *s, int seq);

struct decode_item {
    int seq;
    llama_token *tokens;
    size_t n;
    size_t n_out;               // the last n_out tokens get logits (1; more to verify a draft)
};

// What a decode came to, kept apart from MicroPython: a decode may run in the decoder thread,
// where nothing may be raised; decode_raise() turns it into the exception in the caller's thread.
struct decode_result {
    bool cpp_failed;            // a C++ exception: message is its text
    int ret;                    // llama_decode's result when not 0: message is its ERROR line
    char message[512];
};

decode_item *items_arg(llm_model_obj_t *m, mp_obj_t items_in, size_t *n);     // [(seq_id, tokens[, n_out]), ...]
void decode_check(llm_model_obj_t *m, decode_item *items, size_t n_items);   // raises what is wrong
void decode_run(llm_model_obj_t *m, decode_item *items, size_t n_items, decode_result *r);  // no MicroPython
void decode_raise(const decode_result *r);                                   // r as the exception
void decode_items(llm_model_obj_t *m, decode_item *items, size_t n_items);          // checked, then run_here
void run_here(llm_model_obj_t *m, decode_item *items, size_t n_items,               // in this thread, raising
              void (*run)(llm_model_obj_t *, decode_item *, size_t, decode_result *));
// The decoder thread takes a copy of items (checked already) and runs decode_run, or embed_run with embed.
void decoder_queue(llm_model_obj_t *m, decode_item *items, size_t n_items, bool embed);
bool decoder_busy(llm_model_obj_t *m);  // a decode_start() has not been ended by decode_done() yet
void decoder_stop(llm_model_obj_t *m);  // the thread ended (after the decode it runs), its memory freed

// embed.cpp: a context of its own for the inputs (one sequence each), its embeddings into m->embd.
void embed_run(llm_model_obj_t *m, decode_item *items, size_t n_items, decode_result *r);  // no MicroPython
void embed_free(llm_model_obj_t *m);
int pooling_arg(mp_obj_t value);            // "none", "mean", ... or None (the model's) as llama_pooling_type
const char *pooling_name(int pooling);
