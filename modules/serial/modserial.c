// serial: the PC's 16550 UARTs in the style of machine.UART. UART(1) is COM1, the console the
// REPL reads too (drivers/console.c); UART(2) is COM2 with its own receive ring
// (drivers/uart.c). Both are streams that asyncio can poll.
#include "py/runtime.h"
#include "py/stream.h"
#include "py/mperrno.h"
#include "py/mphal.h"
#include "drivers/console.h"
#include "drivers/ns16550.h"
#include "drivers/uart.h"

#define DEFAULT_BAUD 115200

typedef struct _serial_uart_obj_t {
    mp_obj_base_t base;
    uint8_t id;
    uint32_t baudrate;
    uint32_t timeout_ms;    // how long read waits for its first byte
} serial_uart_obj_t;

extern const mp_obj_type_t serial_uart_type;

static serial_uart_obj_t uarts[2] = {
    { { &serial_uart_type }, 1, DEFAULT_BAUD, 0 },
    { { &serial_uart_type }, 2, DEFAULT_BAUD, 0 },
};

static size_t rx_available(serial_uart_obj_t *self) {
    return self->id == 1 ? console_rx_available() : uart_rx_available(UART_COM2);
}

static size_t rx_read(serial_uart_obj_t *self, uint8_t *buf, size_t n) {
    if (self->id == 2) {
        return uart_read(UART_COM2, buf, n);
    }
    size_t i = 0;
    int c;
    while (i < n && (c = console_read_byte()) >= 0) {
        buf[i++] = (uint8_t)c;
    }
    return i;
}

static void set_baudrate(serial_uart_obj_t *self, mp_int_t baud) {
    if (baud < 2 || baud > 115200 || 115200 % baud) {
        mp_raise_ValueError(MP_ERROR_TEXT("baudrate must divide 115200"));
    }
    int r;
    if (self->id == 1) {
        r = serial_init(COM1, baud);
        serial_enable_rx_irq(COM1);     // serial_init turned the console's interrupt off
    } else {
        r = uart_open(UART_COM2, baud);
    }
    if (r != 0) {
        mp_raise_OSError(MP_ENODEV);
    }
    self->baudrate = baud;
}

// init(baudrate=115200, timeout=0): set the line speed and how many ms read waits for data
static mp_obj_t serial_uart_init_helper(serial_uart_obj_t *self, size_t n_args, const mp_obj_t *pos_args, mp_map_t *kw_args) {
    enum { ARG_baudrate, ARG_timeout };
    static const mp_arg_t allowed_args[] = {
        { MP_QSTR_baudrate, MP_ARG_INT, {.u_int = -1} },
        { MP_QSTR_timeout, MP_ARG_KW_ONLY | MP_ARG_INT, {.u_int = -1} },
    };
    mp_arg_val_t args[MP_ARRAY_SIZE(allowed_args)];
    mp_arg_parse_all(n_args, pos_args, kw_args, MP_ARRAY_SIZE(allowed_args), allowed_args, args);
    if (args[ARG_baudrate].u_int >= 0) {
        set_baudrate(self, args[ARG_baudrate].u_int);
    }
    if (args[ARG_timeout].u_int >= 0) {
        self->timeout_ms = args[ARG_timeout].u_int;
    }
    return mp_const_none;
}

static mp_obj_t serial_uart_init(size_t n_args, const mp_obj_t *args, mp_map_t *kw_args) {
    return serial_uart_init_helper(MP_OBJ_TO_PTR(args[0]), n_args - 1, args + 1, kw_args);
}
static MP_DEFINE_CONST_FUN_OBJ_KW(serial_uart_init_obj, 1, serial_uart_init);

// UART(id, baudrate=115200, timeout=0): id 1 is COM1 (the console), 2 is COM2
static mp_obj_t serial_uart_make_new(const mp_obj_type_t *type, size_t n_args, size_t n_kw, const mp_obj_t *all_args) {
    mp_arg_check_num(n_args, n_kw, 1, MP_OBJ_FUN_ARGS_MAX, true);
    mp_int_t id = mp_obj_get_int(all_args[0]);
    if (id != 1 && id != 2) {
        mp_raise_msg_varg(&mp_type_ValueError, MP_ERROR_TEXT("UART(%d) doesn't exist: 1 is COM1, 2 is COM2"), (int)id);
    }
    serial_uart_obj_t *self = &uarts[id - 1];
    if (id == 2 && uart_open(UART_COM2, self->baudrate) != 0) {
        mp_raise_OSError(MP_ENODEV);
    }
    mp_map_t kw_args;
    mp_map_init_fixed_table(&kw_args, n_kw, all_args + n_args);
    serial_uart_init_helper(self, n_args - 1, all_args + 1, &kw_args);
    return MP_OBJ_FROM_PTR(self);
}

