// llm: llama.cpp inside the kernel. The tables here are the module's whole Python API; the
// functions live in model.cpp (loading a model), llm.cpp (tokens, decoding), sampler.cpp,
// chat.cpp and json_check.cpp.
//
//   m = llm.Model(path, n_ctx=2048, n_batch=512, n_seq=4, n_threads=<threads= or CPUs>, flash_attn="auto",
//                 pooling=None, n_draft=0, vocab_only=False, progress=False)
//   m.meta() m.tokenize(text, add_special=True, parse_special=False) m.detokenize(tokens)
//   m.token_to_piece(t) m.is_eog(t) m.apply_chat_template(messages, add_generation_prompt=True)
//   m.decode(tokens, seq_id=0) m.decode_batch([(seq_id, tokens), ...]) m.logits(seq_id=0)
//   m.decode_start([(seq_id, tokens), ...]) m.decode_done(): decode_batch in a thread of its own
//   (an item (seq_id, tokens, n_out): logits for the last n_out tokens, a draft's; Model(n_draft=) bounds it)
//   m.probs(seq_id, n, token=None)
//   m.seq_pos(seq_id) m.kv_remove(seq_id=-1, p0=0, p1=-1) m.kv_shift(seq_id, p0, p1, delta)
//   m.generate(tokens, sampler, seq_id=0, max_tokens=-1)
//   m.state_get(seq_id) -> bytes m.state_set(seq_id, data) (a sequence's KV cells, llama_state_seq_*)
//   m.embed(tokens or [tokens, ...], normalize=2) -> array(s): pooled embeddings (Model(pooling=) or the
//   model's; with pooling none a row per token); m.embed_start([tokens, ...]) m.embed_result(normalize=2)
//   s = llm.Sampler(m, temperature=, top_k=, top_p=, min_p=, seed=, ... every numeric field of
//                   llama.cpp's common sampler (sampling_defaults()), dry_sequence_breakers=, samplers=,
//                   logit_bias=None, grammar=None, grammar_type="user", grammar_lazy=False, triggers=(),
//                   generation_prompt="", reasoning_budget=-1, reasoning_start="", reasoning_end=(),
//                   reasoning_message="")
//   s.sample(seq_id=0) s.accept(t or tokens, grammar=True) s.reset() s.sample_n(seq_id, draft) -> the draft's tokens kept + one drawn
//   sp = llm.Speculative(n_seq, type="ngram-simple", size_n=12, size_m=48, min_hits=1) (n-gram drafts,
//        common/speculative) sp.n_max() sp.begin(seq_id, tokens) sp.draft(seq_id, tokens, last, n_max) sp.accept(seq_id, n)
//   c = llm.Chat(m, template=None) c.caps() c.source(variant="") c.apply(request_json) -> {prompt, grammar, ...}
//   p = llm.ChatParser(format, parser=, generation_prompt=, reasoning_format=, reasoning_in_content=,
//                      parse_tool_calls=, is_continuation=) p.update(text, partial=True) -> deltas JSON
//   p.message() -> message JSON
//   llm.sampling_defaults() (the Sampler's: llama.cpp's, e.g. {"temperature": 0.8, "top_k": 40, ...})
//   llm.cpu_kernels() llm.system_info() llm.verbose(on) llm.json_schema_to_grammar(schema_json)
//   llm.json_check(data, max_depth=256)
//   llm.rpc_start(port, threads) (rpc.cpp: ggml's RPC server, for a host's llama-server --rpc) llm.rpc_info()
#include <string.h>

#include "py/runtime.h"
#include "ndarray.h"
#include "llm.h"
#include "cpu_variant.h"

// float32 logits as a ulab float64 array, converted here rather than element by element in Python
mp_obj_t llm_floats_to_ndarray(const float *values, size_t n) {
    ndarray_obj_t *array = ndarray_new_linear_array(n, NDARRAY_FLOAT);
    mp_float_t *out = (mp_float_t *)array->array;
    for (size_t i = 0; i < n; i++) {
        out[i] = (mp_float_t)values[i];
    }
    return MP_OBJ_FROM_PTR(array);
}

// ... and rows x cols of them as a 2-D array
mp_obj_t llm_floats_to_matrix(const float *values, size_t rows, size_t cols) {
    size_t shape[ULAB_MAX_DIMS] = { 0 };
    shape[ULAB_MAX_DIMS - 2] = rows;
    shape[ULAB_MAX_DIMS - 1] = cols;
    ndarray_obj_t *array = ndarray_new_dense_ndarray(2, shape, NDARRAY_FLOAT);
    mp_float_t *out = (mp_float_t *)array->array;
    for (size_t i = 0; i < rows * cols; i++) {
        out[i] = (mp_float_t)values[i];
    }
    return MP_OBJ_FROM_PTR(array);
}

