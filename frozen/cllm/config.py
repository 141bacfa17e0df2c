"""Settings from the kernel command line: `key=value` words, as llama-server takes its flags.

    model=/name.gguf  the boot module to serve (default: the first *.gguf module)
    n_ctx=2048        KV cache cells, shared by the slots; each slot gets n_ctx // parallel
    parallel=2        slots: requests generated at the same time
    flash_attn=auto   llama.cpp's flash attention: on, off or auto (llama-server's --flash-attn)
    pooling=          how /embeddings pools a text's token embeddings: none, mean, cls, last or rank
                      (default: the model's; llama-server's --pooling)
    n_predict=-1      default generation limit (-1: until end of generation or the slot is full)
    queue=8           requests that may wait for a slot; beyond that 503
    api_key=...       require `Authorization: Bearer ...` on every route but /health
    alias=...         model name in the API (default: the model file's name)
    port=80           TCP port to listen on (plain HTTP)
    tls_cert=/c.pem   serve HTTPS with this certificate (chain) and tls_key's key, boot modules (PEM or DER)
    tls_key=/k.pem
    tls_port=443      TCP port for HTTPS
    https_port=0      the port clients reach HTTPS on, for http=redirect's Location (0: tls_port)
    http=on           plain HTTP beside HTTPS: on (but a request carrying an API key is refused), redirect
                      (308 to https; /health stays plain) or off (no plain port)
    tls_conns=8       TLS connections open at once; past it new ones are closed at once
    max_body=262144   largest request body in bytes (413 beyond)
    timeout=60        seconds a client has to send its whole request (408 beyond; llama-server's --timeout)
    max_headers=64    header lines a request may carry (431 beyond)
    chat_template=    the chat template in place of the model's: a boot module holding a Jinja template
                      (/name.jinja) or "chatml" (llama-server's --chat-template-file / --chat-template)
    reasoning_format=auto  where a thinking model's reasoning goes: auto or deepseek (reasoning_content),
                      deepseek-legacy (left in content while streaming), none (in content)
    reasoning=auto    on, off (enable_thinking false for every request) or auto (llama-server's --reasoning)
    reasoning_budget=-1  thinking tokens allowed before the end tag is forced (-1: no limit)
    prefill_assistant=1  a last assistant message is continued (0: llama-server's --no-prefill-assistant)
    verbose=0         1: responses carry llama-server's __verbose debug field
    spm_infill=0      1: /infill puts the suffix before the prefix (llama-server's --spm-infill)
    context_shift=0   1: a slot that fills drops the older half of what follows n_keep and goes on
                      (llama-server's --context-shift); 0: it stops there
    spec=             speculative decoding from n-grams (llama-server's --spec-type): ngram (ngram-simple),
                      ngram-simple, ngram-map-k, ngram-map-k4v or ngram-mod; default off
    spec_size_n=12    tokens that must repeat for a draft (--spec-ngram-simple-size-n)
    spec_size_m=48    the longest draft (--spec-ngram-simple-size-m)
    slot_save=16777216  bytes of the RAM file system /slots that POST /slots/N?action=save writes (0: off)
    cache_prompt=1    reuse a slot's KV cache for the start a prompt shares with its last one (0: llama-server's
                      --no-cache-prompt; a request's own cache_prompt wins)
    dashboard=0       leave the VGA screen to the console (default: a status panel on its top rows)
    serve=0           do not start the server even with a model and a NIC
    rpc=0             be a llama.cpp RPC worker instead: serve ggml's RPC protocol on this TCP port (50052
                      is llama.cpp's) for a host's `llama-server --rpc box:50052,...`; no model is loaded
    rpc_threads=0     threads for the RPC worker's computations (0: one per CPU)
"""
import kernel

DEFAULTS = {
    "model": None,
    "n_ctx": 2048,
    "parallel": 2,
    "flash_attn": "auto",
    "pooling": "",
    "n_predict": -1,
    "queue": 8,
    "api_key": None,
    "alias": None,
    "port": 80,
    "tls_cert": None,
    "tls_key": None,
    "tls_port": 443,
    "https_port": 0,
    "http": "on",
    "tls_conns": 8,
    "max_body": 256 * 1024,
    "timeout": 60,
    "max_headers": 64,
    "chat_template": "",
    "reasoning_format": "auto",
    "reasoning": "auto",
    "reasoning_budget": -1,
    "prefill_assistant": 1,
    "verbose": 0,
    "spm_infill": 0,
    "spec": "",
    "spec_size_n": 12,
    "spec_size_m": 48,
    "slot_save": 16 * 1024 * 1024,
    "context_shift": 0,
    "cache_prompt": 1,
    "dashboard": 1,
    "serve": 1,
    "rpc": 0,
    "rpc_threads": 0,
}

CHOICES = {"http": ("on", "redirect", "off"), "pooling": ("none", "mean", "cls", "last", "rank"),
           "spec": ("ngram", "ngram-simple", "ngram-map-k", "ngram-map-k4v", "ngram-mod"), "reasoning": ("on", "off", "auto"),
           "reasoning_format": ("auto", "deepseek", "deepseek-legacy", "none")}


class Settings:
    def __init__(self, values):
        for key, value in values.items():
            setattr(self, key, value)

    def __repr__(self):
        shown = {key: getattr(self, key) for key in DEFAULTS}
        if shown["api_key"]:
            shown["api_key"] = "****"
        return "Settings({})".format(shown)


def first_gguf_module():
    for path, size, address in kernel.modules():
        if path.endswith(".gguf"):
            return path
    return None


def parse(cmdline):
    """Settings from a command line; unknown words are left to whoever else reads it."""
    values = dict(DEFAULTS)
    for word in cmdline.split():
        key, eq, value = word.partition("=")
        if not eq or key not in DEFAULTS:
            continue
        if isinstance(DEFAULTS[key], int):
            try:
                value = int(value)
            except ValueError:
                print("cllm: ignoring {} (not a number)".format(word))
                continue
        if key in CHOICES and value not in CHOICES[key]:
            print("cllm: ignoring {} (one of {})".format(word, ", ".join(CHOICES[key])))
            continue
        values[key] = value
    if values["model"] is None:
        values["model"] = first_gguf_module()
    if values["alias"] is None and values["model"]:
        values["alias"] = values["model"].rsplit("/", 1)[-1]
    return Settings(values)


def load():
    return parse(kernel.cmdline())
