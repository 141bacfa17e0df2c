#pragma once
#include <stddef.h>
#include <stdint.h>

// The PC's 80x25 colour text mode, as the BIOS leaves it: a cell is a character byte and an
// attribute byte (background << 4 | foreground, 16 colours each) at 0xb8000.
#define VGA_COLS        80
#define VGA_ROWS        25
#define VGA_DEFAULT_ATTR 0x07   // light grey on black

void vga_init(void);
int vga_ready(void);
void vga_clear(uint8_t attr);
// A terminal: \n, \r, \b, \t move the cursor, the screen scrolls at the bottom, and ANSI
// escape sequences (the REPL's line editing) are skipped rather than shown.
void vga_write(const char *s, size_t n);
// The console's copy of its output: shown unless mirroring was turned off (a full-screen app).
void vga_console_write(const char *s, size_t n);
void vga_set_mirror(int on);
int vga_get_mirror(void);
void vga_put_at(int row, int col, const char *s, size_t n, uint8_t attr);   // clipped to the row
void vga_scroll(int lines);             // up by lines, blank lines at the bottom
// Keep the top rows for the program (vga_put_at): text, scrolling, clear and the cursor stay
// below them. The text already there moves up only as far as it must to stay visible.
void vga_reserve(int rows);
int vga_reserved(void);
void vga_set_cursor(int row, int col);
void vga_get_cursor(int *row, int *col);
void vga_set_attr(uint8_t attr);        // for what vga_write writes next
uint8_t vga_get_attr(void);
uint16_t vga_cell(int row, int col);    // attribute << 8 | character
