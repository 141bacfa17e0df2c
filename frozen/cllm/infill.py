"""POST /infill, fill-in-the-middle as llama-server answers it: its checks of the request and its
format_prompt_infill (tools/server/server-common.cpp, the repo-level FIM layout of
arXiv:2409.12186) over the vocabulary's own FIM tokens, then the native completion's answer."""
from cllm.fields import body_of, field
from cllm.http import ApiError, bad_request

CHUNK_SEPARATOR = "\n\n--- snippet ---\n\n"      # between extra chunks when the vocabulary has no FIM_SEP


def fim_prompt(model, meta, prefix, suffix, extra, prompt, n_batch, n_predict, n_ctx, spm_infill=False):
    """The prompt's tokens: [FIM_REP]myproject [FIM_SEP]file chunk ... [FIM_SEP]filename
    [FIM_PRE]prefix[FIM_SUF]suffix[FIM_MID]prompt (or suffix first with spm_infill), cut to fit as
    llama-server cuts it: prefix:suffix 3:1 of a batch, the extra chunks in what the context leaves."""
    def tokens(text):
        return model.tokenize(text, False, False)
    extra_tokens = []
    if meta["fim_rep"] is not None:
        extra_tokens += [meta["fim_rep"]] + tokens("myproject\n")
    for chunk in extra:
        if meta["fim_sep"] is not None:
            extra_tokens += [meta["fim_sep"]] + tokens(chunk.get("filename", "tmp") + "\n")
        else:
            extra_tokens += tokens(CHUNK_SEPARATOR)
        extra_tokens += tokens(chunk["text"])
    if meta["fim_sep"] is not None:
        extra_tokens += [meta["fim_sep"]] + tokens("filename\n")
    prefix, suffix = tokens(prefix), tokens(suffix)
    n_prefix = min(len(prefix), 3 * (n_batch // 4))
    n_suffix = min(len(suffix), max(0, n_batch // 4 - (2 + len(prompt))))
    n_extra = min(max(0, n_ctx - n_batch - 2 * n_predict), len(extra_tokens))
    prefix = [meta["fim_pre"]] + prefix[len(prefix) - n_prefix:] + prompt
    suffix = [meta["fim_suf"]] + suffix[:n_suffix]
    first, last = (suffix, prefix) if spm_infill else (prefix, suffix)
    if meta["add_bos"]:
        first = [meta["bos"]] + first
    return extra_tokens[len(extra_tokens) - n_extra:] + first + last + [meta["fim_mid"]]


async def infill(api, req):
    engine = api.engine
    meta = engine.meta
    missing = "".join("{} token is missing. ".format(what) for what, key in
                      (("prefix", "fim_pre"), ("suffix", "fim_suf"), ("middle", "fim_mid")) if meta[key] is None)
    if missing:
        raise ApiError(501, "Infill is not supported by this model: " + missing, "not_supported_error")
    body = body_of(req)
    prompt = body.get("prompt", "")
    if not isinstance(prompt, str):
        raise bad_request('"prompt" must be a string')
    for name in ("input_prefix", "input_suffix"):
        if name not in body:
            raise bad_request('"{}" is required'.format(name))
        field(body, name, str, "")
    extra = field(body, "input_extra", list, [])
    for chunk in extra:
        if not isinstance(chunk, dict) or not isinstance(chunk.get("text"), str):
            raise bad_request('extra_context chunk must contain a "text" field with a string value')
        if not isinstance(chunk.get("filename", ""), str):
            raise bad_request('extra_context chunk\'s "filename" field must be a string')
    tokens = fim_prompt(engine.model, meta, body["input_prefix"], body["input_suffix"], extra,
                        engine.model.tokenize(prompt, False, True), meta["n_batch"], api.settings.n_predict,
                        engine.n_ctx_slot, bool(api.settings.spm_infill))
    return await api.complete(body, [tokens])
