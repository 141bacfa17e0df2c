// Time. The HPET's main counter runs at a fixed period it states itself (10 ns on QEMU), so it
// needs no calibration — unlike the TSC, whose rate under TCG follows the host's load. The
// 8254 PIT ticks at 1 kHz regardless: its interrupt wakes an idle CPU for timed sleeps, and
// its count is the clock when there is no HPET. The CMOS RTC gives the date once, at boot.
#include <stdio.h>
#include "kernel.h"
#include "io.h"
#include "trap.h"

// HPET registers (IA-PC HPET specification 1.0a, section 2.3)
#define HPET_BASE           0xfed00000u
#define HPET_GCAP_ID        0x000   // bits 63:32 COUNTER_CLK_PERIOD in femtoseconds
#define HPET_GEN_CONF       0x010
#define HPET_MAIN_COUNTER   0x0f0
#define HPET_ENABLE_CNF     0x1
#define HPET_MAX_PERIOD_FS  100000000u  // the spec's upper bound: 100 ns

// 8254 PIT: channel 0 drives IRQ 0 from a 1.193182 MHz input clock.
#define PIT_CH0             0x40
#define PIT_CMD             0x43
#define PIT_HZ              1193182u
#define PIT_TICK_HZ         1000u
#define PIT_CH0_RATEGEN     0x34    // channel 0, lobyte/hibyte, mode 2 (rate generator)
#define PIT_CH0_ONESHOT     0x30    // channel 0, lobyte/hibyte, mode 0 (interrupt on terminal count)
#define PIT_CH0_LATCH       0x00

// CMOS RTC (MC146818)
#define CMOS_INDEX          0x70
#define CMOS_DATA           0x71
#define RTC_STATUS_A_UIP    0x80    // update in progress: the time registers are changing
#define RTC_STATUS_B_24H    0x02
#define RTC_STATUS_B_BINARY 0x04

static uint32_t hpet_period_fs;
static uint64_t hpet_start;
static volatile uint32_t pit_ticks;
static uint64_t boot_epoch_ns;

static uint64_t hpet_counter(void) {
    // Two 32-bit reads of a 64-bit counter: retry if the high half moved in between.
    uint32_t hi, lo;
    do {
        hi = mmio_read32(HPET_BASE + HPET_MAIN_COUNTER + 4);
        lo = mmio_read32(HPET_BASE + HPET_MAIN_COUNTER);
    } while (hi != mmio_read32(HPET_BASE + HPET_MAIN_COUNTER + 4));
    return ((uint64_t)hi << 32) | lo;
}

volatile int tick_paused;

static void pit_start(void) {
    uint16_t reload = PIT_HZ / PIT_TICK_HZ;
    outb(PIT_CMD, PIT_CH0_RATEGEN);
    outb(PIT_CH0, reload & 0xff);
    outb(PIT_CH0, reload >> 8);
}

// The tick wakes sleepers and paces the network's poll when it starves (net/net.c); while
// CPU 0 computes in C (a llama_decode) neither can happen. Under TCG every expiry of the emulated
// PIT makes QEMU stop the running CPU to take its lock, masked at the PIC or not: at 1 kHz that was
// 2-5 % of a decode (in-kernel A/B, README "llama.cpp inside"). So the PIT is set to count down once
// (55 ms) and then stay quiet, its IRQ masked; at the end the rate generator starts again (a
// tick that came meanwhile is taken at the unmask), and cpu_idle() spins instead of halting.
void clock_pause_tick(int paused) {
    if (!hpet_period_fs) {
        return;
    }
    uint32_t flags = irq_save();
    tick_paused = paused;
    if (paused) {
        pic_mask(0);
        outb(PIT_CMD, PIT_CH0_ONESHOT);
        outb(PIT_CH0, 0xff);
        outb(PIT_CH0, 0xff);
    } else {
        pit_start();
        pic_unmask(0);
    }
    irq_restore(flags);
}

static void (*tick_hook)(uint32_t);

static void pit_tick(void) {
    pit_ticks++;
    if (tick_hook) {
        tick_hook(pit_ticks);
    }
}

void clock_on_tick(void (*fn)(uint32_t ticks)) {
    tick_hook = fn;
}

