#pragma once
#include <errno.h>
#include "py/mpconfig.h"

void mp_hal_set_interrupt_char(int c);

// extmod/vfs_posix*.c wrap each libc file call in this. A console read that Ctrl-C cut
// short fails with EINTR: run the pending KeyboardInterrupt, as the unix port does.
#define MP_HAL_RETRY_SYSCALL(ret, syscall, raise) { \
        for (;;) { \
            ret = syscall; \
            if (ret == -1) { \
                int err = errno; \
                if (err == EINTR) { \
                    mp_handle_pending(true); \
                    continue; \
                } \
                raise; \
            } \
            break; \
        } \
}
