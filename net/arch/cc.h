// lwIP's platform header: types come from stdint and the byte order from glibc (lwIP's defaults).
#ifndef CLLM_LWIP_ARCH_CC_H
#define CLLM_LWIP_ARCH_CC_H

#include <endian.h>     // glibc's BYTE_ORDER and LITTLE_ENDIAN, which lwIP uses as they are
#include <stdio.h>
#include <stdlib.h>

// A failed LWIP_ASSERT is reported on the console (the first few) and counted; lwIP carries on,
// as it does on every MicroPython port (whose cc.h makes assertions no-ops).
void net_assert_failed(const char *message, const char *file, int line);
#define LWIP_PLATFORM_DIAG(x)       do { printf x; } while (0)
#define LWIP_PLATFORM_ASSERT(x)     net_assert_failed(x, __FILE__, __LINE__)
// LWIP_ERROR marks argument checks lwIP handles itself (extmod/modlwip.c trips "invalid socket
// state for err callback" when it closes a listening socket): run the handler, say nothing.
#define LWIP_ERROR(message, expression, handler) do { if (!(expression)) { handler; } } while (0)

#endif
