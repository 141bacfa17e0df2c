// The llm module: a thin Python face over llama.cpp's C API, in the manner of llama.cpp's
// examples/simple — load, tokenize, batch, decode, sample, detokenize. Policy (queues,
// streaming, stop words, batching of requests) belongs to the frozen Python above.
//
// This file: llama.cpp's errors and log, the model and its context, text and tokens, decoding
// and logits. Sampling and generation are in sampler.cpp; llm_internal.h is what both share,
// among it the two rules that keep C++ exceptions and MicroPython's longjmp apart.
#include <cerrno>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <sys/stat.h>

#include "ggml.h"
#include "ggml-backend.h"
#include "ggml-cpu.h"
#include "json-schema-to-grammar.h"     // llama.cpp's common library: what llama-server uses
#include "llm_internal.h"

extern "C" {
#include "py/objstr.h"
#include "py/mperrno.h"
#include "port/drivers/clock.h"
#include "port/boot/kernel.h"
#include "port/boot/smp.h"
mp_obj_t llm_floats_to_ndarray(const float *values, size_t n);
}

// ---------------------------------------------------------------- errors and logging

char cpp_error[256];
char log_error[512];
static bool verbose;            // print llama.cpp's log on the console

void raise_cpp_error(void) {
    if (strcmp(cpp_error, "out of memory") == 0) {
        mp_raise_msg(&mp_type_MemoryError, MP_ERROR_TEXT("llama.cpp: out of memory"));
    }
    mp_raise_msg_varg(&mp_type_RuntimeError, MP_ERROR_TEXT("llama.cpp: %s"), cpp_error);
}

// llama.cpp's log goes to the console only with llm.verbose(True): its errors come back as
// exception messages, and its warnings would interleave with the program's own output.
static void log_callback(enum ggml_log_level level, const char *text, void *) {
    if (level == GGML_LOG_LEVEL_ERROR) {
        snprintf(log_error, sizeof(log_error), "%s", text);
        size_t n = strlen(log_error);
        while (n && (log_error[n - 1] == '\n' || log_error[n - 1] == ' ')) {
            log_error[--n] = 0;
        }
    }
    if (verbose) {
        fputs(text, stderr);
    }
}

// GGML_ABORT paths: say what happened on the console, then raise instead of aborting.
// The longjmp skips C++ destructors on the way out (memory may leak); the kernel lives on.
static void abort_callback(const char *message) {
    fprintf(stderr, "llama.cpp abort: %s\n", message);
    mp_raise_msg_varg(&mp_type_RuntimeError, MP_ERROR_TEXT("llama.cpp aborted: %s"), message);
}

static void backend_init(void) {
    static bool done;
    if (!done) {
        llama_log_set(log_callback, nullptr);
        ggml_set_abort_callback(abort_callback);
        GUARD(llama_backend_init());
        done = true;
    }
}

mp_obj_t llm_verbose(mp_obj_t on) {
    verbose = mp_obj_is_true(on);
    return mp_const_none;
}

mp_obj_t llm_system_info(void) {
    backend_init();
    const char *info = llama_print_system_info();
    return mp_obj_new_str(info, strlen(info));
}

// ---------------------------------------------------------------- the model

static llm_model_obj_t *open_model(mp_obj_t self_in) {
    llm_model_obj_t *self = (llm_model_obj_t *)MP_OBJ_TO_PTR(self_in);
    if (!self->model) {
        mp_raise_ValueError(MP_ERROR_TEXT("model is closed"));
    }
    return self;
}

// Decoding needs the context, which a vocab_only model does not have.
llm_model_obj_t *open_context(mp_obj_t self_in) {
    llm_model_obj_t *self = open_model(self_in);
    if (!self->ctx) {
        mp_raise_ValueError(MP_ERROR_TEXT("a vocab_only model cannot decode"));
    }
    return self;
}

