"""Tiny GGUF models for fast tests: a few layers of random weights behind a real vocabulary
(one of the ggml-vocab-*.gguf files llama.cpp ships in the pinned sdist)."""
import os

import gguf
import numpy as np

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
VOCABS = os.path.join(ROOT, "build", "deps", "llama-cpp-python", "vendor", "llama.cpp", "models")
CHATML = ("{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + "
          "'<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")


TEMPLATES = os.path.join(VOCABS, "templates")


def template(name):
    """A real model's chat template as llama.cpp ships it for its own tests (models/templates)."""
    with open(os.path.join(TEMPLATES, name + ".jinja")) as f:
        return f.read()


def vocab_path(name):
    return os.path.join(VOCABS, f"ggml-vocab-{name}.gguf")


def copy_tokenizer(writer, vocab_file, extra_tokens=()):
    reader = gguf.GGUFReader(vocab_file)
    f = reader.fields
    writer.add_tokenizer_model(f["tokenizer.ggml.model"].contents())
    if "tokenizer.ggml.pre" in f:
        writer.add_tokenizer_pre(f["tokenizer.ggml.pre"].contents())
    tokens = f["tokenizer.ggml.tokens"].contents() + list(extra_tokens)
    writer.add_token_list(tokens)
    if "tokenizer.ggml.scores" in f:
        writer.add_token_scores(f["tokenizer.ggml.scores"].contents() + [0.0] * len(extra_tokens))
    # added tokens as a chat template's special words are in real vocabularies: control tokens
    writer.add_token_types(f["tokenizer.ggml.token_type"].contents() + [gguf.TokenType.CONTROL] * len(extra_tokens))
    if "tokenizer.ggml.merges" in f:
        writer.add_token_merges(f["tokenizer.ggml.merges"].contents())
    for key, add in (("bos", writer.add_bos_token_id), ("eos", writer.add_eos_token_id), ("unknown", writer.add_unk_token_id)):
        if f"tokenizer.ggml.{key}_token_id" in f:
            add(f[f"tokenizer.ggml.{key}_token_id"].contents())
    if "tokenizer.ggml.add_bos_token" in f:
        writer.add_add_bos_token(f["tokenizer.ggml.add_bos_token"].contents())
    return len(tokens)


def make_tiny_model(path, vocab="llama-spm", arch="llama", n_embd=64, n_layer=2, n_head=4, n_head_kv=2,
                    n_ff=128, n_ctx_train=512, seed=1234, chat_template=CHATML, extra_tokens=(), rerank=False):
    """Write a llama-architecture GGUF with random f32 weights; returns path. extra_tokens: control
    tokens appended to the vocabulary (a chat template's <|im_end|>, <tool_call>, ...). rerank: a
    Qwen3 reranker instead (as llama.cpp converts them): rank pooling of the last token through a
    two-label classifier head, whose softmax's first value is the score."""
    if rerank:
        arch = "qwen3"
    writer = gguf.GGUFWriter(path, arch)
    writer.add_name(f"tiny-{arch}-{vocab}")
    writer.add_context_length(n_ctx_train)
    writer.add_embedding_length(n_embd)
    writer.add_block_count(n_layer)
    writer.add_feed_forward_length(n_ff)
    writer.add_head_count(n_head)
    writer.add_head_count_kv(n_head_kv)
    writer.add_rope_dimension_count(n_embd // n_head)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    if rerank:
        writer.add_pooling_type(gguf.PoolingType.RANK)
        writer.add_classifier_output_labels(["yes", "no"])
    if chat_template:
        writer.add_chat_template(chat_template)
    n_vocab = copy_tokenizer(writer, vocab_path(vocab), extra_tokens)
    rng = np.random.default_rng(seed)
    n_kv = n_embd // n_head * n_head_kv

    def w(*shape, scale=0.08):
        return (rng.standard_normal(shape) * scale).astype(np.float32)

    writer.add_tensor("token_embd.weight", w(n_vocab, n_embd, scale=0.5))
    writer.add_tensor("output_norm.weight", np.ones(n_embd, dtype=np.float32))
    writer.add_tensor("output.weight", w(n_vocab, n_embd, scale=0.3))
    if rerank:
        writer.add_tensor("cls.output.weight", w(2, n_embd, scale=0.5))
    for i in range(n_layer):
        writer.add_tensor(f"blk.{i}.attn_norm.weight", np.ones(n_embd, dtype=np.float32))
        writer.add_tensor(f"blk.{i}.attn_q.weight", w(n_embd, n_embd))
        writer.add_tensor(f"blk.{i}.attn_k.weight", w(n_kv, n_embd))
        writer.add_tensor(f"blk.{i}.attn_v.weight", w(n_kv, n_embd))
        writer.add_tensor(f"blk.{i}.attn_output.weight", w(n_embd, n_embd))
        if rerank:
            writer.add_tensor(f"blk.{i}.attn_q_norm.weight", np.ones(n_embd // n_head, dtype=np.float32))
            writer.add_tensor(f"blk.{i}.attn_k_norm.weight", np.ones(n_embd // n_head, dtype=np.float32))
        writer.add_tensor(f"blk.{i}.ffn_norm.weight", np.ones(n_embd, dtype=np.float32))
        writer.add_tensor(f"blk.{i}.ffn_gate.weight", w(n_ff, n_embd))
        writer.add_tensor(f"blk.{i}.ffn_up.weight", w(n_ff, n_embd))
        writer.add_tensor(f"blk.{i}.ffn_down.weight", w(n_embd, n_ff))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path
