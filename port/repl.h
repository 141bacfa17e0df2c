#pragma once
#include <stdbool.h>

// MicroPython's own REPL (shared/runtime/pyexec.c, event-driven): friendly REPL with history, tab
// completion, auto-indent and paste mode, raw REPL with raw-paste. It takes one byte at a time,
// so the same REPL serves from the blocking loop in main.c and from an asyncio task while the
// server runs (modules/repl), statements run in __main__'s namespace either way.

// What one byte made the REPL do.
enum repl_result {
    REPL_MORE = 0,          // nothing to act on: the next byte, please
    REPL_SOFT_REBOOT,       // Ctrl-D at the friendly prompt, or SystemExit from a statement
    REPL_RAW_SOFT_REBOOT,   // Ctrl-D at the raw REPL's empty input: a tool asks for a fresh interpreter
};

void repl_greet(void);          // its greeting (as in its mode) and a fresh input line
enum repl_result repl_byte(int c);  // greets first if it has not since the last repl_end
void repl_end(void);            // a soft reboot: the next byte is greeted first