// With more than one thread, a pool of ggml workers that lives as long as the context, as llama-server
// attaches one (common_threadpools): without it ggml starts and joins its workers for every decode.
// Through the registry, as llama.cpp's tools do: the CPU backend is whichever variant won at boot.
static void attach_threadpool(llm_model_obj_t *self, int n_threads) {
    ggml_backend_dev_t cpu = n_threads > 1 ? ggml_backend_dev_by_type(GGML_BACKEND_DEVICE_TYPE_CPU) : nullptr;
    if (!cpu) {
        return;
    }
    ggml_backend_reg_t reg = ggml_backend_dev_backend_reg(cpu);
    auto *make = (decltype(ggml_threadpool_new) *)ggml_backend_reg_get_proc_address(reg, "ggml_threadpool_new");
    auto *release = (decltype(ggml_threadpool_free) *)ggml_backend_reg_get_proc_address(reg, "ggml_threadpool_free");
    if (!make || !release) {
        return;
    }
    struct ggml_threadpool_params params = ggml_threadpool_params_default(n_threads);
    struct ggml_threadpool *pool = make(&params);
    if (pool) {
        llama_attach_threadpool(self->ctx, pool, pool);
        self->threadpool = pool;
        self->threadpool_free = release;
    }
}

static llama_batch *model_batch(llm_model_obj_t *m) {
    return (llama_batch *)m->batch;
}

mp_obj_t llm_model_close(mp_obj_t self_in) {
    llm_model_obj_t *self = (llm_model_obj_t *)MP_OBJ_TO_PTR(self_in);
    if (self->batch) {
        llama_batch_free(*model_batch(self));
        delete model_batch(self);
        self->batch = nullptr;
    }
    if (self->ctx) {
        llama_free(self->ctx);
        self->ctx = nullptr;
    }
    if (self->threadpool) {
        self->threadpool_free(self->threadpool);
        self->threadpool = nullptr;
    }
    if (self->model) {
        llama_model_free(self->model);
        self->model = nullptr;
    }
    free(self->logits_index);
    self->logits_index = nullptr;
    return mp_const_none;
}

// A bar on the console as llama.cpp maps and checks the weights (Model(..., progress=True)).
static int progress_shown;      // '#'s drawn so far in this load; -1 once the bar is complete

static bool print_progress(float done, void *) {
    int filled = done >= 1.0f ? 40 : (int)(done * 40.0f);
    if (progress_shown >= 0 && filled != progress_shown) {
        char bar[41];
        for (int i = 0; i < 40; i++) {
            bar[i] = i < filled ? '#' : '.';
        }
        bar[40] = 0;
        fprintf(stderr, "\r%s llm: loading [%s] %3d%%%s", clock_stamp(), bar, filled * 100 / 40, filled == 40 ? "\n" : "");
        progress_shown = filled == 40 ? -1 : filled;
    }
    return true;
}

// The engine's threads: threads=N on the kernel command line, else one per CPU. ggml's pool
// starts n - 1 threads per graph and the kernel runs one thread per CPU: never more than CPUs.
static int default_threads() {
    char buf[16];
    int n = cpu_count;
    if (cmdline_get("threads", buf, sizeof(buf)) && atoi(buf) >= 1) {
        n = atoi(buf) < cpu_count ? atoi(buf) : cpu_count;
    }
    return n;
}

// llama-server's --flash-attn values
static llama_flash_attn_type flash_attn_type(mp_obj_t value) {
    const char *s = mp_obj_str_get_str(value);
    if (strcmp(s, "on") == 0) {
        return LLAMA_FLASH_ATTN_TYPE_ENABLED;
    }
    if (strcmp(s, "off") == 0) {
        return LLAMA_FLASH_ATTN_TYPE_DISABLED;
    }
    if (strcmp(s, "auto") != 0) {
        mp_raise_msg_varg(&mp_type_ValueError, MP_ERROR_TEXT("flash_attn=%s: need 'on', 'off' or 'auto'"), s);
    }
    return LLAMA_FLASH_ATTN_TYPE_AUTO;
}

