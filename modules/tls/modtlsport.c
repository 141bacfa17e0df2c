// tlsport: what the port gives MicroPython's tls module (extmod/modtls_mbedtls.c over mbedtls):
// the entropy it seeds its generator from (the kernel's: RDSEED, RDRAND or timer jitter), the
// memory it takes (counted, and capped: past the cap a new connection's handshake fails for want
// of memory, and the connections already open keep theirs), and a check, before serving, that a
// key belongs to its certificate (mbedtls' own mbedtls_pk_check_pair; the tls module has none).
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "py/runtime.h"
#include "py/objstr.h"
#include "kernel/kernel.h"

#include "mbedtls/ctr_drbg.h"
#include "mbedtls/entropy.h"
#include "mbedtls/error.h"
#include "mbedtls/pk.h"
#include "mbedtls/x509_crt.h"

// ------------------------------------------------------------------------------ mbedtls' memory
// Each block carries its size in a 16-byte header (keeping glibc's 16-byte alignment). Only the
// interpreter's thread runs mbedtls, so the counters need no lock.
#define HEADER 16

static size_t in_use, peak, refused, limit = SIZE_MAX;

void *cllm_tls_calloc(size_t n, size_t size) {
    if (size != 0 && n > (SIZE_MAX - HEADER) / size) {
        refused++;
        return NULL;
    }
    const size_t bytes = n * size;
    size_t *p = bytes > limit || in_use > limit - bytes ? NULL : calloc(1, bytes + HEADER);
    if (p == NULL) {
        refused++;
        return NULL;
    }
    p[0] = bytes;
    in_use += bytes;
    peak = in_use > peak ? in_use : peak;
    return (char *) p + HEADER;
}

void cllm_tls_free(void *q) {
    if (q != NULL) {
        size_t *p = (size_t *) ((char *) q - HEADER);
        in_use -= p[0];
        free(p);
    }
}

// ------------------------------------------------------------------------------- its entropy
int mbedtls_hardware_poll(void *data, unsigned char *output, size_t len, size_t *olen);
int mbedtls_hardware_poll(void *data, unsigned char *output, size_t len, size_t *olen) {
    (void) data;
    *olen = kernel_entropy(output, len);
    return 0;
}

// entropy() -> str: where the TLS generator's seed comes from ("RDSEED", "RDRAND" or "timer
// jitter and the RTC")
static mp_obj_t tlsport_entropy(void) {
    return mp_obj_new_str(kernel_entropy_name(), strlen(kernel_entropy_name()));
}
static MP_DEFINE_CONST_FUN_OBJ_0(tlsport_entropy_obj, tlsport_entropy);

// memory() -> dict: bytes mbedtls holds now (in_use) and at most so far (peak), the cap (limit,
// None for none) and the allocations refused for it (refused)
static mp_obj_t tlsport_memory(void) {
    mp_obj_t d = mp_obj_new_dict(4);
    mp_obj_dict_store(d, MP_OBJ_NEW_QSTR(MP_QSTR_in_use), mp_obj_new_int_from_uint(in_use));
    mp_obj_dict_store(d, MP_OBJ_NEW_QSTR(MP_QSTR_peak), mp_obj_new_int_from_uint(peak));
    mp_obj_dict_store(d, MP_OBJ_NEW_QSTR(MP_QSTR_limit), limit == SIZE_MAX ? mp_const_none : mp_obj_new_int_from_uint(limit));
    mp_obj_dict_store(d, MP_OBJ_NEW_QSTR(MP_QSTR_refused), mp_obj_new_int_from_uint(refused));
    return d;
}
static MP_DEFINE_CONST_FUN_OBJ_0(tlsport_memory_obj, tlsport_memory);

// set_limit(bytes or None): the cap on what mbedtls may hold at once
static mp_obj_t tlsport_set_limit(mp_obj_t bytes) {
    if (bytes == mp_const_none) {
        limit = SIZE_MAX;
    } else {
        const mp_int_t b = mp_obj_get_int(bytes);
        if (b < 0) {
            mp_raise_ValueError(MP_ERROR_TEXT("limit must be >= 0"));
        }
        limit = (size_t) b;
    }
    return mp_const_none;
}
static MP_DEFINE_CONST_FUN_OBJ_1(tlsport_set_limit_obj, tlsport_set_limit);

