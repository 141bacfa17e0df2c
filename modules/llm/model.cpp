// The llm module's model: llama.cpp's errors and log, loading a GGUF (llm.Model) with its context,
// batch and ggml's thread pool, what the model says of itself (meta), closing it. What a request
// does with a loaded model (tokens, the chat template, decoding, sampling) is in llm.cpp;
// llm_internal.h is what both share.
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <sys/stat.h>

#include "ggml.h"
#include "ggml-backend.h"
#include "ggml-cpu.h"
#include "llm_internal.h"

extern "C" {
#include "py/objstr.h"
#include "py/mperrno.h"
#include "kernel/kernel.h"
#include "kernel/smp.h"
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
void log_callback(enum ggml_log_level level, const char *text, void *) {
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
    if (cpus_tid() != 1) {          // a ggml worker or the decoder thread: no Python to raise in
        panic("llama.cpp aborted in a thread of its own");
    }
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

llm_model_obj_t *open_model(mp_obj_t self_in) {
    llm_model_obj_t *self = (llm_model_obj_t *)MP_OBJ_TO_PTR(self_in);
    if (!self->model) {
        mp_raise_ValueError(MP_ERROR_TEXT("model is closed"));
    }
    return self;
}

// Decoding needs the context, which a vocab_only model does not have, and which a decode in the
// background (decode_start) has to itself until decode_done() has said it is over.
llm_model_obj_t *has_context(mp_obj_t self_in) {
    llm_model_obj_t *self = open_model(self_in);
    if (!self->ctx) {
        mp_raise_ValueError(MP_ERROR_TEXT("a vocab_only model cannot decode"));
    }
    return self;
}

llm_model_obj_t *open_context(mp_obj_t self_in) {
    llm_model_obj_t *self = has_context(self_in);
    if (decoder_busy(self)) {
        mp_raise_msg(&mp_type_RuntimeError, MP_ERROR_TEXT("a decode is running: wait for decode_done()"));
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

llama_batch *model_batch(llm_model_obj_t *m) {
    return (llama_batch *)m->batch;
}

mp_obj_t llm_model_close(mp_obj_t self_in) {
    llm_model_obj_t *self = (llm_model_obj_t *)MP_OBJ_TO_PTR(self_in);
    decoder_stop(self);
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
    self->logits_index = self->logits_n = nullptr;
    embed_free(self);
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
//       pooling=None, n_draft=0, vocab_only=False, progress=False)
mp_obj_t llm_model_make_new(const mp_obj_type_t *type, size_t n_args, size_t n_kw, const mp_obj_t *all_args) {
    enum { ARG_path, ARG_n_ctx, ARG_n_batch, ARG_n_seq, ARG_n_threads, ARG_flash_attn, ARG_pooling, ARG_n_draft, ARG_vocab_only, ARG_progress };
    static const mp_arg_t allowed[] = {
        { MP_QSTR_path, MP_ARG_REQUIRED | MP_ARG_OBJ, {.u_obj = MP_OBJ_NULL} },
        { MP_QSTR_n_ctx, MP_ARG_KW_ONLY | MP_ARG_INT, {.u_int = 2048} },
        { MP_QSTR_n_batch, MP_ARG_KW_ONLY | MP_ARG_INT, {.u_int = 512} },
        { MP_QSTR_n_seq, MP_ARG_KW_ONLY | MP_ARG_INT, {.u_int = 4} },
        { MP_QSTR_n_threads, MP_ARG_KW_ONLY | MP_ARG_INT, {.u_int = 0} },
        { MP_QSTR_flash_attn, MP_ARG_KW_ONLY | MP_ARG_OBJ, {.u_obj = MP_OBJ_NEW_QSTR(MP_QSTR_auto)} },
        { MP_QSTR_pooling, MP_ARG_KW_ONLY | MP_ARG_OBJ, {.u_obj = mp_const_none} },
        { MP_QSTR_n_draft, MP_ARG_KW_ONLY | MP_ARG_INT, {.u_int = 0} },
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
    int n_draft = args[ARG_n_draft].u_int;
    if (n_ctx < 8 || n_batch < 1 || n_seq < 1 || n_seq > 64 || n_threads < 1 || n_draft < 0 || n_draft > 256) {
        mp_raise_ValueError(MP_ERROR_TEXT("need n_ctx >= 8, n_batch >= 1, 1 <= n_seq <= 64, n_threads >= 1, 0 <= n_draft <= 256"));
    }
    if (n_threads > cpu_count) {
        mp_raise_msg_varg(&mp_type_ValueError, MP_ERROR_TEXT("n_threads=%d but %d CPUs: one thread per CPU"), n_threads, cpu_count);
    }
    llama_flash_attn_type fa = flash_attn_type(args[ARG_flash_attn].u_obj);
    int pooling = pooling_arg(args[ARG_pooling].u_obj);
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
    self->decoder = nullptr;
    self->logits_index = self->logits_n = nullptr;
    self->n_draft = 0;
    self->pooling = pooling;
    self->embd = nullptr;
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
    cparams.pooling_type = (enum llama_pooling_type)pooling;    // acts only in embed()'s contexts (embeddings on)
    cparams.kv_unified = true;      // sequences share the n_ctx cells
    // logits only for each sequence's last token (and a draft's, to verify it): not n_batch x n_vocab floats
    cparams.n_outputs_max = n_seq * (1 + n_draft) < n_batch ? n_seq * (1 + n_draft) : n_batch;
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
    self->n_draft = n_draft;
    self->logits_index = (int *)malloc(sizeof(int) * 2 * n_seq);
    self->logits_n = self->logits_index + n_seq;
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
    dict_int(d, "n_batch", self->n_batch);
    dict_int(d, "n_draft", self->n_draft);
    dict_int(d, "n_threads", self->ctx ? llama_n_threads(self->ctx) : 0);
    dict_str(d, "chat_template", llama_model_chat_template(self->model, nullptr));
    dict_str(d, "chat_template_rerank", llama_model_chat_template(self->model, "rerank"));
    // what embed() gives: the pooling (the model's unless Model(pooling=) said), floats per row
    dict_str(d, "pooling", self->ctx ? pooling_name(llama_pooling_type(self->ctx)) : nullptr);
    dict_int(d, "n_embd_out", llama_model_n_embd_out(self->model));
    dict_int(d, "n_cls_out", llama_model_n_cls_out(self->model));
    mp_obj_dict_store(d, MP_OBJ_NEW_QSTR(MP_QSTR_bos), token_or_none(llama_vocab_bos(self->vocab)));
    mp_obj_dict_store(d, MP_OBJ_NEW_QSTR(MP_QSTR_eos), token_or_none(llama_vocab_eos(self->vocab)));
    mp_obj_dict_store(d, MP_OBJ_NEW_QSTR(MP_QSTR_eot), token_or_none(llama_vocab_eot(self->vocab)));
    mp_obj_dict_store(d, MP_OBJ_NEW_QSTR(MP_QSTR_add_bos), mp_obj_new_bool(llama_vocab_get_add_bos(self->vocab)));
    // what a rerank prompt is joined with when the model has no rerank template (llama-server's)
    mp_obj_dict_store(d, MP_OBJ_NEW_QSTR(MP_QSTR_sep), token_or_none(llama_vocab_sep(self->vocab)));
    mp_obj_dict_store(d, MP_OBJ_NEW_QSTR(MP_QSTR_add_eos), mp_obj_new_bool(llama_vocab_get_add_eos(self->vocab)));
    mp_obj_dict_store(d, MP_OBJ_NEW_QSTR(MP_QSTR_add_sep), mp_obj_new_bool(llama_vocab_get_add_sep(self->vocab)));
    // fill-in-the-middle tokens, None where the vocabulary has none (as /infill needs them)
    mp_obj_dict_store(d, MP_OBJ_NEW_QSTR(MP_QSTR_fim_pre), token_or_none(llama_vocab_fim_pre(self->vocab)));
    mp_obj_dict_store(d, MP_OBJ_NEW_QSTR(MP_QSTR_fim_suf), token_or_none(llama_vocab_fim_suf(self->vocab)));
    mp_obj_dict_store(d, MP_OBJ_NEW_QSTR(MP_QSTR_fim_mid), token_or_none(llama_vocab_fim_mid(self->vocab)));
    mp_obj_dict_store(d, MP_OBJ_NEW_QSTR(MP_QSTR_fim_rep), token_or_none(llama_vocab_fim_rep(self->vocab)));
    mp_obj_dict_store(d, MP_OBJ_NEW_QSTR(MP_QSTR_fim_sep), token_or_none(llama_vocab_fim_sep(self->vocab)));
    mp_obj_t eog = mp_obj_new_list(0, nullptr);     // every end-of-generation token (eos, eot, eom, ...)
    for (llama_token t = 0; t < llama_vocab_n_tokens(self->vocab); t++) {
        if (llama_vocab_is_eog(self->vocab, t)) {
            mp_obj_list_append(eog, MP_OBJ_NEW_SMALL_INT(t));
        }
    }
    mp_obj_dict_store(d, MP_OBJ_NEW_QSTR(MP_QSTR_eog), eog);
    return d;
}