// Model(path, n_ctx=2048, n_batch=512, n_seq=4, n_threads=<threads= or CPUs>, flash_attn="auto",
//       vocab_only=False, progress=False)
mp_obj_t llm_model_make_new(const mp_obj_type_t *type, size_t n_args, size_t n_kw, const mp_obj_t *all_args) {
    enum { ARG_path, ARG_n_ctx, ARG_n_batch, ARG_n_seq, ARG_n_threads, ARG_flash_attn, ARG_vocab_only, ARG_progress };
    static const mp_arg_t allowed[] = {
        { MP_QSTR_path, MP_ARG_REQUIRED | MP_ARG_OBJ, {.u_obj = MP_OBJ_NULL} },
        { MP_QSTR_n_ctx, MP_ARG_KW_ONLY | MP_ARG_INT, {.u_int = 2048} },
        { MP_QSTR_n_batch, MP_ARG_KW_ONLY | MP_ARG_INT, {.u_int = 512} },
        { MP_QSTR_n_seq, MP_ARG_KW_ONLY | MP_ARG_INT, {.u_int = 4} },
        { MP_QSTR_n_threads, MP_ARG_KW_ONLY | MP_ARG_INT, {.u_int = 0} },
        { MP_QSTR_flash_attn, MP_ARG_KW_ONLY | MP_ARG_OBJ, {.u_obj = MP_OBJ_NEW_QSTR(MP_QSTR_auto)} },
        { MP_QSTR_vocab_only, MP_ARG_KW_ONLY | MP_ARG_BOOL, {.u_bool = false} },
        { MP_QSTR_progress, MP_ARG_KW_ONLY | MP_ARG_BOOL, {.u_bool = false} },
    };
    mp_arg_val_t args[MP_ARRAY_SIZE(allowed)];
    mp_arg_parse_all_kw_array(n_args, n_kw, all_args, MP_ARRAY_SIZE(allowed), allowed, args);
    const char *path = mp_obj_str_get_str(args[ARG_path].u_obj);
    int n_ctx = args[ARG_n_ctx].u_int, n_batch = args[ARG_n_batch].u_int;
    int n_seq = args[ARG_n_seq].u_int, n_threads = args[ARG_n_threads].u_int;
    if (n_threads == 0) {
        n_threads = default_threads();
    }
    if (n_ctx < 8 || n_batch < 1 || n_seq < 1 || n_seq > 64 || n_threads < 1) {
        mp_raise_ValueError(MP_ERROR_TEXT("need n_ctx >= 8, n_batch >= 1, 1 <= n_seq <= 64, n_threads >= 1"));
    }
    if (n_threads > cpu_count) {
        mp_raise_msg_varg(&mp_type_ValueError, MP_ERROR_TEXT("n_threads=%d but %d CPUs: one thread per CPU"), n_threads, cpu_count);
    }
    llama_flash_attn_type fa = flash_attn_type(args[ARG_flash_attn].u_obj);
    struct stat st;
    if (stat(path, &st) != 0) {
        mp_raise_OSError_with_filename(errno, path);
    }
    backend_init();

    llm_model_obj_t *self = mp_obj_malloc_with_finaliser(llm_model_obj_t, type);
    self->model = nullptr;
    self->ctx = nullptr;
    self->batch = nullptr;
    self->threadpool = nullptr;
    self->logits_index = nullptr;
    log_error[0] = 0;

    llama_model_params mparams = llama_model_default_params();
    mparams.load_mode = LLAMA_LOAD_MODE_MMAP;   // a boot module: mmap hands out its own memory
    mparams.vocab_only = args[ARG_vocab_only].u_bool;
    if (args[ARG_progress].u_bool) {
        progress_shown = 0;
        mparams.progress_callback = print_progress;
    }
    GUARD(self->model = llama_model_load_from_file(path, mparams));
    if (!self->model) {
        mp_raise_msg_varg(&mp_type_ValueError, MP_ERROR_TEXT("cannot load %s: %s"), path,
            log_error[0] ? log_error : "not a usable GGUF model");
    }
    self->vocab = llama_model_get_vocab(self->model);
    self->n_ctx = self->n_batch = self->n_seq = 0;
    if (mparams.vocab_only) {
        return MP_OBJ_FROM_PTR(self);
    }

    llama_context_params cparams = llama_context_default_params();
    cparams.n_ctx = n_ctx;
    cparams.n_batch = n_batch;
    cparams.n_ubatch = n_batch;
    cparams.n_seq_max = n_seq;
    cparams.n_threads = n_threads;
    cparams.n_threads_batch = n_threads;
    cparams.flash_attn_type = fa;
    cparams.kv_unified = true;      // sequences share the n_ctx cells
    cparams.n_outputs_max = n_seq;  // logits only for each sequence's last token: not n_batch x n_vocab floats
    cparams.no_perf = false;
    log_error[0] = 0;
    GUARD(self->ctx = llama_init_from_model(self->model, cparams));
    if (!self->ctx) {
        llama_model_free(self->model);
        self->model = nullptr;
        mp_raise_msg_varg(&mp_type_MemoryError, MP_ERROR_TEXT("cannot create a context of %d tokens: %s"), n_ctx,
            log_error[0] ? log_error : "out of memory?");
    }
    attach_threadpool(self, n_threads);
    self->n_ctx = (int)llama_n_ctx(self->ctx);
    self->n_batch = n_batch;
    self->n_seq = n_seq;
    self->logits_index = (int *)malloc(sizeof(int) * n_seq);
    llama_batch *batch = new (std::nothrow) llama_batch;
    if (!self->logits_index || !batch) {
        delete batch;
        llm_model_close(MP_OBJ_FROM_PTR(self));
        mp_raise_msg(&mp_type_MemoryError, MP_ERROR_TEXT("out of memory"));
    }
    for (int i = 0; i < n_seq; i++) {
        self->logits_index[i] = -1;
    }
    *batch = llama_batch_init(n_batch, 0, 1);
    self->batch = batch;
    return MP_OBJ_FROM_PTR(self);
}

