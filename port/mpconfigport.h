// MicroPython configuration for cllm: bare-metal i386, static glibc underneath.
#include <stdint.h>
#include <alloca.h>

#define MICROPY_CONFIG_ROM_LEVEL            (MICROPY_CONFIG_ROM_LEVEL_EXTRA_FEATURES)

// Objects, numbers, code generation
#define MICROPY_OBJ_REPR                    (MICROPY_OBJ_REPR_A)
#define MICROPY_FLOAT_IMPL                  (MICROPY_FLOAT_IMPL_DOUBLE)
#define MICROPY_LONGINT_IMPL                (MICROPY_LONGINT_IMPL_MPZ)
#define MICROPY_EMIT_X86                    (1)     // @native and @viper
#define MICROPY_PERSISTENT_CODE_LOAD        (1)     // frozen .mpy with native code
#define MICROPY_ENABLE_GC                   (1)
#define MICROPY_ENABLE_FINALISER            (1)
#define MICROPY_ENABLE_EMERGENCY_EXCEPTION_BUF (1)
#define MICROPY_STACK_CHECK                 (1)
#define MICROPY_MALLOC_USES_ALLOCATED_SIZE  (1)
#define MICROPY_MEM_STATS                   (1)
#define MICROPY_WARNINGS                    (1)
#define MICROPY_USE_INTERNAL_PRINTF         (0)     // glibc's printf is there
#define MICROPY_USE_INTERNAL_ERRNO          (0)
#define MICROPY_EPOCH_IS_1970               (1)

// REPL on the serial console
#define MICROPY_HELPER_REPL                 (1)
#define MICROPY_REPL_EVENT_DRIVEN           (1)     // a byte at a time: port/repl.c
#define MICROPY_REPL_AUTO_INDENT            (1)
#define MICROPY_REPL_EMACS_KEYS             (1)
#define MICROPY_READLINE_HISTORY_SIZE       (50)
#define MICROPY_KBD_EXCEPTION               (1)

// Modules
#define MICROPY_PY_SYS_PLATFORM             "cllm"
#define MICROPY_HW_BOARD_NAME               "cllm"
#define MICROPY_HW_MCU_NAME                 "i386"
#define MICROPY_PY_TIME                     (1)
#define MICROPY_PY_TIME_TIME_TIME_NS        (1)
#define MICROPY_PY_TIME_GMTIME_LOCALTIME_MKTIME (1)
#define MICROPY_PY_TIME_INCLUDEFILE         "port/modtime_port.c"
#define MICROPY_PY_OS                       (1)
#define MICROPY_PY_OS_UNAME                 (1)
#define MICROPY_PY_SELECT                   (1)
#define MICROPY_PY_ASYNCIO                  (1)
#define MICROPY_PY_HASHLIB                  (1)
#define MICROPY_PY_RANDOM_SEED_INIT_FUNC    ((uint32_t)kernel_random())
#define MICROPY_PY_MACHINE                  (0)

// Files: the boot modules, through the Linux system calls glibc makes to our shim
#define MICROPY_VFS                         (1)
#define MICROPY_VFS_POSIX                   (1)
#define MICROPY_READER_VFS                  (1)

// Waiting: sleep until the next interrupt (the PIT ticks every millisecond), unless the network
// has just received something (net/net.h).
#define MICROPY_INTERNAL_WFE(TIMEOUT_MS)    net_idle()

// Networking: lwIP (MICROPY_PY_LWIP=1, set by port.mk) is the socket module; network.LAN is the
// e1000. The NIC's rings and lwIP's timers are polled whenever MicroPython handles events.
#define MICROPY_PY_NETWORK                  (1)
#define MICROPY_PY_NETWORK_HOSTNAME_DEFAULT "cllm"
#define MICROPY_PORT_NETWORK_INTERFACES     { MP_ROM_QSTR(MP_QSTR_LAN), MP_ROM_PTR(&network_lan_type) },
#define MICROPY_INTERNAL_EVENT_HOOK         net_poll()
extern const struct _mp_obj_type_t network_lan_type;
void net_poll(void);
void net_idle(void);

// The scheduler also takes work from interrupt handlers (net/net.c): its queue is guarded
// by turning interrupts off (one CPU runs MicroPython and takes every device interrupt).
#define MICROPY_SCHEDULER_STATIC_NODES      (1)
#define MICROPY_BEGIN_ATOMIC_SECTION()      mp_hal_begin_atomic_section()
#define MICROPY_END_ATOMIC_SECTION(state)   mp_hal_end_atomic_section(state)
unsigned int mp_hal_begin_atomic_section(void);
void mp_hal_end_atomic_section(unsigned int state);

#define MP_SSIZE_MAX                        (0x7fffffff)
typedef int32_t mp_int_t;       // must be pointer size
typedef uint32_t mp_uint_t;
typedef long mp_off_t;

#define MP_STATE_PORT MP_STATE_VM

#include "kernel/kernel.h"
