"""Chat as llama-server serves it with --jinja: the model's Jinja template (or chat_template=),
tools and tool calls, reasoning, prefill, all through llama.cpp's chat layer (llm.Chat and
llm.ChatParser). ChatRequest reads a request as tools/server's oaicompat_chat_params_parse does; the
routes /v1/chat/completions, /apply-template and /v1/chat/completions/input_tokens are below, for
Api (cllm.api) to put on the server."""
import json

import llm

from cllm.fields import (all_finished, body_of, completion_id, field, finish_reason, include_usage, json_schema_of,
                         n_predict_of, n_probs_of, stop_list, usage)
from cllm.http import ApiError, StreamResponse, bad_request
from cllm.log import log

TOOL_CHOICES = ("auto", "none", "required")
REASONING_FORMATS = ("none", "auto", "deepseek", "deepseek-legacy")
TRIGGER_TOKEN, TRIGGER_WORD = 0, 1          # common_grammar_trigger_type


def templates(model, setting):
    """The llm.Chat for the chat_template setting: a boot module holding a Jinja template (its path),
    a template's text or "chatml"; empty: the model's own. One that llama.cpp cannot parse is logged
    and the model's own (else ChatML) serves instead: an appliance boots with a template."""
    source = None
    if setting:
        source = setting
        if setting.startswith("/"):
            try:
                with open(setting) as f:
                    source = f.read()
            except OSError:
                log("cllm: chat_template {}: no such boot module; using the model's template".format(setting))
                source = None
    for src in (source, None, "chatml") if source else (None, "chatml"):
        try:
            return llm.Chat(model, src)
        except ValueError as e:
            log("cllm: cannot use the {} chat template: {}".format("model's" if src is None else "given", e))
    raise ValueError("no chat template can be parsed")


def string_field(body, name, default):
    value = body.get(name, default)
    if value is not None and not isinstance(value, str):
        raise bad_request("'{}' must be a string".format(name))
    return value


def check_messages(messages):
    """llama-server's checks of `messages` before the template sees them (llm.Chat makes the rest)."""
    if messages is None:
        raise bad_request("'messages' is required")
    if not isinstance(messages, list):
        raise bad_request("Expected 'messages' to be an array")
    for m in messages:
        if not isinstance(m, dict):
            raise bad_request("Expected 'message' to be an object, got " + json.dumps(m))
        role = m.get("role")
        if role != "assistant" and "content" not in m:
            raise bad_request("All non-assistant messages must contain 'content'")
        if role == "assistant" and "content" not in m and "tool_calls" not in m:
            raise bad_request("Assistant message must contain either 'content' or 'tool_calls'!")
        content = m.get("content")
        if isinstance(content, list):
            for part in content:
                kind = part.get("type") if isinstance(part, dict) else None
                if kind in ("image_url", "input_audio", "input_video", "video_url"):
                    raise bad_request("{} input is not supported - this server has no multimodal projector".format(
                        kind.split("_")[-1] if kind.startswith("input") else kind.split("_")[0]))
                if kind != "text":
                    raise bad_request("unsupported content[].type")
        elif content is not None and not isinstance(content, str):
            raise bad_request("Expected 'content' to be a string or an array")


def tools_of(body):
    """(tools, tool_choice): OpenAI's named-function tool_choice keeps that tool alone and requires it."""
    tools = body.get("tools")
    if tools is not None and not isinstance(tools, list):
        raise bad_request("'tools' must be an array")
    choice = body.get("tool_choice", "auto")
    if isinstance(choice, dict):
        function = choice.get("function")
        name = function.get("name") if isinstance(function, dict) else None
        if choice.get("type") != "function" or not isinstance(name, str):
            raise bad_request("'tool_choice' must be \"auto\", \"none\", \"required\" or "
                              "{\"type\": \"function\", \"function\": {\"name\": ...}}")
        tools = [t for t in tools or () if isinstance(t, dict) and isinstance(t.get("function"), dict)
                 and t["function"].get("name") == name]
        if not tools:
            raise bad_request("'tool_choice' names the function '{}', which is not in 'tools'".format(name))
        choice = "required"
    elif choice not in TOOL_CHOICES:
        raise bad_request("Invalid tool_choice: {}".format(choice))
    return tools or None, choice


