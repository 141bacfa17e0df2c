// llm.Chat and llm.ChatParser: llama.cpp's chat layer (common/chat.*), as llama-server runs it with
// --jinja. Chat holds a model's templates (Jinja, through llama.cpp's own engine) and turns an
// OpenAI-style request into a prompt plus what generation needs: the tool-call grammar and its
// triggers, the tokens to keep, extra stop words, the output parser. ChatParser reads the generated
// text back into a message (content, reasoning_content, tool_calls), and while a stream runs into
// the deltas llama-server sends. No template engine or tool-call parser here: only the glue of
// tools/server's oaicompat_chat_params_parse and task_result_state::update_chat_msg.
#include <cstring>
#include <random>

#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wunused-function"   // static helpers in llama.cpp's jinja headers
#include "chat.h"
#pragma GCC diagnostic pop
#include "llm_internal.h"

extern "C" {
#include "kernel/kernel.h"      // kernel_entropy: a seed for tool call ids
}

// What a call produced, built outside any frame that calls MicroPython and read from there
static std::string out_text;
static common_chat_params out_params;
static std::map<std::string, bool> out_caps;

static llm_chat_obj_t *open_chat(mp_obj_t self_in) {
    llm_chat_obj_t *self = (llm_chat_obj_t *)MP_OBJ_TO_PTR(self_in);
    if (!self->tmpls) {
        mp_raise_ValueError(MP_ERROR_TEXT("chat is closed"));
    }
    open_model(MP_OBJ_FROM_PTR(self->model));
    return self;
}

static mp_obj_t str_obj(const std::string &s) {
    return mp_obj_new_str(s.data(), s.size());
}

// A failed llama.cpp call as the ValueError a request's 400 is made of (out of memory stays MemoryError)
[[noreturn]] static void raise_chat_error(const char *what) {
    if (strcmp(cpp_error, "out of memory") == 0) {
        raise_cpp_error();
    }
    mp_raise_msg_varg(&mp_type_ValueError, MP_ERROR_TEXT("%s%s"), what, cpp_error);
}

// Chat(model, template=None): the model's templates, or template's source (a Jinja text, or the
// name "chatml") in their place; with neither, ChatML, as llama-server falls back. A template
// llama.cpp cannot parse is a ValueError.
mp_obj_t llm_chat_make_new(const mp_obj_type_t *type, size_t n_args, size_t n_kw, const mp_obj_t *args) {
    mp_arg_check_num(n_args, n_kw, 1, 2, false);
    if (!mp_obj_is_type(args[0], &llm_model_type)) {
        mp_raise_TypeError(MP_ERROR_TEXT("first argument must be an llm.Model"));
    }
    llm_model_obj_t *m = open_model(args[0]);
    const char *source = n_args > 1 && args[1] != mp_const_none ? mp_obj_str_get_str(args[1]) : "";
    llm_chat_obj_t *self = mp_obj_malloc_with_finaliser(llm_chat_obj_t, type);
    self->model = m;
    self->tmpls = nullptr;
    if (!guarded([&] { self->tmpls = common_chat_templates_init(m->model, source).release(); })) {
        raise_chat_error("chat template: ");
    }
    return MP_OBJ_FROM_PTR(self);
}

mp_obj_t llm_chat_close(mp_obj_t self_in) {
    llm_chat_obj_t *self = (llm_chat_obj_t *)MP_OBJ_TO_PTR(self_in);
    if (self->tmpls) {
        common_chat_templates_free(self->tmpls);
        self->tmpls = nullptr;
    }
    return mp_const_none;
}

// caps() -> {name: bool}: what the template supports (tools, tool_calls, parallel_tool_calls,
// system_role, thinking, ...), as /props reports it
mp_obj_t llm_chat_caps(mp_obj_t self_in) {
    llm_chat_obj_t *self = open_chat(self_in);
    GUARD(out_caps = common_chat_templates_get_caps(self->tmpls));
    mp_obj_t d = mp_obj_new_dict(0);
    for (const auto &kv : out_caps) {
        mp_obj_dict_store(d, mp_obj_new_str(kv.first.data(), kv.first.size()), mp_obj_new_bool(kv.second));
    }
    GUARD(out_caps.clear());
    return d;
}

// source(variant="") -> the template's text ("tool_use": the model's second template, if any)
mp_obj_t llm_chat_source(size_t n_args, const mp_obj_t *args) {
    llm_chat_obj_t *self = open_chat(args[0]);
    const char *variant = n_args > 1 ? mp_obj_str_get_str(args[1]) : "";
    GUARD(out_text = common_chat_templates_source(self->tmpls, variant));
    mp_obj_t s = str_obj(out_text);
    GUARD(out_text.clear());
    return s;
}

