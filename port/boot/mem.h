#pragma once
#include <stdint.h>

// Physical memory behind brk and anonymous mmap. Paging is off: addresses are physical.
void mem_init(uint32_t start, uint32_t end, int ram_starts_zeroed);
uint32_t mem_brk(uint32_t want);            // Linux brk(): the new break, or the old on failure
uint32_t mem_alloc(uint32_t len);           // zeroed, page-aligned; 0 when out of memory
int mem_free(uint32_t addr, uint32_t len);  // 0, or -EINVAL for memory not handed out

struct mem_stats {
    uint32_t total;         // bytes managed
    uint32_t free;          // bytes not handed out
    uint32_t brk;           // bytes under the program break
    uint32_t largest_free;  // the biggest single allocation that can succeed
};
void mem_get_stats(struct mem_stats *s);
