"""Embeddings and reranking as llama-server answers them with --embeddings (here without a flag:
completions go on beside them): POST /embedding and /embeddings (its own shape), /v1/embeddings
(OpenAI's), /rerank (Jina's shape, or TEI's when the body has "texts"). The vectors are
llama.cpp's (llm.Model.embed_start in a context of their own, pooled as the model or pooling=
says, normalised by common_embd_normalize); the engine reads them between generation steps."""
import array
import binascii

from cllm.engine import Busy, EmbedTask
from cllm.fields import body_of, checked_ids, field, is_token_ids
from cllm.http import ApiError, bad_request


def tokens_of(model, meta, entry, add_special=True):
    """One input as llama-server's tokenize_input_subprompt takes it: text or token ids."""
    if isinstance(entry, str):
        tokens = model.tokenize(entry, add_special, True)
    elif is_token_ids(entry):
        tokens = checked_ids(entry, meta["n_vocab"], "input")
    else:
        raise bad_request('"input" must be a string, an array of token ids, or an array of those')
    if not tokens:
        raise bad_request("Input content cannot be empty")
    if len(tokens) > meta["n_batch"]:       # one input is pooled whole, in one batch
        raise bad_request("input ({} tokens) is too large to process. increase the physical batch size "
                          "(current batch size: {})".format(len(tokens), meta["n_batch"]))
    return tokens


async def computed(engine, inputs, normalize):
    task = engine.submit_embed(EmbedTask(inputs, normalize))
    try:
        return await task.result()
    except ValueError as e:
        raise bad_request(str(e))
    except ApiError:
        raise
    except Exception as e:
        raise ApiError(500, str(e), "server_error")
    finally:
        task.cancel()           # the client went away while it waited: the engine skips it


def base64_floats(values):
    return binascii.b2a_base64(bytes(array.array("f", values))).decode().strip()


async def embeddings(api, req, oai):
    engine, meta = api.engine, api.engine.meta
    if oai and meta["pooling"] == "none":
        raise bad_request("Pooling type 'none' is not OAI compatible. Please use a different pooling type")
    if meta["pooling"] == "rank":       # (llama-server answers with the scores' memory read as a vector)
        raise bad_request("Pooling type 'rank' gives relevance scores, not embeddings: use /rerank")
    body = body_of(req)
    if "input" in body:
        prompt = body["input"]
    elif "content" in body:
        prompt, oai = body["content"], False        # "content" is not OpenAI's: the native answer
    else:
        raise bad_request('"input" or "content" must be provided')
    use_base64 = False
    if "encoding_format" in body:
        fmt = body["encoding_format"]
        if fmt not in ("float", "base64"):
            raise bad_request("The format to return the embeddings in. Can be either float or base64")
        use_base64 = fmt == "base64"
    normalize = field(body, "embd_normalize", int, 2)
    if isinstance(prompt, list) and not prompt:
        raise bad_request('"input" must not be empty')
    several = isinstance(prompt, list) and not is_token_ids(prompt)
    inputs = [tokens_of(engine.model, meta, p) for p in (prompt if several else [prompt])]
    try:
        results = await computed(engine, inputs, normalize)
    except Busy:
        raise ApiError(503, "no slot available, try again later", "unavailable_error")
    if not oai:         # each input's rows: one pooled vector, or a vector per token (pooling none)
        return [{"index": i, "embedding": r.tolist() if meta["pooling"] == "none" else [r.tolist()]}
                for i, r in enumerate(results)]
    data = []
    for i, r in enumerate(results):
        item = {"embedding": base64_floats(r) if use_base64 else r.tolist(), "index": i, "object": "embedding"}
        if use_base64:
            item["encoding_format"] = "base64"
        data.append(item)
    n = sum(len(t) for t in inputs)
    return {"model": body.get("model", api.settings.alias), "object": "list",
            "usage": {"prompt_tokens": n, "total_tokens": n}, "data": data}


def rerank_tokens(model, meta, query, document):
    """llama-server's format_prompt_rerank: the model's "rerank" template, else query and document
    joined by the vocabulary's EOS/SEP as it asks for them."""
    template = meta["chat_template_rerank"]
    if template:
        return model.tokenize(template.replace("{query}", query).replace("{document}", document), False, True)
    eos = meta["eos"] if meta["eos"] is not None else meta["sep"]
    tokens = [meta["bos"]] if meta["add_bos"] else []
    tokens += model.tokenize(query, False, False)
    tokens += [eos] if meta["add_eos"] else []
    tokens += [meta["sep"]] if meta["add_sep"] else []
    tokens += model.tokenize(document, False, False)
    tokens += [eos] if meta["add_eos"] else []
    return tokens


async def rerank(api, req):
    engine, meta = api.engine, api.engine.meta
    if meta["pooling"] != "rank":
        raise ApiError(501, "This server does not support reranking. Boot it with a reranking model "
                       "(one with a rank head, pooling=rank)", "not_supported_error")
    body = body_of(req)
    tei = "texts" in body
    query = body.get("query")
    if query is None:
        raise bad_request('"query" must be provided')
    if not isinstance(query, str):
        raise bad_request('"query" must be a string')
    documents = body.get("documents", body.get("texts", []))
    if not isinstance(documents, list) or not documents or not all(isinstance(d, str) for d in documents):
        raise bad_request('"documents" must be a non-empty string array')
    top_n = field(body, "top_n", int, len(documents))
    inputs = []
    for d in documents:
        tokens = rerank_tokens(engine.model, meta, query, d)
        inputs.append(tokens_of(engine.model, meta, tokens))
    try:
        results = await computed(engine, inputs, -1)
    except Busy:
        raise ApiError(503, "no slot available, try again later", "unavailable_error")
    label = "score" if tei else "relevance_score"
    ranked = []
    for i, r in enumerate(results):
        item = {"index": i, label: r[0]}
        if tei and body.get("return_text") is True:
            item["text"] = documents[i]
        ranked.append(item)
    ranked.sort(key=lambda item: -item[label])      # stable: equal scores keep the documents' order
    ranked = ranked[:max(0, top_n)]
    if tei:
        return ranked
    n = sum(len(t) for t in inputs)
    return {"model": body.get("model", api.settings.alias), "object": "list",
            "usage": {"prompt_tokens": n, "total_tokens": n}, "results": ranked}