class ChatRequest:
    """A chat request made ready to generate: the prompt, the sampler's extra keywords
    (the template's grammar, its triggers, the reasoning budget), the stop words, the tokens whose
    text is kept (a tool-call tag), and how to parse the output."""

    def __init__(self, api, body, schema=None):
        s, engine = api.settings, api.engine
        model, chat = engine.model, engine.chat
        check_messages(body.get("messages"))
        tools, choice = tools_of(body)
        grammar = field(body, "grammar", str, "")
        if tools and choice != "none" and "grammar" in body:
            raise bad_request("Cannot use custom grammar constraints with tools.")
        request = {"messages": body["messages"], "tools": tools, "tool_choice": choice, "grammar": grammar,
                   "json_schema": json.dumps(schema) if schema is not None else "",
                   "prefill_assistant": bool(s.prefill_assistant)}
        for name, kind in (("parallel_tool_calls", bool), ("add_generation_prompt", bool)):
            if body.get(name) is not None:
                request[name] = field(body, name, kind, None)
        if "continue_final_message" in body:
            request["continue_final_message"] = body["continue_final_message"]
        reasoning = string_field(body, "reasoning_format", s.reasoning_format)
        if reasoning not in REASONING_FORMATS:
            raise bad_request("Unknown reasoning format: {}".format(reasoning))
        request["reasoning_format"] = reasoning
        kwargs = {}
        for name, value in field(body, "chat_template_kwargs", dict, {}).items():
            kwargs[name] = json.dumps(value)
        thinking = kwargs.get("enable_thinking")
        if thinking in ("true", "false"):
            request["enable_thinking"] = thinking == "true"
        elif thinking is not None and thinking.startswith('"'):
            raise bad_request('invalid type for "enable_thinking" (expected boolean, got string)')
        effort = string_field(body, "reasoning_effort", None)
        if effort == "none":
            request["enable_thinking"] = False
            kwargs.pop("reasoning_effort", None)
        elif effort:
            kwargs["reasoning_effort"] = json.dumps(effort)
        if s.reasoning == "off":
            request["enable_thinking"] = False
        request["chat_template_kwargs"] = kwargs
        try:
            r = chat.apply(json.dumps(request))
        except ValueError as e:
            raise bad_request(str(e))
        self.applied = r
        self.prompt = r["prompt"]
        self.stream = field(body, "stream", bool, False)
        self.stop = stop_list(body) + r["additional_stops"]
        self.preserved = set()
        for text in r["preserved_tokens"]:
            ids = model.tokenize(text, False, True)
            if len(ids) == 1:
                self.preserved.add(ids[0])
        triggers = []
        for trigger in r["triggers"]:
            if trigger[0] == TRIGGER_WORD:
                ids = model.tokenize(trigger[1], False, True)
                if len(ids) == 1:
                    if ids[0] not in self.preserved:
                        raise bad_request("Grammar trigger word should be marked as preserved token: " + trigger[1])
                    trigger = (TRIGGER_TOKEN, trigger[1], ids[0])
            triggers.append(trigger)
        self.sampling = {"grammar": r["grammar"] or None, "grammar_type": "tool_calls", "grammar_lazy": r["grammar_lazy"],
                         "triggers": triggers, "generation_prompt": r["generation_prompt"]}
        if r["grammar_lazy"] and not triggers:
            raise bad_request("Error: no triggers set for lazy grammar!")
        if r["thinking_end_tags"]:
            budget = field(body, "reasoning_budget_tokens", int, None)
            if budget is None:
                budget = field(body, "thinking_budget_tokens", int, s.reasoning_budget)
            if budget < -1:
                raise bad_request("'reasoning_budget_tokens' must be -1 (no budget) or more")
            self.sampling.update(reasoning_budget=budget, reasoning_start=r["thinking_start_tag"],
                                 reasoning_end=r["thinking_end_tags"],
                                 reasoning_message=string_field(body, "reasoning_budget_message", "") or None)
        self.parse_tool_calls = bool(tools) and choice != "none"
        self.parser_options = {"parser": r["parser"], "generation_prompt": r["generation_prompt"],
                               "reasoning_format": reasoning, "parse_tool_calls": self.parse_tool_calls,
                               "reasoning_in_content": self.stream and reasoning == "deepseek-legacy",
                               "is_continuation": r["is_continuation"]}
        self.settings = {"chat_format": r["format_name"], "reasoning_format": reasoning,
                         "reasoning_in_content": self.parser_options["reasoning_in_content"],
                         "generation_prompt": r["generation_prompt"], "grammar_lazy": r["grammar_lazy"],
                         "grammar_triggers": [{"type": t[0], "value": t[1]} for t in triggers],
                         "preserved_tokens": r["preserved_tokens"]}

    def parser(self):
        try:
            return llm.ChatParser(self.applied["format"], **self.parser_options)
        except ValueError as e:
            raise ApiError(500, str(e), "server_error")


