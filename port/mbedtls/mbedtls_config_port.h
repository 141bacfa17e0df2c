// mbedtls' configuration for the cllm port (extmod.mk names it as "mbedtls/mbedtls_config_port.h"):
// MicroPython's common set (TLS 1.2, ECDSA and RSA keys, AES-GCM), TLS 1.3 and PEM files, with the kernel's entropy and a
// counted, capped allocator (modules/tls/modtlsport.c) instead of the C library's.
#ifndef CLLM_MBEDTLS_CONFIG_PORT_H
#define CLLM_MBEDTLS_CONFIG_PORT_H

#include <stddef.h>

#define MBEDTLS_PLATFORM_MEMORY
#define MBEDTLS_PLATFORM_STD_CALLOC cllm_tls_calloc
#define MBEDTLS_PLATFORM_STD_FREE   cllm_tls_free
void *cllm_tls_calloc(size_t n, size_t size);
void cllm_tls_free(void *p);

// no /dev/urandom: mbedtls_hardware_poll (modtlsport.c) gives the kernel's entropy
#define MBEDTLS_ENTROPY_HARDWARE_ALT
#define MBEDTLS_NO_PLATFORM_ENTROPY

#include "extmod/mbedtls/mbedtls_config_common.h"

// a server's: no DTLS
#undef MBEDTLS_SSL_PROTO_DTLS

// certificates and keys as openssl and certbot write them (PEM), not only DER
#define MBEDTLS_BASE64_C
#define MBEDTLS_PEM_PARSE_C

// a handshake's time is bignum arithmetic (make bench-tls): the NIST curves' own modular reduction
// instead of the generic one (P-256: every ECDHE and ECDSA), and bignum's i386 assembly
#define MBEDTLS_ECP_NIST_OPTIM
#define MBEDTLS_HAVE_ASM

// TLS 1.3 beside 1.2 (mbedtls builds 1.3 on its PSA crypto layer; no key storage)
#define MBEDTLS_PSA_CRYPTO_C
#define MBEDTLS_SSL_PROTO_TLS1_3
#define MBEDTLS_SSL_TLS1_3_KEY_EXCHANGE_MODE_EPHEMERAL_ENABLED
#define MBEDTLS_SSL_TLS1_3_COMPATIBILITY_MODE
#define MBEDTLS_SSL_KEEP_PEER_CERTIFICATE
#define MBEDTLS_HKDF_C
#define MBEDTLS_PKCS1_V21                // RSA-PSS: TLS 1.3 signs with it
#define MBEDTLS_X509_RSASSA_PSS_SUPPORT  // (which puts it in the signature algorithms offered)
#define MBEDTLS_CHACHA20_C
#define MBEDTLS_CHACHAPOLY_C
#define MBEDTLS_POLY1305_C

#endif