// ------------------------------------------------------------------------- key and certificate
static void raise_mbedtls(const char *what, int err) {
    char text[96];
    mbedtls_strerror(err, text, sizeof text);
    mp_raise_msg_varg(&mp_type_ValueError, MP_ERROR_TEXT("%s: %s (-0x%04x)"), what, text, (unsigned) -err);
}

// check(cert, key) -> str: parses a PEM or DER certificate chain and private key as the tls module
// will, and checks that the key is the first certificate's; returns what the key is ("EC 256
// bits", "RSA 2048 bits"). ValueError says what is wrong.
static mp_obj_t tlsport_check(mp_obj_t cert_in, mp_obj_t key_in) {
    size_t cert_len, key_len;
    const byte *cert = (const byte *) mp_obj_str_get_data(cert_in, &cert_len);
    const byte *key = (const byte *) mp_obj_str_get_data(key_in, &key_len);
    // with the NUL that ends MicroPython's bytes counted, as the tls module's load_cert_chain passes
    // them (mbedtls takes a buffer ending in NUL for PEM, and reads DER's own lengths)
    const size_t cert_n = cert_len + 1, key_n = key_len + 1;
    mbedtls_x509_crt crt;
    mbedtls_pk_context pk;
    mbedtls_entropy_context entropy;
    mbedtls_ctr_drbg_context drbg;
    mbedtls_x509_crt_init(&crt);
    mbedtls_pk_init(&pk);
    mbedtls_entropy_init(&entropy);
    mbedtls_ctr_drbg_init(&drbg);
    const char *what = "the random generator";
    int err = mbedtls_ctr_drbg_seed(&drbg, mbedtls_entropy_func, &entropy, NULL, 0);
    if (err == 0) {
        what = "the certificate";
        err = mbedtls_x509_crt_parse(&crt, cert, cert_n);
        if (err > 0) {      // some certificates of a chain did not parse
            err = MBEDTLS_ERR_X509_INVALID_FORMAT;
        }
    }
    if (err == 0) {
        what = "the key";
        err = mbedtls_pk_parse_key(&pk, key, key_n, NULL, 0, mbedtls_ctr_drbg_random, &drbg);
    }
    if (err == 0) {
        what = "the key and the certificate";
        err = mbedtls_pk_check_pair(&crt.pk, &pk, mbedtls_ctr_drbg_random, &drbg);
    }
    char desc[48];
    if (err == 0) {
        snprintf(desc, sizeof desc, "%s %u bits", mbedtls_pk_get_name(&pk), (unsigned) mbedtls_pk_get_bitlen(&pk));
    }
    mbedtls_ctr_drbg_free(&drbg);
    mbedtls_entropy_free(&entropy);
    mbedtls_pk_free(&pk);
    mbedtls_x509_crt_free(&crt);
    if (err != 0 && strcmp(what, "the key and the certificate") == 0) {
        mp_raise_ValueError(MP_ERROR_TEXT("the key is not the certificate's (it does not match its public key)"));
    }
    if (err != 0) {
        raise_mbedtls(what, err);
    }
    return mp_obj_new_str(desc, strlen(desc));
}
static MP_DEFINE_CONST_FUN_OBJ_2(tlsport_check_obj, tlsport_check);

static const mp_rom_map_elem_t tlsport_module_globals_table[] = {
    { MP_ROM_QSTR(MP_QSTR___name__), MP_ROM_QSTR(MP_QSTR_tlsport) },
    { MP_ROM_QSTR(MP_QSTR_entropy), MP_ROM_PTR(&tlsport_entropy_obj) },
    { MP_ROM_QSTR(MP_QSTR_memory), MP_ROM_PTR(&tlsport_memory_obj) },
    { MP_ROM_QSTR(MP_QSTR_set_limit), MP_ROM_PTR(&tlsport_set_limit_obj) },
    { MP_ROM_QSTR(MP_QSTR_check), MP_ROM_PTR(&tlsport_check_obj) },
};
static MP_DEFINE_CONST_DICT(tlsport_module_globals, tlsport_module_globals_table);

const mp_obj_module_t mp_module_tlsport = {
    .base = { &mp_type_module },
    .globals = (mp_obj_dict_t *) &tlsport_module_globals,
};

MP_REGISTER_MODULE(MP_QSTR_tlsport, mp_module_tlsport);
