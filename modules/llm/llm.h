// The llm module's objects and the C++ functions behind them (model.cpp, llm.cpp, json_check.cpp);
// modllm.c holds the MicroPython type and module tables, which C++ cannot spell.
#pragma once
#include <stdbool.h>
#include "py/obj.h"

#ifdef __cplusplus
extern "C" {
#endif

struct llama_model;
struct llama_context;
struct llama_vocab;
struct llama_sampler;
struct common_sampler;

typedef struct {
    mp_obj_base_t base;
    struct llama_model *model;
    struct llama_context *ctx;
    const struct llama_vocab *vocab;
    int n_ctx, n_batch, n_seq;
    int *logits_index;      // per sequence: batch index of its logits in the last decode, or -1
    int *logits_n;          // ... and how many positions had logits, ending there (1 + a draft's tokens)
    int n_draft;            // draft tokens a decode may verify per sequence (Model(n_draft=))
    void *batch;            // struct llama_batch, n_batch tokens
    struct decoder *decoder;    // the thread of decode_start(), once there has been one
    struct ggml_threadpool *threadpool;             // ggml's workers, for the context's lifetime
    void (*threadpool_free)(struct ggml_threadpool *);
    int pooling;            // enum llama_pooling_type asked for (Model(pooling=)), UNSPECIFIED: the model's
    struct embed_out *embd; // the last embed's results (embed.cpp), or NULL
} llm_model_obj_t;

typedef struct {
    mp_obj_base_t base;
    struct common_sampler *chain;       // llama.cpp's common sampler
    llm_model_obj_t *model;
} llm_sampler_obj_t;

typedef struct {
    mp_obj_base_t base;
    llm_model_obj_t *model;
    llm_sampler_obj_t *sampler;
    mp_obj_t prompt;        // list of token ids still to decode, or None once decoded
    int seq;
    int remaining;          // tokens still allowed
    int pending;            // the token yielded last, to decode before sampling the next; -1 none
} llm_generator_obj_t;

typedef struct {
    mp_obj_base_t base;
    llm_model_obj_t *model;
    struct common_chat_templates *tmpls;    // NULL once closed
} llm_chat_obj_t;

typedef struct {
    mp_obj_base_t base;
    struct chat_parse_state *state;         // NULL once closed
} llm_chat_parser_obj_t;

extern const mp_obj_type_t llm_model_type;
extern const mp_obj_type_t llm_sampler_type;
extern const mp_obj_type_t llm_generator_type;

mp_obj_t llm_model_make_new(const mp_obj_type_t *type, size_t n_args, size_t n_kw, const mp_obj_t *args);
mp_obj_t llm_model_close(mp_obj_t self);
mp_obj_t llm_model_meta(mp_obj_t self);
mp_obj_t llm_model_tokenize(size_t n_args, const mp_obj_t *args, mp_map_t *kw);
mp_obj_t llm_model_detokenize(size_t n_args, const mp_obj_t *args, mp_map_t *kw);
mp_obj_t llm_model_token_to_piece(size_t n_args, const mp_obj_t *args, mp_map_t *kw);
mp_obj_t llm_model_is_eog(mp_obj_t self, mp_obj_t token);
mp_obj_t llm_model_apply_chat_template(size_t n_args, const mp_obj_t *args, mp_map_t *kw);
mp_obj_t llm_model_decode(size_t n_args, const mp_obj_t *args, mp_map_t *kw);
mp_obj_t llm_model_decode_start(mp_obj_t self, mp_obj_t items);
mp_obj_t llm_model_decode_done(mp_obj_t self);
mp_obj_t llm_model_decode_batch(mp_obj_t self, mp_obj_t items);
mp_obj_t llm_model_logits(size_t n_args, const mp_obj_t *args);
mp_obj_t llm_model_seq_pos(mp_obj_t self, mp_obj_t seq);
mp_obj_t llm_model_probs(size_t n_args, const mp_obj_t *args);
mp_obj_t llm_json_schema_to_grammar(mp_obj_t schema);
mp_obj_t llm_model_kv_remove(size_t n_args, const mp_obj_t *args);
mp_obj_t llm_model_kv_shift(size_t n_args, const mp_obj_t *args);
mp_obj_t llm_model_state_get(mp_obj_t self, mp_obj_t seq);
mp_obj_t llm_model_state_set(mp_obj_t self, mp_obj_t seq, mp_obj_t data);
mp_obj_t llm_model_generate(size_t n_args, const mp_obj_t *args, mp_map_t *kw);
mp_obj_t llm_model_embed(size_t n_args, const mp_obj_t *args);                 // embed.cpp
mp_obj_t llm_model_embed_start(mp_obj_t self, mp_obj_t inputs);
mp_obj_t llm_model_embed_result(size_t n_args, const mp_obj_t *args);

mp_obj_t llm_sampler_make_new(const mp_obj_type_t *type, size_t n_args, size_t n_kw, const mp_obj_t *args);
mp_obj_t llm_sampler_sample(size_t n_args, const mp_obj_t *args);
mp_obj_t llm_sampler_sample_n(mp_obj_t self, mp_obj_t seq, mp_obj_t draft);
mp_obj_t llm_sampler_accept(size_t n_args, const mp_obj_t *args);
mp_obj_t llm_sampler_reset(mp_obj_t self);
mp_obj_t llm_sampler_close(mp_obj_t self);
mp_obj_t llm_sampling_defaults(void);

mp_obj_t llm_generator_iternext(mp_obj_t self);
mp_obj_t llm_chat_make_new(const mp_obj_type_t *type, size_t n_args, size_t n_kw, const mp_obj_t *args);  // chat.cpp
mp_obj_t llm_chat_close(mp_obj_t self);
mp_obj_t llm_chat_caps(mp_obj_t self);
mp_obj_t llm_chat_source(size_t n_args, const mp_obj_t *args);
mp_obj_t llm_chat_apply(mp_obj_t self, mp_obj_t request);
mp_obj_t llm_chat_parser_make_new(const mp_obj_type_t *type, size_t n_args, size_t n_kw, const mp_obj_t *args);
mp_obj_t llm_chat_parser_close(mp_obj_t self);
mp_obj_t llm_chat_parser_update(size_t n_args, const mp_obj_t *args);
mp_obj_t llm_chat_parser_message(mp_obj_t self);

mp_obj_t llm_spec_make_new(const mp_obj_type_t *type, size_t n_args, size_t n_kw, const mp_obj_t *args);  // spec.cpp
mp_obj_t llm_spec_close(mp_obj_t self);
mp_obj_t llm_spec_n_max(mp_obj_t self);
mp_obj_t llm_spec_begin(mp_obj_t self, mp_obj_t seq, mp_obj_t tokens);
mp_obj_t llm_spec_draft(size_t n_args, const mp_obj_t *args);
mp_obj_t llm_spec_accept(mp_obj_t self, mp_obj_t seq, mp_obj_t n);

mp_obj_t llm_verbose(mp_obj_t on);
mp_obj_t llm_json_check(size_t n_args, const mp_obj_t *args);     // json_check.cpp
mp_obj_t llm_system_info(void);
mp_obj_t llm_rpc_start(mp_obj_t port, mp_obj_t threads);     // rpc.cpp
mp_obj_t llm_rpc_info(void);

#ifdef __cplusplus
}
#endif
