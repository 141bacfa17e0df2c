// llm.json_check(data, max_depth=256): whether data (bytes or str) is one whole JSON document as
// llama-server's own reader takes it: nlohmann::json (vendored by llama.cpp), through its SAX
// parser, which builds nothing. MicroPython's json.loads reads commas and colons as whitespace and
// takes a truncated document or a mismatched bracket, so the server checks a body here first.
// Linear in the length of data, no recursion; nesting deeper than max_depth stops the parse there.
#include <cstdio>
#include <cstring>

#include <nlohmann/json.hpp>

#include "llm_internal.h"

namespace {

using json = nlohmann::json;

// Accepts every value; counts the depth; keeps the parser's message.
struct checker : json::json_sax_t {
    size_t depth = 0, max_depth;
    char error[256] = "";

    explicit checker(size_t max) : max_depth(max) {}

    bool open() {
        if (depth == max_depth) {
            snprintf(error, sizeof(error), "nested deeper than %u levels", (unsigned)max_depth);
            return false;
        }
        depth++;
        return true;
    }
    bool null() override { return true; }
    bool boolean(bool) override { return true; }
    bool number_integer(number_integer_t) override { return true; }
    bool number_unsigned(number_unsigned_t) override { return true; }
    bool number_float(number_float_t, const string_t &) override { return true; }
    bool string(string_t &) override { return true; }
    bool binary(binary_t &) override { return true; }
    bool start_object(std::size_t) override { return open(); }
    bool key(string_t &) override { return true; }
    bool end_object() override { depth--; return true; }
    bool start_array(std::size_t) override { return open(); }
    bool end_array() override { depth--; return true; }
    bool parse_error(std::size_t, const std::string &, const nlohmann::detail::exception &e) override {
        // "[json.exception.parse_error.101] parse error at line 1, column 5: ..." without the id
        const char *what = e.what(), *text = strstr(what, "] ");
        snprintf(error, sizeof(error), "%s", text ? text + 2 : what);
        return false;
    }
};

// Fills error (empty: the document is valid). Every C++ object is gone when it returns, so the
// caller may raise.
void check(const char *data, size_t len, size_t max_depth, char *error, size_t error_size) {
    error[0] = 0;
    if (!guarded([&] {
            checker c(max_depth);
            if (!json::sax_parse(data, data + len, &c)) {
                snprintf(error, error_size, "%s", c.error[0] ? c.error : "invalid JSON");
            }
        })) {
        snprintf(error, error_size, "%s", cpp_error);
    }
}

}  // namespace

mp_obj_t llm_json_check(size_t n_args, const mp_obj_t *args) {
    size_t len;
    const char *data = mp_obj_str_get_data(args[0], &len);
    mp_int_t max_depth = n_args > 1 ? mp_obj_get_int(args[1]) : 256;
    if (max_depth < 1) {
        mp_raise_ValueError(MP_ERROR_TEXT("max_depth must be at least 1"));
    }
    char error[256];
    check(data, len, (size_t)max_depth, error, sizeof(error));
    if (error[0]) {
        mp_raise_msg_varg(&mp_type_ValueError, MP_ERROR_TEXT("%s"), error);
    }
    return mp_const_none;
}
