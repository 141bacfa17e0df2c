// A hash index over the qstrs in ROM for MicroPython's qstr lookups (see qstrindex.c).
#pragma once
#include <stddef.h>

// Build the index (once; later calls return at once): how many qstrs it holds, 0 if none.
size_t qstr_index_init(void);
