// llm.rpc_start(port, threads): llama.cpp's own ggml RPC server (ggml/src/ggml-rpc, compiled into the
// kernel with port/patch-llama.py's edits) on the CPU backend, in a thread of its own, listening on
// 0.0.0.0:port through the kernel's sockets (kernel/sockets.c, served by lwIP in net/sockets.c). A
// host's `llama-server --rpc box:port,...` then keeps layers of its model here. One client at a time,
// as upstream; what a client sends that the server cannot take closes its connection. A C++
// exception out of the server (memory for a message, a graph) ends the connection the same way:
// the thread catches it and listens again. llm.rpc_info(): what it serves and how it has gone.
#include <atomic>
#include <cstdio>
#include <ctime>
#include <pthread.h>

#include "ggml-backend.h"
#include "ggml-rpc.h"
#include "llm_internal.h"

static struct {
    int port, threads;
    pthread_t thread;
    std::atomic<bool> running;
    std::atomic<int> restarts;          // times the server returned or threw and listened again
    char last_error[128];
} rpc;

static void *serve(void *) {
    char endpoint[32];
    snprintf(endpoint, sizeof endpoint, "0.0.0.0:%d", rpc.port);
    ggml_backend_dev_t cpu = ggml_backend_dev_by_type(GGML_BACKEND_DEVICE_TYPE_CPU);
    for (;;) {
        try {
            ggml_backend_rpc_start_server(endpoint, nullptr, (size_t) rpc.threads, 1, &cpu);
            snprintf(rpc.last_error, sizeof rpc.last_error, "the server returned (see the console)");
        } catch (const std::exception &e) {
            snprintf(rpc.last_error, sizeof rpc.last_error, "%s", e.what());
        } catch (...) {
            snprintf(rpc.last_error, sizeof rpc.last_error, "unknown C++ exception");
        }
        fprintf(stderr, "llm: rpc server on port %d: %s; listening again in 1 s\n", rpc.port, rpc.last_error);
        rpc.restarts++;
        struct timespec pause = { 1, 0 };
        nanosleep(&pause, nullptr);
    }
    return nullptr;
}

extern "C" mp_obj_t llm_rpc_start(mp_obj_t port_in, mp_obj_t threads_in) {
    mp_int_t port = mp_obj_get_int(port_in), threads = mp_obj_get_int(threads_in);
    if (port < 1 || port > 65535) {
        mp_raise_ValueError(MP_ERROR_TEXT("port must be 1..65535"));
    }
    if (threads < 1 || threads > 64) {
        mp_raise_ValueError(MP_ERROR_TEXT("threads must be 1..64"));
    }
    if (rpc.running) {
        mp_raise_msg(&mp_type_RuntimeError, MP_ERROR_TEXT("the RPC server is running already"));
    }
    rpc.port = (int) port;
    rpc.threads = (int) threads;
    int err = pthread_create(&rpc.thread, nullptr, serve, nullptr);
    if (err) {
        mp_raise_OSError(err);          // EAGAIN: every CPU has its thread (a model's decoder?)
    }
    rpc.running = true;
    return mp_const_none;
}

extern "C" mp_obj_t llm_rpc_info(void) {
    mp_obj_t out = mp_obj_new_dict(5);
    mp_obj_dict_store(out, MP_OBJ_NEW_QSTR(MP_QSTR_running), mp_obj_new_bool(rpc.running));
    mp_obj_dict_store(out, MP_OBJ_NEW_QSTR(MP_QSTR_port), mp_obj_new_int(rpc.running ? rpc.port : 0));
    mp_obj_dict_store(out, MP_OBJ_NEW_QSTR(MP_QSTR_threads), mp_obj_new_int(rpc.threads));
    mp_obj_dict_store(out, MP_OBJ_NEW_QSTR(MP_QSTR_restarts), mp_obj_new_int(rpc.restarts));
    mp_obj_dict_store(out, MP_OBJ_NEW_QSTR(MP_QSTR_last_error), mp_obj_new_str(rpc.last_error, strlen(rpc.last_error)));
    return out;
}