def chat_finish_reason(task, message):
    """finish_reason, and "tool_calls" where a stopped message holds calls."""
    reason = finish_reason(task)
    return "tool_calls" if reason == "stop" and message.get("tool_calls") else reason


def final_message(parser, text):
    """The message a finished generation parses to; output that does not parse (a tool call cut off
    by the length limit, say) is kept as content, not lost."""
    try:
        parser.update(text, False)
    except ValueError as e:
        log("cllm: chat output kept as content: {}".format(e))
        return {"role": "assistant", "content": text}
    return json.loads(parser.message())


async def oai_chat(api, req):
    """POST /v1/chat/completions."""
    body = body_of(req)
    chat = ChatRequest(api, body, json_schema_of(body))
    n_probs = n_probs_of(body, True)
    if n_probs and chat.parse_tool_calls and chat.stream:
        raise bad_request("logprobs is not supported with tools + stream")
    tasks = api.choice_tasks(body, api.prompt_of(chat.prompt), n_predict_of(
        body, api.settings.n_predict, "n_predict", "max_completion_tokens", "max_tokens"), n_probs, chat)
    task = tasks[0]
    cid = completion_id("chatcmpl-")
    parsers = [chat.parser() for _ in tasks]

    def chunk(delta, i, reason=None):
        return api.oai_object(cid, "chat.completion.chunk",
                              choices=[{"finish_reason": reason, "index": i, "delta": delta}])
    if chat.stream:
        opened = set()

        def opening(i):     # each choice's first delta carries the role
            if i in opened:
                return []
            opened.add(i)
            return [chunk({"role": "assistant", "content": None}, i)]

        def chunks(text, i):
            out = [chunk(d, i) for d in json.loads(parsers[i].update(text, True))]
            probs = tasks[i].new_probs()
            if probs:
                if not out:
                    out = [chunk({}, i)]
                out[-1]["choices"][0]["logprobs"] = api.oai_logprobs(probs)
            return opening(i) + out if out else []

        def last():
            out = []
            for i, t in enumerate(tasks):
                try:
                    deltas = json.loads(parsers[i].update("", False))
                except ValueError as e:     # as final_message: what was held back goes as content
                    log("cllm: chat output kept as content: {}".format(e))
                    sent = json.loads(parsers[i].message()).get("content") or ""
                    deltas = [{"content": t.text[len(sent):]}] if t.text.startswith(sent) and t.text != sent else []
                message = json.loads(parsers[i].message())
                out += opening(i) + [chunk(d, i) for d in deltas] + [chunk({}, i, chat_finish_reason(t, message))]
            if include_usage(body):
                out.append(api.oai_object(cid, "chat.completion.chunk", choices=[], usage=usage(*tasks)))
            out[-1]["timings"] = task.timings()
            if api.settings.verbose:
                out[-1]["__verbose"] = api.native_final(task, task.text, True)
            return out + [b"[DONE]"]

        def progress(p, i):     # as llama-server: the role delta, the note on it
            out = chunk({"role": "assistant", "content": None}, i)
            out["prompt_progress"] = p
            return [out]
        return StreamResponse(tasks, chunks, last, field(body, "timings_per_token", bool, False), progress)
    texts = await all_finished(tasks)
    choices = []
    for i, (t, text) in enumerate(zip(tasks, texts)):
        message = final_message(parsers[i], text)
        choices.append({"finish_reason": chat_finish_reason(t, message), "index": i, "message": message})
        if t.probs:
            choices[-1]["logprobs"] = api.oai_logprobs(t.probs)
    out = api.oai_object(cid, "chat.completion", usage=usage(*tasks), timings=task.timings(), choices=choices)
    if api.settings.verbose:
        out["__verbose"] = api.native_final(task, texts[0])
    return out


async def apply_template(api, req):
    """POST /apply-template: the prompt the template makes of a chat request, nothing generated."""
    body = body_of(req)
    return {"prompt": ChatRequest(api, body, json_schema_of(body)).prompt}


async def input_tokens(api, req):
    """POST /v1/chat/completions/input_tokens: how many tokens a chat request's prompt takes."""
    body = body_of(req)
    prompt = ChatRequest(api, body, json_schema_of(body)).prompt
    return {"input_tokens": len(api.engine.model.tokenize(prompt, True, True)), "object": "response.input_tokens"}
