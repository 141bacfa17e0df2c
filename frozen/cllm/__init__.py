# cllm: the HTTP server (microdot), its llama-server-compatible API and the generation engine.
