// brk grows up from the bottom of the free region; mmap takes from the top of the highest
// free range that fits. Both hand out zeroed pages, as Linux does and glibc's calloc relies on.
// Zeroing is lazy: a page is cleared when handed out, and only if it may hold old data —
// RAM fresh from a virtual machine is zero, but memory given back by munmap is not.
#include "kernel.h"
#include "spinlock.h"

#define RANGES_MAX  512
#define PAGES_4G    (1u << 20)

struct range {
    uint32_t start, end;
};

static struct range free_ranges[RANGES_MAX];   // sorted by address, never adjacent
static int nfree;
static uint32_t region_start, region_end;
static uint32_t brk_base, brk_cur;
static uint32_t dirty[PAGES_4G / 32];           // one bit per page that may hold old data
static struct spinlock mem_lock;                // every CPU's threads mmap and munmap

static void zero_pages(uint32_t addr, uint32_t len) {
    for (uint32_t page = addr / PAGE_SIZE; page < (addr + len) / PAGE_SIZE; page++) {
        uint32_t bit = 1u << (page & 31);
        if (dirty[page / 32] & bit) {
            uint32_t count = PAGE_SIZE / 4;
            uint32_t *p = (uint32_t *)(page * PAGE_SIZE);
            __asm__ volatile ("rep stosl" : "+D" (p), "+c" (count) : "a" (0) : "memory");
        }
        dirty[page / 32] |= bit;
    }
}

void ram_init(uint32_t start, uint32_t end, int ram_starts_zeroed) {
    region_start = brk_base = brk_cur = PAGE_ALIGN_UP(start);
    region_end = end & ~(PAGE_SIZE - 1);
    free_ranges[0].start = region_start;
    free_ranges[0].end = region_end;
    nfree = 1;
    uint32_t fill = ram_starts_zeroed ? 0 : 0xffffffffu;
    for (uint32_t i = 0; i < PAGES_4G / 32; i++) {
        dirty[i] = fill;
    }
}

static void remove_range(int i) {
    for (; i < nfree - 1; i++) {
        free_ranges[i] = free_ranges[i + 1];
    }
    nfree--;
}

// Take [addr, addr+len) out of free range i, which must contain it at one of its ends.
static void take(int i, uint32_t addr, uint32_t len) {
    struct range *r = &free_ranges[i];
    if (addr == r->start) {
        r->start += len;
    } else {
        r->end -= len;
    }
    if (r->start == r->end) {
        remove_range(i);
    }
    zero_pages(addr, len);
}

static uint32_t alloc_locked(uint32_t len) {
    len = PAGE_ALIGN_UP(len);
    if (len == 0) {
        return 0;
    }
    for (int i = nfree - 1; i >= 0; i--) {
        if (free_ranges[i].end - free_ranges[i].start >= len) {
            uint32_t addr = free_ranges[i].end - len;
            take(i, addr, len);
            return addr;
        }
    }
    return 0;
}

static int free_locked(uint32_t addr, uint32_t len) {
    len = PAGE_ALIGN_UP(len);
    if ((addr & (PAGE_SIZE - 1)) || len == 0 || addr < region_start || addr + len > region_end || addr + len < addr) {
        return -22;
    }
    int i = 0;
    while (i < nfree && free_ranges[i].start < addr) {
        i++;
    }
    // Refuse to free what is already free (a double munmap would corrupt the list).
    if ((i > 0 && free_ranges[i - 1].end > addr) || (i < nfree && free_ranges[i].start < addr + len)) {
        return -22;
    }
    int merge_prev = i > 0 && free_ranges[i - 1].end == addr;
    int merge_next = i < nfree && free_ranges[i].start == addr + len;
    if (merge_prev && merge_next) {
        free_ranges[i - 1].end = free_ranges[i].end;
        remove_range(i);
    } else if (merge_prev) {
        free_ranges[i - 1].end = addr + len;
    } else if (merge_next) {
        free_ranges[i].start = addr;
    } else {
        if (nfree == RANGES_MAX) {
            return -12; // -ENOMEM: the range list is full; the memory stays allocated
        }
        for (int j = nfree; j > i; j--) {
            free_ranges[j] = free_ranges[j - 1];
        }
        free_ranges[i].start = addr;
        free_ranges[i].end = addr + len;
        nfree++;
    }
    return 0;
}

static uint32_t brk_locked(uint32_t want) {
    if (want < brk_base) {
        return brk_cur;
    }
    uint32_t cur_end = PAGE_ALIGN_UP(brk_cur), want_end = PAGE_ALIGN_UP(want);
    if (want_end > cur_end) {
        // The pages above the break must be free and contiguous with it.
        int i = 0;
        while (i < nfree && free_ranges[i].start < cur_end) {
            i++;
        }
        if (i == nfree || free_ranges[i].start != cur_end || free_ranges[i].end < want_end) {
            return brk_cur;
        }
        take(i, cur_end, want_end - cur_end);
    } else if (want_end < cur_end) {
        free_locked(want_end, cur_end - want_end);
    }
    brk_cur = want;
    return brk_cur;
}

// The entry points: each takes the lock around its _locked twin (brk and mmap come from every CPU's
// threads), which is all they have in common.
uint32_t ram_alloc(uint32_t len) {
    uint32_t flags = spin_lock(&mem_lock);
    uint32_t addr = alloc_locked(len);
    spin_unlock(&mem_lock, flags);
    return addr;
}

int ram_free(uint32_t addr, uint32_t len) {
    uint32_t flags = spin_lock(&mem_lock);
    int err = free_locked(addr, len);
    spin_unlock(&mem_lock, flags);
    return err;
}

uint32_t ram_brk(uint32_t want) {
    uint32_t flags = spin_lock(&mem_lock);
    uint32_t cur = brk_locked(want);
    spin_unlock(&mem_lock, flags);
    return cur;
}

void ram_get_stats(struct ram_stats *s) {
    uint32_t flags = spin_lock(&mem_lock);
    s->total = region_end - region_start;
    s->free = 0;
    s->largest_free = 0;
    for (int i = 0; i < nfree; i++) {
        uint32_t len = free_ranges[i].end - free_ranges[i].start;
        s->free += len;
        if (len > s->largest_free) {
            s->largest_free = len;
        }
    }
    s->brk = brk_cur - brk_base;
    spin_unlock(&mem_lock, flags);
}