static void serial_uart_print(const mp_print_t *print, mp_obj_t self_in, mp_print_kind_t kind) {
    serial_uart_obj_t *self = MP_OBJ_TO_PTR(self_in);
    mp_printf(print, "UART(%u, baudrate=%u, timeout=%u)", self->id, (unsigned)self->baudrate, (unsigned)self->timeout_ms);
}

// any() -> int: bytes waiting in the receive ring
static mp_obj_t serial_uart_any(mp_obj_t self_in) {
    return MP_OBJ_NEW_SMALL_INT(rx_available(MP_OBJ_TO_PTR(self_in)));
}
static MP_DEFINE_CONST_FUN_OBJ_1(serial_uart_any_obj, serial_uart_any);

// Stream read: what has arrived, after waiting up to timeout_ms for the first byte.
static mp_uint_t serial_uart_read(mp_obj_t self_in, void *buf, mp_uint_t size, int *errcode) {
    serial_uart_obj_t *self = MP_OBJ_TO_PTR(self_in);
    if (size == 0) {
        return 0;
    }
    mp_uint_t start = mp_hal_ticks_ms();
    while (!rx_available(self)) {
        if (mp_hal_ticks_ms() - start >= self->timeout_ms) {
            *errcode = MP_EAGAIN;
            return MP_STREAM_ERROR;
        }
        mp_event_wait_ms(1);
    }
    return rx_read(self, buf, size);
}

static mp_uint_t serial_uart_write(mp_obj_t self_in, const void *buf, mp_uint_t size, int *errcode) {
    serial_uart_obj_t *self = MP_OBJ_TO_PTR(self_in);
    if (self->id == 1) {
        console_write(buf, size);
    } else {
        uart_write(UART_COM2, buf, size);
    }
    return size;
}

static mp_uint_t serial_uart_ioctl(mp_obj_t self_in, mp_uint_t request, uintptr_t arg, int *errcode) {
    serial_uart_obj_t *self = MP_OBJ_TO_PTR(self_in);
    switch (request) {
        case MP_STREAM_POLL: {
            mp_uint_t ret = 0;
            if ((arg & MP_STREAM_POLL_RD) && rx_available(self)) {
                ret |= MP_STREAM_POLL_RD;
            }
            if (arg & MP_STREAM_POLL_WR) {
                ret |= MP_STREAM_POLL_WR;   // output is polled to completion
            }
            return ret;
        }
        case MP_STREAM_FLUSH:
        case MP_STREAM_CLOSE:
            return 0;
        default:
            *errcode = MP_EINVAL;
            return MP_STREAM_ERROR;
    }
}

static const mp_stream_p_t serial_uart_stream_p = {
    .read = serial_uart_read,
    .write = serial_uart_write,
    .ioctl = serial_uart_ioctl,
    .is_text = false,
};

static const mp_rom_map_elem_t serial_uart_locals_dict_table[] = {
    { MP_ROM_QSTR(MP_QSTR_init), MP_ROM_PTR(&serial_uart_init_obj) },
    { MP_ROM_QSTR(MP_QSTR_any), MP_ROM_PTR(&serial_uart_any_obj) },
    { MP_ROM_QSTR(MP_QSTR_read), MP_ROM_PTR(&mp_stream_read_obj) },
    { MP_ROM_QSTR(MP_QSTR_readline), MP_ROM_PTR(&mp_stream_unbuffered_readline_obj) },
    { MP_ROM_QSTR(MP_QSTR_readinto), MP_ROM_PTR(&mp_stream_readinto_obj) },
    { MP_ROM_QSTR(MP_QSTR_write), MP_ROM_PTR(&mp_stream_write_obj) },
    { MP_ROM_QSTR(MP_QSTR_flush), MP_ROM_PTR(&mp_stream_flush_obj) },
    { MP_ROM_QSTR(MP_QSTR_close), MP_ROM_PTR(&mp_stream_close_obj) },
};
static MP_DEFINE_CONST_DICT(serial_uart_locals_dict, serial_uart_locals_dict_table);

MP_DEFINE_CONST_OBJ_TYPE(
    serial_uart_type,
    MP_QSTR_UART,
    MP_TYPE_FLAG_ITER_IS_STREAM,
    make_new, serial_uart_make_new,
    print, serial_uart_print,
    protocol, &serial_uart_stream_p,
    locals_dict, &serial_uart_locals_dict
    );

static const mp_rom_map_elem_t serial_module_globals_table[] = {
    { MP_ROM_QSTR(MP_QSTR___name__), MP_ROM_QSTR(MP_QSTR_serial) },
    { MP_ROM_QSTR(MP_QSTR_UART), MP_ROM_PTR(&serial_uart_type) },
};
static MP_DEFINE_CONST_DICT(serial_module_globals, serial_module_globals_table);

const mp_obj_module_t mp_module_serial = {
    .base = { &mp_type_module },
    .globals = (mp_obj_dict_t *)&serial_module_globals,
};

MP_REGISTER_MODULE(MP_QSTR_serial, mp_module_serial);