static MP_DEFINE_CONST_FUN_OBJ_1(llm_model_close_obj, llm_model_close);
static MP_DEFINE_CONST_FUN_OBJ_1(llm_model_meta_obj, llm_model_meta);
static MP_DEFINE_CONST_FUN_OBJ_KW(llm_model_tokenize_obj, 2, llm_model_tokenize);
static MP_DEFINE_CONST_FUN_OBJ_KW(llm_model_detokenize_obj, 2, llm_model_detokenize);
static MP_DEFINE_CONST_FUN_OBJ_KW(llm_model_token_to_piece_obj, 2, llm_model_token_to_piece);
static MP_DEFINE_CONST_FUN_OBJ_2(llm_model_is_eog_obj, llm_model_is_eog);
static MP_DEFINE_CONST_FUN_OBJ_KW(llm_model_apply_chat_template_obj, 2, llm_model_apply_chat_template);
static MP_DEFINE_CONST_FUN_OBJ_KW(llm_model_decode_obj, 2, llm_model_decode);
static MP_DEFINE_CONST_FUN_OBJ_2(llm_model_decode_batch_obj, llm_model_decode_batch);
static MP_DEFINE_CONST_FUN_OBJ_2(llm_model_decode_start_obj, llm_model_decode_start);
static MP_DEFINE_CONST_FUN_OBJ_1(llm_model_decode_done_obj, llm_model_decode_done);
static MP_DEFINE_CONST_FUN_OBJ_VAR_BETWEEN(llm_model_logits_obj, 1, 2, llm_model_logits);
static MP_DEFINE_CONST_FUN_OBJ_2(llm_model_seq_pos_obj, llm_model_seq_pos);
static MP_DEFINE_CONST_FUN_OBJ_VAR_BETWEEN(llm_model_probs_obj, 3, 4, llm_model_probs);
static MP_DEFINE_CONST_FUN_OBJ_VAR_BETWEEN(llm_model_kv_remove_obj, 1, 4, llm_model_kv_remove);
static MP_DEFINE_CONST_FUN_OBJ_VAR_BETWEEN(llm_model_kv_shift_obj, 5, 5, llm_model_kv_shift);
static MP_DEFINE_CONST_FUN_OBJ_2(llm_model_state_get_obj, llm_model_state_get);
static MP_DEFINE_CONST_FUN_OBJ_3(llm_model_state_set_obj, llm_model_state_set);
static MP_DEFINE_CONST_FUN_OBJ_KW(llm_model_generate_obj, 3, llm_model_generate);
static MP_DEFINE_CONST_FUN_OBJ_VAR_BETWEEN(llm_model_embed_obj, 2, 3, llm_model_embed);
static MP_DEFINE_CONST_FUN_OBJ_2(llm_model_embed_start_obj, llm_model_embed_start);
static MP_DEFINE_CONST_FUN_OBJ_VAR_BETWEEN(llm_model_embed_result_obj, 1, 2, llm_model_embed_result);

