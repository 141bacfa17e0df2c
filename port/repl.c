// MicroPython's event-driven REPL, fed one byte at a time (port/repl.h).
#include "py/runtime.h"
#include "py/mphal.h"
#include "shared/readline/readline.h"
#include "shared/runtime/pyexec.h"
#include "port/repl.h"

static bool begun;

void repl_greet(void) {
    begun = true;
    pyexec_event_repl_init();
}

void repl_end(void) {
    begun = false;
}

enum repl_result repl_byte(int c) {
    if (!begun) {
        repl_greet();
    }
    bool raw_reset = pyexec_mode_kind == PYEXEC_MODE_RAW_REPL && c == CHAR_CTRL_D
        && vstr_len(MP_STATE_VM(repl_line)) == 0;
    // Statements see __main__'s names (main.py's, the server's), whoever calls; Ctrl-C is only an
    // interrupt while a statement runs (pyexec turns it on for that), never between bytes.
    mp_obj_dict_t *globals = mp_globals_get();
    mp_obj_dict_t *locals = mp_locals_get();
    mp_globals_set(&MP_STATE_VM(dict_main));
    mp_locals_set(&MP_STATE_VM(dict_main));
    mp_hal_set_interrupt_char(-1);
    int ret = pyexec_event_repl_process_char(c);
    mp_globals_set(globals);
    mp_locals_set(locals);
    if (!(ret & PYEXEC_FORCED_EXIT)) {
        return REPL_MORE;
    }
    return raw_reset ? REPL_RAW_SOFT_REBOOT : REPL_SOFT_REBOOT;
}
