// repl: MicroPython's own REPL on the serial console, from Python, for a program that keeps the
// console live while it runs (cllm's server does, as an asyncio task that waits for the console
// to be readable and then calls feed()). The REPL itself is port/repl.c.
#include "py/runtime.h"
#include "py/mphal.h"
#include "drivers/console.h"
#include "port/repl.h"

// feed() -> int: the bytes waiting on the console, through the REPL, until none is left (0) or one
// asks for a soft reboot: SOFT_REBOOT (Ctrl-D at the friendly prompt, SystemExit from a statement)
// or RAW_SOFT_REBOOT (Ctrl-D at the raw REPL's empty input). Reads no byte ahead of the REPL: a
// raw paste takes the rest of its input itself.
static mp_obj_t repl_feed(void) {
    int c;
    while ((c = console_read_byte()) >= 0) {
        enum repl_result r = repl_byte(c);
        if (r != REPL_MORE) {
            return MP_OBJ_NEW_SMALL_INT(r);
        }
    }
    return MP_OBJ_NEW_SMALL_INT(REPL_MORE);
}
static MP_DEFINE_CONST_FUN_OBJ_0(repl_feed_obj, repl_feed);

// greet(): the REPL's greeting and a fresh input line (a server started by a statement typed at
// the REPL takes the console over from the middle of that statement's line)
static mp_obj_t repl_greet_fn(void) {
    repl_greet();
    return mp_const_none;
}
static MP_DEFINE_CONST_FUN_OBJ_0(repl_greet_obj, repl_greet_fn);

// soft_reboot(): what the console shows of a soft reboot ("MPY: soft reboot", then the REPL's
// greeting in its mode), for a caller that has renewed the console's state itself
static mp_obj_t repl_soft_reboot(void) {
    mp_hal_stdout_tx_str("MPY: soft reboot\r\n");
    return repl_greet_fn();
}
static MP_DEFINE_CONST_FUN_OBJ_0(repl_soft_reboot_obj, repl_soft_reboot);

static const mp_rom_map_elem_t repl_module_globals_table[] = {
    { MP_ROM_QSTR(MP_QSTR___name__), MP_ROM_QSTR(MP_QSTR_repl) },
    { MP_ROM_QSTR(MP_QSTR_feed), MP_ROM_PTR(&repl_feed_obj) },
    { MP_ROM_QSTR(MP_QSTR_greet), MP_ROM_PTR(&repl_greet_obj) },
    { MP_ROM_QSTR(MP_QSTR_soft_reboot), MP_ROM_PTR(&repl_soft_reboot_obj) },
    { MP_ROM_QSTR(MP_QSTR_SOFT_REBOOT), MP_ROM_INT(REPL_SOFT_REBOOT) },
    { MP_ROM_QSTR(MP_QSTR_RAW_SOFT_REBOOT), MP_ROM_INT(REPL_RAW_SOFT_REBOOT) },
};
static MP_DEFINE_CONST_DICT(repl_module_globals, repl_module_globals_table);

const mp_obj_module_t mp_module_repl = {
    .base = { &mp_type_module },
    .globals = (mp_obj_dict_t *)&repl_module_globals,
};

MP_REGISTER_MODULE(MP_QSTR_repl, mp_module_repl);