static const mp_rom_map_elem_t llm_model_locals_table[] = {
    { MP_ROM_QSTR(MP_QSTR___del__), MP_ROM_PTR(&llm_model_close_obj) },
    { MP_ROM_QSTR(MP_QSTR_close), MP_ROM_PTR(&llm_model_close_obj) },
    { MP_ROM_QSTR(MP_QSTR_meta), MP_ROM_PTR(&llm_model_meta_obj) },
    { MP_ROM_QSTR(MP_QSTR_tokenize), MP_ROM_PTR(&llm_model_tokenize_obj) },
    { MP_ROM_QSTR(MP_QSTR_detokenize), MP_ROM_PTR(&llm_model_detokenize_obj) },
    { MP_ROM_QSTR(MP_QSTR_token_to_piece), MP_ROM_PTR(&llm_model_token_to_piece_obj) },
    { MP_ROM_QSTR(MP_QSTR_is_eog), MP_ROM_PTR(&llm_model_is_eog_obj) },
    { MP_ROM_QSTR(MP_QSTR_apply_chat_template), MP_ROM_PTR(&llm_model_apply_chat_template_obj) },
    { MP_ROM_QSTR(MP_QSTR_decode), MP_ROM_PTR(&llm_model_decode_obj) },
    { MP_ROM_QSTR(MP_QSTR_decode_batch), MP_ROM_PTR(&llm_model_decode_batch_obj) },
    { MP_ROM_QSTR(MP_QSTR_decode_start), MP_ROM_PTR(&llm_model_decode_start_obj) },
    { MP_ROM_QSTR(MP_QSTR_decode_done), MP_ROM_PTR(&llm_model_decode_done_obj) },
    { MP_ROM_QSTR(MP_QSTR_logits), MP_ROM_PTR(&llm_model_logits_obj) },
    { MP_ROM_QSTR(MP_QSTR_seq_pos), MP_ROM_PTR(&llm_model_seq_pos_obj) },
    { MP_ROM_QSTR(MP_QSTR_probs), MP_ROM_PTR(&llm_model_probs_obj) },
    { MP_ROM_QSTR(MP_QSTR_kv_remove), MP_ROM_PTR(&llm_model_kv_remove_obj) },
    { MP_ROM_QSTR(MP_QSTR_kv_shift), MP_ROM_PTR(&llm_model_kv_shift_obj) },
    { MP_ROM_QSTR(MP_QSTR_state_get), MP_ROM_PTR(&llm_model_state_get_obj) },
    { MP_ROM_QSTR(MP_QSTR_state_set), MP_ROM_PTR(&llm_model_state_set_obj) },
    { MP_ROM_QSTR(MP_QSTR_generate), MP_ROM_PTR(&llm_model_generate_obj) },
    { MP_ROM_QSTR(MP_QSTR_embed), MP_ROM_PTR(&llm_model_embed_obj) },
    { MP_ROM_QSTR(MP_QSTR_embed_start), MP_ROM_PTR(&llm_model_embed_start_obj) },
    { MP_ROM_QSTR(MP_QSTR_embed_result), MP_ROM_PTR(&llm_model_embed_result_obj) },
};
static MP_DEFINE_CONST_DICT(llm_model_locals, llm_model_locals_table);

MP_DEFINE_CONST_OBJ_TYPE(
    llm_model_type, MP_QSTR_Model, MP_TYPE_FLAG_NONE,
    make_new, llm_model_make_new,
    locals_dict, &llm_model_locals
    );

static MP_DEFINE_CONST_FUN_OBJ_VAR_BETWEEN(llm_sampler_sample_obj, 1, 2, llm_sampler_sample);
static MP_DEFINE_CONST_FUN_OBJ_VAR_BETWEEN(llm_sampler_accept_obj, 2, 3, llm_sampler_accept);
static MP_DEFINE_CONST_FUN_OBJ_1(llm_sampler_reset_obj, llm_sampler_reset);
static MP_DEFINE_CONST_FUN_OBJ_3(llm_sampler_sample_n_obj, llm_sampler_sample_n);
static MP_DEFINE_CONST_FUN_OBJ_1(llm_sampler_close_obj, llm_sampler_close);

static const mp_rom_map_elem_t llm_sampler_locals_table[] = {
    { MP_ROM_QSTR(MP_QSTR___del__), MP_ROM_PTR(&llm_sampler_close_obj) },
    { MP_ROM_QSTR(MP_QSTR_close), MP_ROM_PTR(&llm_sampler_close_obj) },
    { MP_ROM_QSTR(MP_QSTR_sample), MP_ROM_PTR(&llm_sampler_sample_obj) },
    { MP_ROM_QSTR(MP_QSTR_accept), MP_ROM_PTR(&llm_sampler_accept_obj) },
    { MP_ROM_QSTR(MP_QSTR_reset), MP_ROM_PTR(&llm_sampler_reset_obj) },
    { MP_ROM_QSTR(MP_QSTR_sample_n), MP_ROM_PTR(&llm_sampler_sample_n_obj) },
};
static MP_DEFINE_CONST_DICT(llm_sampler_locals, llm_sampler_locals_table);

MP_DEFINE_CONST_OBJ_TYPE(
    llm_sampler_type, MP_QSTR_Sampler, MP_TYPE_FLAG_NONE,
    make_new, llm_sampler_make_new,
    locals_dict, &llm_sampler_locals
    );

static MP_DEFINE_CONST_FUN_OBJ_1(llm_spec_close_obj, llm_spec_close);
static MP_DEFINE_CONST_FUN_OBJ_1(llm_spec_n_max_obj, llm_spec_n_max);
static MP_DEFINE_CONST_FUN_OBJ_3(llm_spec_begin_obj, llm_spec_begin);
static MP_DEFINE_CONST_FUN_OBJ_VAR_BETWEEN(llm_spec_draft_obj, 5, 5, llm_spec_draft);
static MP_DEFINE_CONST_FUN_OBJ_3(llm_spec_accept_obj, llm_spec_accept);