// The inputs of common_chat_templates_apply from a request's JSON, with llama-server's checks
static void apply(llm_chat_obj_t *self, const char *request) {
    common_json body = common_json::parse(request);
    auto caps = common_chat_templates_get_caps(self->tmpls);
    common_chat_templates_inputs inputs;
    inputs.messages = common_chat_msgs_parse_oaicompat(body.at("messages"));
    if (body.contains("tools") && !body.at("tools").is_null()) {
        inputs.tools = common_chat_tools_parse_oaicompat(body.at("tools"));
    }
    inputs.tool_choice = common_chat_tool_choice_parse_oaicompat(body.value("tool_choice", std::string("auto")));
    inputs.json_schema = body.value("json_schema", std::string());
    inputs.grammar = body.value("grammar", std::string());
    inputs.parallel_tool_calls = body.value("parallel_tool_calls", caps["supports_parallel_tool_calls"]);
    inputs.add_generation_prompt = body.value("add_generation_prompt", true);
    inputs.continue_final_message = body.contains("continue_final_message")
        ? common_chat_continuation_parse(body.at("continue_final_message")) : COMMON_CHAT_CONTINUATION_NONE;
    if (inputs.continue_final_message == COMMON_CHAT_CONTINUATION_NONE && body.value("prefill_assistant", true)
        && !inputs.messages.empty() && inputs.messages.back().role == "assistant") {
        if (inputs.messages.size() >= 2 && inputs.messages[inputs.messages.size() - 2].role == "assistant") {
            throw std::invalid_argument("Cannot have 2 or more assistant messages at the end of the list.");
        }
        inputs.continue_final_message = COMMON_CHAT_CONTINUATION_AUTO;
        inputs.add_generation_prompt = false;
    }
    if (inputs.continue_final_message != COMMON_CHAT_CONTINUATION_NONE && inputs.add_generation_prompt) {
        throw std::invalid_argument("Cannot set both add_generation_prompt and continue_final_message to true.");
    }
    if (inputs.continue_final_message != COMMON_CHAT_CONTINUATION_NONE && !inputs.messages.empty()
        && inputs.messages.back().role == "assistant" && !inputs.messages.back().tool_calls.empty()) {
        throw std::invalid_argument("Cannot continue an assistant message that contains tool calls.");
    }
    inputs.reasoning_format = common_reasoning_format_from_name(body.value("reasoning_format", std::string("auto")));
    inputs.enable_thinking = body.value("enable_thinking", true);
    if (body.contains("chat_template_kwargs")) {
        for (const auto &[name, value] : body.at("chat_template_kwargs").items()) {
            inputs.chat_template_kwargs[name] = value.get<std::string>();
        }
    }
    out_params = common_chat_templates_apply(self->tmpls, inputs);
    out_text = inputs.continue_final_message == COMMON_CHAT_CONTINUATION_NONE ? "" : "continue";
}

// apply(request_json) -> {prompt, format, format_name, grammar, grammar_lazy, triggers, preserved_tokens,
//   additional_stops, generation_prompt, parser, supports_thinking, thinking_start_tag,
//   thinking_end_tags, is_continuation}. request_json: an object with messages (OpenAI's shape),
//   tools, tool_choice ("auto", "none", "required"), json_schema (text), grammar, parallel_tool_calls,
//   add_generation_prompt, continue_final_message, prefill_assistant (a last assistant message is
//   continued, default true), reasoning_format, enable_thinking, chat_template_kwargs ({name: JSON
//   text}). What llama-server refuses is a ValueError with its message.
mp_obj_t llm_chat_apply(mp_obj_t self_in, mp_obj_t request_in) {
    llm_chat_obj_t *self = open_chat(self_in);
    const char *request = mp_obj_str_get_str(request_in);
    if (!guarded([&] { apply(self, request); })) {
        raise_chat_error("");
    }
    const common_chat_params &p = out_params;
    mp_obj_t d = mp_obj_new_dict(0);
    auto store = [&](const char *name, mp_obj_t value) { mp_obj_dict_store(d, mp_obj_new_str(name, strlen(name)), value); };
    auto strings = [&](const std::vector<std::string> &v) {
        mp_obj_t list = mp_obj_new_list(0, nullptr);
        for (const auto &s : v) {
            mp_obj_list_append(list, str_obj(s));
        }
        return list;
    };
    store("prompt", str_obj(p.prompt));
    store("format", MP_OBJ_NEW_SMALL_INT(p.format));
    store("format_name", mp_obj_new_str(common_chat_format_name(p.format), strlen(common_chat_format_name(p.format))));
    store("grammar", str_obj(p.grammar));
    store("grammar_lazy", mp_obj_new_bool(p.grammar_lazy));
    mp_obj_t triggers = mp_obj_new_list(0, nullptr);
    for (const auto &t : p.grammar_triggers) {
        mp_obj_t f[3] = { MP_OBJ_NEW_SMALL_INT(t.type), str_obj(t.value), MP_OBJ_NEW_SMALL_INT(t.token) };
        mp_obj_list_append(triggers, mp_obj_new_tuple(t.type == COMMON_GRAMMAR_TRIGGER_TYPE_TOKEN ? 3 : 2, f));
    }
    store("triggers", triggers);
    store("preserved_tokens", strings(p.preserved_tokens));
    store("additional_stops", strings(p.additional_stops));
    store("generation_prompt", str_obj(p.generation_prompt));
    store("parser", str_obj(p.parser));
    store("supports_thinking", mp_obj_new_bool(p.supports_thinking));
    store("thinking_start_tag", str_obj(p.thinking_start_tag));
    store("thinking_end_tags", strings(p.thinking_end_tags));
    store("is_continuation", mp_obj_new_bool(!out_text.empty()));
    GUARD(out_params = common_chat_params(); out_text.clear());
    return d;
}