static void dict_str(mp_obj_t d, const char *key, const char *value) {
    mp_obj_dict_store(d, mp_obj_new_str(key, strlen(key)), value ? mp_obj_new_str(value, strlen(value)) : mp_const_none);
}

static void dict_int(mp_obj_t d, const char *key, long long value) {
    mp_obj_dict_store(d, mp_obj_new_str(key, strlen(key)), mp_obj_new_int_from_ll(value));
}

static mp_obj_t token_or_none(llama_token t) {
    return t == LLAMA_TOKEN_NULL ? mp_const_none : MP_OBJ_NEW_SMALL_INT(t);
}

mp_obj_t llm_model_meta(mp_obj_t self_in) {
    llm_model_obj_t *self = open_model(self_in);
    char buf[256];
    mp_obj_t d = mp_obj_new_dict(16);
    buf[0] = 0;
    llama_model_meta_val_str(self->model, "general.architecture", buf, sizeof(buf));
    dict_str(d, "architecture", buf);
    buf[0] = 0;
    llama_model_meta_val_str(self->model, "general.name", buf, sizeof(buf));
    dict_str(d, "name", buf);
    llama_model_desc(self->model, buf, sizeof(buf));
    dict_str(d, "description", buf);
    dict_int(d, "n_vocab", llama_vocab_n_tokens(self->vocab));
    dict_int(d, "n_ctx_train", llama_model_n_ctx_train(self->model));
    dict_int(d, "n_ctx", self->n_ctx);
    dict_int(d, "n_embd", llama_model_n_embd(self->model));
    dict_int(d, "n_layer", llama_model_n_layer(self->model));
    dict_int(d, "n_params", (long long)llama_model_n_params(self->model));
    dict_int(d, "size", (long long)llama_model_size(self->model));
    dict_int(d, "n_seq", self->n_seq);
    dict_int(d, "n_threads", self->ctx ? llama_n_threads(self->ctx) : 0);
    dict_str(d, "chat_template", llama_model_chat_template(self->model, nullptr));
    mp_obj_dict_store(d, MP_OBJ_NEW_QSTR(MP_QSTR_bos), token_or_none(llama_vocab_bos(self->vocab)));
    mp_obj_dict_store(d, MP_OBJ_NEW_QSTR(MP_QSTR_eos), token_or_none(llama_vocab_eos(self->vocab)));
    mp_obj_dict_store(d, MP_OBJ_NEW_QSTR(MP_QSTR_eot), token_or_none(llama_vocab_eot(self->vocab)));
    mp_obj_dict_store(d, MP_OBJ_NEW_QSTR(MP_QSTR_add_bos), mp_obj_new_bool(llama_vocab_get_add_bos(self->vocab)));
    mp_obj_t eog = mp_obj_new_list(0, nullptr);     // every end-of-generation token (eos, eot, eom, ...)
    for (llama_token t = 0; t < llama_vocab_n_tokens(self->vocab); t++) {
        if (llama_vocab_is_eog(self->vocab, t)) {
            mp_obj_list_append(eog, MP_OBJ_NEW_SMALL_INT(t));
        }
    }
    mp_obj_dict_store(d, MP_OBJ_NEW_QSTR(MP_QSTR_eog), eog);
    return d;
}

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