static const mp_rom_map_elem_t llm_spec_locals_table[] = {
    { MP_ROM_QSTR(MP_QSTR___del__), MP_ROM_PTR(&llm_spec_close_obj) },
    { MP_ROM_QSTR(MP_QSTR_close), MP_ROM_PTR(&llm_spec_close_obj) },
    { MP_ROM_QSTR(MP_QSTR_n_max), MP_ROM_PTR(&llm_spec_n_max_obj) },
    { MP_ROM_QSTR(MP_QSTR_begin), MP_ROM_PTR(&llm_spec_begin_obj) },
    { MP_ROM_QSTR(MP_QSTR_draft), MP_ROM_PTR(&llm_spec_draft_obj) },
    { MP_ROM_QSTR(MP_QSTR_accept), MP_ROM_PTR(&llm_spec_accept_obj) },
};
static MP_DEFINE_CONST_DICT(llm_spec_locals, llm_spec_locals_table);

MP_DEFINE_CONST_OBJ_TYPE(
    llm_spec_type, MP_QSTR_Speculative, MP_TYPE_FLAG_NONE,
    make_new, llm_spec_make_new,
    locals_dict, &llm_spec_locals
    );

static MP_DEFINE_CONST_FUN_OBJ_1(llm_chat_close_obj, llm_chat_close);
static MP_DEFINE_CONST_FUN_OBJ_1(llm_chat_caps_obj, llm_chat_caps);
static MP_DEFINE_CONST_FUN_OBJ_VAR_BETWEEN(llm_chat_source_obj, 1, 2, llm_chat_source);
static MP_DEFINE_CONST_FUN_OBJ_2(llm_chat_apply_obj, llm_chat_apply);

static const mp_rom_map_elem_t llm_chat_locals_table[] = {
    { MP_ROM_QSTR(MP_QSTR___del__), MP_ROM_PTR(&llm_chat_close_obj) },
    { MP_ROM_QSTR(MP_QSTR_close), MP_ROM_PTR(&llm_chat_close_obj) },
    { MP_ROM_QSTR(MP_QSTR_caps), MP_ROM_PTR(&llm_chat_caps_obj) },
    { MP_ROM_QSTR(MP_QSTR_source), MP_ROM_PTR(&llm_chat_source_obj) },
    { MP_ROM_QSTR(MP_QSTR_apply), MP_ROM_PTR(&llm_chat_apply_obj) },
};
static MP_DEFINE_CONST_DICT(llm_chat_locals, llm_chat_locals_table);

MP_DEFINE_CONST_OBJ_TYPE(
    llm_chat_type, MP_QSTR_Chat, MP_TYPE_FLAG_NONE,
    make_new, llm_chat_make_new,
    locals_dict, &llm_chat_locals
    );

static MP_DEFINE_CONST_FUN_OBJ_1(llm_chat_parser_close_obj, llm_chat_parser_close);
static MP_DEFINE_CONST_FUN_OBJ_VAR_BETWEEN(llm_chat_parser_update_obj, 2, 3, llm_chat_parser_update);
static MP_DEFINE_CONST_FUN_OBJ_1(llm_chat_parser_message_obj, llm_chat_parser_message);

static const mp_rom_map_elem_t llm_chat_parser_locals_table[] = {
    { MP_ROM_QSTR(MP_QSTR___del__), MP_ROM_PTR(&llm_chat_parser_close_obj) },
    { MP_ROM_QSTR(MP_QSTR_close), MP_ROM_PTR(&llm_chat_parser_close_obj) },
    { MP_ROM_QSTR(MP_QSTR_update), MP_ROM_PTR(&llm_chat_parser_update_obj) },
    { MP_ROM_QSTR(MP_QSTR_message), MP_ROM_PTR(&llm_chat_parser_message_obj) },
};
static MP_DEFINE_CONST_DICT(llm_chat_parser_locals, llm_chat_parser_locals_table);

MP_DEFINE_CONST_OBJ_TYPE(
    llm_chat_parser_type, MP_QSTR_ChatParser, MP_TYPE_FLAG_NONE,
    make_new, llm_chat_parser_make_new,
    locals_dict, &llm_chat_parser_locals
    );

MP_DEFINE_CONST_OBJ_TYPE(
    llm_generator_type, MP_QSTR_Generator, MP_TYPE_FLAG_ITER_IS_ITERNEXT,
    iter, llm_generator_iternext
    );

