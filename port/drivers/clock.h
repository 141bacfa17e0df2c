#pragma once
#include <stdint.h>

void clock_init(void);
uint64_t clock_ns(void);            // monotonic, since boot
uint64_t clock_epoch_ns(void);      // wall clock: the RTC at boot plus the monotonic clock
const char *clock_source(void);     // "hpet" or "pit"
const char *clock_stamp(void);      // "[   1.234]": seconds since boot, for the boot log
void clock_sleep_ns(uint64_t ns);   // idles the CPU between timer ticks
// No tick on CPU 0 while paused (nonzero), for a long computation in C that waits for nothing;
// only with the HPET as the clock (otherwise the ticks are the clock, and this does nothing).
void clock_pause_tick(int paused);
// fn(ticks) in interrupt context at every timer tick (1 ms); one hook, NULL removes it.
void clock_on_tick(void (*fn)(uint32_t ticks));