static uint8_t cmos_read(uint8_t reg) {
    outb(CMOS_INDEX, reg);
    return inb(CMOS_DATA);
}

static uint32_t bcd(uint8_t v, int binary) {
    return binary ? v : (uint32_t)((v >> 4) * 10 + (v & 0xf));
}

// Days since 1970-01-01 of a civil date (Howard Hinnant's days_from_civil).
static int32_t days_from_civil(int32_t y, uint32_t m, uint32_t d) {
    y -= m <= 2;
    int32_t era = (y >= 0 ? y : y - 399) / 400;
    uint32_t yoe = (uint32_t)(y - era * 400);
    uint32_t doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1;
    uint32_t doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    return era * 146097 + (int32_t)doe - 719468;
}

static uint64_t rtc_epoch_seconds(void) {
    while (cmos_read(0x0a) & RTC_STATUS_A_UIP) {
    }
    uint8_t b = cmos_read(0x0b);
    int binary = b & RTC_STATUS_B_BINARY;
    uint32_t sec = bcd(cmos_read(0x00), binary);
    uint32_t min = bcd(cmos_read(0x02), binary);
    uint8_t hour_raw = cmos_read(0x04);
    uint32_t hour = bcd(hour_raw & 0x7f, binary);
    if (!(b & RTC_STATUS_B_24H) && (hour_raw & 0x80)) {
        hour = (hour % 12) + 12;    // 12-hour mode, PM
    }
    uint32_t day = bcd(cmos_read(0x07), binary);
    uint32_t month = bcd(cmos_read(0x08), binary);
    uint32_t year = bcd(cmos_read(0x09), binary) + 100 * bcd(cmos_read(0x32), binary);
    if (year < 1970) {
        year += 100;                // no century register: assume 20xx
    }
    int32_t days = days_from_civil((int32_t)year, month, day);
    return (uint64_t)days * 86400 + hour * 3600 + min * 60 + sec;
}

void clock_init(void) {
    uint32_t period = mmio_read32(HPET_BASE + HPET_GCAP_ID + 4);
    if (period != 0 && period <= HPET_MAX_PERIOD_FS) {
        hpet_period_fs = period;
        mmio_write32(HPET_BASE + HPET_GEN_CONF, mmio_read32(HPET_BASE + HPET_GEN_CONF) | HPET_ENABLE_CNF);
        hpet_start = hpet_counter();
    }
    pit_start();
    irq_register(0, pit_tick);
    boot_epoch_ns = rtc_epoch_seconds() * 1000000000ull;
}

uint64_t clock_ns(void) {
    if (hpet_period_fs) {
        uint64_t ticks = hpet_counter() - hpet_start;
        // ticks * period_fs / 1e6 without overflowing 64 bits for centuries of uptime
        return (ticks / 1000000u) * hpet_period_fs + (ticks % 1000000u) * hpet_period_fs / 1000000u;
    }
    // PIT: whole milliseconds from the tick count, the fraction from the down-counter.
    uint32_t flags = irq_save();
    uint32_t ticks = pit_ticks;
    outb(PIT_CMD, PIT_CH0_LATCH);
    uint32_t count = inb(PIT_CH0);
    count |= (uint32_t)inb(PIT_CH0) << 8;
    irq_restore(flags);
    uint32_t reload = PIT_HZ / PIT_TICK_HZ;
    uint32_t elapsed = reload - (count > reload ? reload : count);
    return (uint64_t)ticks * (1000000000u / PIT_TICK_HZ) + (uint64_t)elapsed * 1000000000u / PIT_HZ;
}

uint64_t clock_epoch_ns(void) {
    return boot_epoch_ns + clock_ns();
}

const char *clock_source(void) {
    return hpet_period_fs ? "hpet" : "pit";
}

void clock_sleep_ns(uint64_t ns) {
    uint64_t end = clock_ns() + ns;
    while (clock_ns() < end) {
        cpu_idle();     // the next PIT tick is at most 1 ms away
    }
}

const char *clock_stamp(void) {
    static char buf[16];
    uint64_t ms = clock_ns() / 1000000u;
    snprintf(buf, sizeof(buf), "[%4u.%03u]", (unsigned)(ms / 1000), (unsigned)(ms % 1000));
    return buf;
}