static MP_DEFINE_CONST_FUN_OBJ_1(llm_verbose_obj, llm_verbose);
static MP_DEFINE_CONST_FUN_OBJ_0(llm_system_info_obj, llm_system_info);
static MP_DEFINE_CONST_FUN_OBJ_0(llm_sampling_defaults_obj, llm_sampling_defaults);

// cpu_kernels() -> {"name": "sse2" or "avx2", "reason": ..., "sse2_us": ..., "avx2_us": ...,
// "avx2_finished": ...}: the ggml CPU kernels this machine runs and the measurement behind them
// (the times are 0 unless measured)
static mp_obj_t llm_cpu_kernels(void) {
    const struct llm_cpu_choice *c = llm_cpu_choice();
    mp_obj_t dict = mp_obj_new_dict(5);
    mp_obj_dict_store(dict, MP_OBJ_NEW_QSTR(MP_QSTR_name), mp_obj_new_str(c->name, strlen(c->name)));
    mp_obj_dict_store(dict, MP_OBJ_NEW_QSTR(MP_QSTR_reason), mp_obj_new_str(c->reason, strlen(c->reason)));
    mp_obj_dict_store(dict, MP_OBJ_NEW_QSTR(MP_QSTR_sse2_us), mp_obj_new_int_from_uint(c->sse2_us));
    mp_obj_dict_store(dict, MP_OBJ_NEW_QSTR(MP_QSTR_avx2_us), mp_obj_new_int_from_uint(c->avx2_us));
    mp_obj_dict_store(dict, MP_OBJ_NEW_QSTR(MP_QSTR_avx2_finished), mp_obj_new_bool(c->avx2_finished));
    return dict;
}
static MP_DEFINE_CONST_FUN_OBJ_0(llm_cpu_kernels_obj, llm_cpu_kernels);
static MP_DEFINE_CONST_FUN_OBJ_2(llm_rpc_start_obj, llm_rpc_start);
static MP_DEFINE_CONST_FUN_OBJ_0(llm_rpc_info_obj, llm_rpc_info);
static MP_DEFINE_CONST_FUN_OBJ_1(llm_json_schema_to_grammar_obj, llm_json_schema_to_grammar);
static MP_DEFINE_CONST_FUN_OBJ_VAR_BETWEEN(llm_json_check_obj, 1, 2, llm_json_check);

static const mp_rom_map_elem_t llm_module_globals_table[] = {
    { MP_ROM_QSTR(MP_QSTR___name__), MP_ROM_QSTR(MP_QSTR_llm) },
    { MP_ROM_QSTR(MP_QSTR_Model), MP_ROM_PTR(&llm_model_type) },
    { MP_ROM_QSTR(MP_QSTR_Sampler), MP_ROM_PTR(&llm_sampler_type) },
    { MP_ROM_QSTR(MP_QSTR_Chat), MP_ROM_PTR(&llm_chat_type) },
    { MP_ROM_QSTR(MP_QSTR_ChatParser), MP_ROM_PTR(&llm_chat_parser_type) },
    { MP_ROM_QSTR(MP_QSTR_Speculative), MP_ROM_PTR(&llm_spec_type) },
    { MP_ROM_QSTR(MP_QSTR_sampling_defaults), MP_ROM_PTR(&llm_sampling_defaults_obj) },
    { MP_ROM_QSTR(MP_QSTR_verbose), MP_ROM_PTR(&llm_verbose_obj) },
    { MP_ROM_QSTR(MP_QSTR_system_info), MP_ROM_PTR(&llm_system_info_obj) },
    { MP_ROM_QSTR(MP_QSTR_cpu_kernels), MP_ROM_PTR(&llm_cpu_kernels_obj) },
    { MP_ROM_QSTR(MP_QSTR_rpc_start), MP_ROM_PTR(&llm_rpc_start_obj) },
    { MP_ROM_QSTR(MP_QSTR_rpc_info), MP_ROM_PTR(&llm_rpc_info_obj) },
    { MP_ROM_QSTR(MP_QSTR_json_schema_to_grammar), MP_ROM_PTR(&llm_json_schema_to_grammar_obj) },
    { MP_ROM_QSTR(MP_QSTR_json_check), MP_ROM_PTR(&llm_json_check_obj) },
};
static MP_DEFINE_CONST_DICT(llm_module_globals, llm_module_globals_table);

const mp_obj_module_t mp_module_llm = {
    .base = { &mp_type_module },
    .globals = (mp_obj_dict_t *)&llm_module_globals,
};

MP_REGISTER_MODULE(MP_QSTR_llm, mp_module_llm);