// ---------------------------------------------------------------- reading the output

struct chat_parse_state {
    common_chat_parser_params params;
    std::string generated;
    common_chat_msg msg;
    std::vector<std::string> tool_call_ids;
};

static std::mt19937 id_random;

static std::string tool_call_id() {
    static const char chars[] = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
    static bool seeded;
    if (!seeded) {
        uint32_t seed = 0;
        kernel_entropy((uint8_t *)&seed, sizeof(seed));
        id_random.seed(seed);
        seeded = true;
    }
    std::string id(32, ' ');
    for (auto &c : id) {
        c = chars[id_random() % (sizeof(chars) - 1)];
    }
    return id;
}

static llm_chat_parser_obj_t *open_parser(mp_obj_t self_in) {
    llm_chat_parser_obj_t *self = (llm_chat_parser_obj_t *)MP_OBJ_TO_PTR(self_in);
    if (!self->state) {
        mp_raise_ValueError(MP_ERROR_TEXT("parser is closed"));
    }
    return self;
}

// ChatParser(format, *, parser="", generation_prompt="", reasoning_format="none",
//            reasoning_in_content=False, parse_tool_calls=True, is_continuation=False):
//   reads generated text as Chat.apply's format and parser (its result's fields) say
mp_obj_t llm_chat_parser_make_new(const mp_obj_type_t *type, size_t n_args, size_t n_kw, const mp_obj_t *all_args) {
    enum { ARG_format, ARG_parser, ARG_generation_prompt, ARG_reasoning_format, ARG_reasoning_in_content,
           ARG_parse_tool_calls, ARG_is_continuation };
    static const mp_arg_t allowed[] = {
        { MP_QSTR_format, MP_ARG_REQUIRED | MP_ARG_INT, {.u_int = 0} },
        { MP_QSTR_parser, MP_ARG_KW_ONLY | MP_ARG_OBJ, {.u_obj = mp_const_none} },
        { MP_QSTR_generation_prompt, MP_ARG_KW_ONLY | MP_ARG_OBJ, {.u_obj = mp_const_none} },
        { MP_QSTR_reasoning_format, MP_ARG_KW_ONLY | MP_ARG_OBJ, {.u_obj = mp_const_none} },
        { MP_QSTR_reasoning_in_content, MP_ARG_KW_ONLY | MP_ARG_BOOL, {.u_bool = false} },
        { MP_QSTR_parse_tool_calls, MP_ARG_KW_ONLY | MP_ARG_BOOL, {.u_bool = true} },
        { MP_QSTR_is_continuation, MP_ARG_KW_ONLY | MP_ARG_BOOL, {.u_bool = false} },
    };
    mp_arg_val_t args[MP_ARRAY_SIZE(allowed)];
    mp_arg_parse_all_kw_array(n_args, n_kw, all_args, MP_ARRAY_SIZE(allowed), allowed, args);
    if (args[ARG_format].u_int < 0 || args[ARG_format].u_int >= COMMON_CHAT_FORMAT_COUNT) {
        mp_raise_ValueError(MP_ERROR_TEXT("unknown chat format"));
    }
    auto text = [&](int i) { return args[i].u_obj == mp_const_none ? "" : mp_obj_str_get_str(args[i].u_obj); };
    const char *parser = text(ARG_parser), *gen = text(ARG_generation_prompt), *reasoning = text(ARG_reasoning_format);
    llm_chat_parser_obj_t *self = mp_obj_malloc_with_finaliser(llm_chat_parser_obj_t, type);
    self->state = nullptr;
    if (!guarded([&] {
        chat_parse_state *s = new chat_parse_state();
        self->state = s;
        s->params.format = (common_chat_format)args[ARG_format].u_int;
        if (*parser) {
            s->params.parser.load(parser);
        }
        s->params.generation_prompt = gen;
        s->params.reasoning_format = common_reasoning_format_from_name(*reasoning ? reasoning : "none");
        s->params.reasoning_in_content = args[ARG_reasoning_in_content].u_bool;
        s->params.parse_tool_calls = args[ARG_parse_tool_calls].u_bool;
        s->params.is_continuation = args[ARG_is_continuation].u_bool;
        if (s->params.is_continuation) {       // no delta for the prefilled part
            s->msg = common_chat_parse("", true, s->params);
        }
    })) {
        raise_chat_error("chat parser: ");
    }
    return MP_OBJ_FROM_PTR(self);
}

