// The only file that knows how MicroPython reaches the console and the clock.
#include "py/mphal.h"
#include "py/runtime.h"
#include "py/stream.h"
#include "shared/runtime/interrupt_char.h"
#include "kernel/kernel.h"
#include "drivers/console.h"

int mp_hal_stdin_rx_chr(void) {
    for (;;) {
        int c = console_read_byte();
        if (c >= 0) {
            return c;
        }
        mp_event_wait_indefinite();
    }
}

mp_uint_t mp_hal_stdout_tx_strn(const char *str, size_t len) {
    console_write(str, len);
    return len;
}

uintptr_t mp_hal_stdio_poll(uintptr_t poll_flags) {
    uintptr_t ret = 0;
    if ((poll_flags & MP_STREAM_POLL_RD) && console_rx_available()) {
        ret |= MP_STREAM_POLL_RD;
    }
    if (poll_flags & MP_STREAM_POLL_WR) {
        ret |= MP_STREAM_POLL_WR;   // output is polled to completion: always writable
    }
    return ret;
}

static void keyboard_interrupt(void) {
    mp_sched_keyboard_interrupt();
}

void mp_hal_set_interrupt_char(int c) {
    console_set_interrupt(c, keyboard_interrupt);
}

unsigned int mp_hal_begin_atomic_section(void) {
    return irq_save();
}

void mp_hal_end_atomic_section(unsigned int state) {
    irq_restore(state);
}

mp_uint_t mp_hal_ticks_ms(void) {
    return (mp_uint_t)(clock_ns() / 1000000u);
}

mp_uint_t mp_hal_ticks_us(void) {
    return (mp_uint_t)(clock_ns() / 1000u);
}

mp_uint_t mp_hal_ticks_cpu(void) {
    uint32_t lo, hi;
    __asm__ volatile ("rdtsc" : "=a" (lo), "=d" (hi));
    return lo;
}

uint64_t mp_hal_time_ns(void) {
    return clock_epoch_ns();
}

void mp_hal_delay_ms(mp_uint_t ms) {
    uint64_t end = clock_ns() + (uint64_t)ms * 1000000u;
    while (clock_ns() < end) {
        mp_event_wait_ms(1);    // stays responsive to Ctrl-C and scheduled callbacks
    }
}

void mp_hal_delay_us(mp_uint_t us) {
    uint64_t end = clock_ns() + (uint64_t)us * 1000u;
    while (clock_ns() < end) {
        mp_event_handle_nowait();
    }
}
