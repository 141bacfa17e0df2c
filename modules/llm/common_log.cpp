// llama.cpp's common library logs through common/log.cpp, whose logger starts a worker thread the
// first time anything is logged. The kernel runs a fixed set of threads (the decoder's, ggml's
// workers), so that thread cannot start, and its failure (std::system_error, EAGAIN) replaced
// whatever was being reported. This file defines the whole of log.h's API instead, so the
// linker never takes log.cpp from the archive: each line is formatted in the caller's thread and
// handed to the llm module's llama.cpp log callback (errors kept for exception messages, all of
// it on the console with llm.verbose(True)).
#include <cstdarg>
#include <cstdio>

#include "log.h"
#include "llm_internal.h"

int common_log_verbosity_thold = LOG_DEFAULT_LLAMA;

int common_log_get_verbosity_thold(void) { return common_log_verbosity_thold; }
void common_log_set_verbosity_thold(int verbosity) { common_log_verbosity_thold = verbosity; }
bool common_log_get_jsonl(void) { return false; }
void common_log_set_jsonl(bool) {}

int common_log_get_verbosity(enum ggml_log_level level) {
    switch (level) {
        case GGML_LOG_LEVEL_DEBUG: return LOG_LEVEL_DEBUG;
        case GGML_LOG_LEVEL_WARN: return LOG_LEVEL_WARN;
        case GGML_LOG_LEVEL_ERROR: return LOG_LEVEL_ERROR;
        case GGML_LOG_LEVEL_NONE: return LOG_LEVEL_OUTPUT;
        default: return LOG_LEVEL_TRACE;
    }
}

void common_log_default_callback(enum ggml_log_level level, const char *text, void *user_data) {
    if (common_log_get_verbosity(level) <= common_log_verbosity_thold) {
        log_callback(level, text, user_data);
    }
}

struct common_log {};
static common_log the_log;

struct common_log *common_log_init() { return &the_log; }
struct common_log *common_log_main() { return &the_log; }
void common_log_pause(struct common_log *) {}
void common_log_resume(struct common_log *) {}
void common_log_free(struct common_log *) {}
void common_log_set_file(struct common_log *, const char *) {}
void common_log_set_colors(struct common_log *, log_colors) {}
void common_log_set_prefix(struct common_log *, bool) {}
void common_log_set_timestamps(struct common_log *, bool) {}
void common_log_flush(struct common_log *) {}
void common_log_add_json(struct common_log *, const char *, const common_json &) {}

void common_log_add(struct common_log *, enum ggml_log_level level, const char *fmt, ...) {
    char line[512];
    va_list args;
    va_start(args, fmt);
    vsnprintf(line, sizeof(line), fmt, args);
    va_end(args);
    log_callback(level, line, nullptr);
}