mp_obj_t llm_chat_parser_close(mp_obj_t self_in) {
    llm_chat_parser_obj_t *self = (llm_chat_parser_obj_t *)MP_OBJ_TO_PTR(self_in);
    delete self->state;
    self->state = nullptr;
    return mp_const_none;
}

// A diff as llama-server's server_chat_msg_diff_to_json_oaicompat writes it: one delta object
static common_json delta_json(const common_chat_msg_diff &diff) {
    common_json delta = common_json::object();
    if (!diff.reasoning_content_delta.empty()) {
        delta["reasoning_content"] = diff.reasoning_content_delta;
    }
    if (!diff.content_delta.empty()) {
        delta["content"] = diff.content_delta;
    }
    if (diff.tool_call_index != std::string::npos) {
        common_json call = common_json::object();
        call["index"] = diff.tool_call_index;
        if (!diff.tool_call_delta.id.empty()) {
            call["id"] = diff.tool_call_delta.id;
            call["type"] = "function";
        }
        if (!diff.tool_call_delta.name.empty() || !diff.tool_call_delta.arguments.empty()) {
            common_json function = common_json::object();
            if (!diff.tool_call_delta.name.empty()) {
                function["name"] = diff.tool_call_delta.name;
            }
            if (!diff.tool_call_delta.arguments.empty()) {
                function["arguments"] = diff.tool_call_delta.arguments;
            }
            call["function"] = function;
        }
        common_json calls = common_json::array();
        calls.push_back(call);
        delta["tool_calls"] = calls;
    }
    return delta;
}

static void update(chat_parse_state *s, const char *added, bool partial) {
    s->generated += added;
    common_chat_msg previous = s->msg;
    common_chat_msg msg = common_chat_parse(s->generated, partial, s->params);
    common_json deltas = common_json::array();
    if (!msg.empty()) {
        msg.set_tool_call_ids(s->tool_call_ids, tool_call_id);
        s->msg = msg;
        for (const auto &diff : common_chat_msg_diff::compute_diffs(previous, s->msg)) {
            deltas.push_back(delta_json(diff));
        }
    }
    out_text = deltas.dump();
}

// update(text, partial=True) -> JSON text of the deltas (OpenAI's delta objects, as llama-server
//   streams them) that text, appended to what came before, adds to the message. A partial parse
//   holds back what may still become a tool call; the last update (partial=False) completes it.
//   Text that does not parse as the format says is a ValueError when not partial.
mp_obj_t llm_chat_parser_update(size_t n_args, const mp_obj_t *args) {
    llm_chat_parser_obj_t *self = open_parser(args[0]);
    const char *added = mp_obj_str_get_str(args[1]);
    bool partial = n_args > 2 ? mp_obj_is_true(args[2]) : true;
    if (!guarded([&] { update(self->state, added, partial); })) {
        raise_chat_error("cannot parse the model's output: ");
    }
    mp_obj_t s = str_obj(out_text);
    GUARD(out_text.clear());
    return s;
}

// message() -> JSON text of the message so far, as llama-server answers it (role, content,
//   reasoning_content, tool_calls with ids)
mp_obj_t llm_chat_parser_message(mp_obj_t self_in) {
    llm_chat_parser_obj_t *self = open_parser(self_in);
    GUARD(
        common_chat_msg msg = self->state->msg;
        if (msg.role.empty()) {
            msg.role = "assistant";
        }
        out_text = msg.to_json_oaicompat().dump());
    mp_obj_t s = str_obj(out_text);
    GUARD(out_text.clear());
    return s;
}