static void run_batch(llm_model_obj_t *m) {
    llama_batch *b = model_batch(m);
    int32_t ret = 0;
    log_error[0] = 0;
    clock_pause_tick(1);
    bool ok = guarded([&] { ret = llama_decode(m->ctx, *b); });
    clock_pause_tick(0);
    if (!ok) {
        raise_cpp_error();
    }
    b->n_tokens = 0;
    if (ret == 1) {
        mp_raise_msg(&mp_type_MemoryError, MP_ERROR_TEXT("no room in the KV cache: remove finished sequences first"));
    } else if (ret != 0) {
        mp_raise_msg_varg(&mp_type_RuntimeError, MP_ERROR_TEXT("decode failed (%d): %s"), (int)ret, log_error);
    }
}

// Decode several sequences' tokens. Each sequence's tokens but the last go through in chunks of
// n_batch; then all the last tokens share one batch, so every sequence has its logits at once.
void decode_items(llm_model_obj_t *m, decode_item *items, size_t n_items) {
    if ((int)n_items > m->n_batch) {
        mp_raise_ValueError(MP_ERROR_TEXT("more sequences than n_batch"));
    }
    for (size_t i = 0; i < n_items; i++) {
        if (items[i].n == 0) {
            mp_raise_ValueError(MP_ERROR_TEXT("nothing to decode: empty token list"));
        }
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
    for (int s = 0; s < m->n_seq; s++) {
        m->logits_index[s] = -1;
    }
    llama_batch *b = model_batch(m);
    b->n_tokens = 0;
    for (size_t i = 0; i < n_items; i++) {
        llama_pos pos = next_pos(m, items[i].seq);
        for (size_t k = 0; k + 1 < items[i].n; k++) {
            batch_add(b, items[i].tokens[k], pos + (llama_pos)k, items[i].seq, false);
            if (b->n_tokens == m->n_batch) {
                run_batch(m);
            }
        }
    }
    if (b->n_tokens) {
        run_batch(m);
    }
    for (size_t i = 0; i < n_items; i++) {
        llama_pos pos = next_pos(m, items[i].seq);
        m->logits_index[items[i].seq] = b->n_tokens;
        batch_add(b, items[i].tokens[items[i].n - 1], pos, items[i].seq, true);
    }
    run_batch(m);
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
    decode_items(self, &item, 1);
    return mp_const_none;
}

// decode_batch([(seq_id, tokens), ...]): several sequences advanced by one llama_decode
mp_obj_t llm_model_decode_batch(mp_obj_t self_in, mp_obj_t items_in) {
    llm_model_obj_t *self = open_context(self_in);
    size_t n;
    mp_obj_t *pairs;
    mp_obj_get_array(items_in, &n, &pairs);
    decode_item *items = m_new(decode_item, n ? n : 1);
    for (size_t i = 0; i < n; i++) {
        mp_obj_t *pair;
        mp_obj_get_array_fixed_n(pairs[i], 2, &pair);
        items[i].seq = seq_arg(self, pair[0]);
        items[i].tokens = tokens_arg(self, pair[1], &items[i].n);
    }
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
