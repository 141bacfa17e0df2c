// VGA text mode: the frame buffer at 0xb8000 and the hardware cursor, which the CRT controller
// draws at the cell its Cursor Location registers name (IBM VGA Technical Reference: CRTC
// index 0x0e/0x0f through ports 0x3d4/0x3d5, the colour-mode addresses).
// Called from normal context only (the console's write path), but built like all drivers:
// no glibc, so copies are plain loops.
#include "vga.h"
#include "kernel/io.h"

#define VGA_TEXT        ((volatile uint16_t *)0xb8000)
#define CRTC_INDEX      0x3d4
#define CRTC_DATA       0x3d5
#define CRTC_CURSOR_START 0x0a
#define CRTC_CURSOR_END 0x0b
#define CRTC_CURSOR_HI  0x0e
#define CRTC_CURSOR_LO  0x0f
#define TAB_WIDTH       8

static int ready;
static int mirror = 1;
static int cur_row, cur_col;
static int top;             // rows kept at the top (a status panel): the text scrolls below them
static uint8_t attr = VGA_DEFAULT_ATTR;
static enum { TEXT, ESCAPE, CSI } esc_state;  // where we are in an ANSI escape sequence

static uint16_t blank(uint8_t a) {
    return (uint16_t)a << 8 | ' ';
}

static void update_cursor(void) {
    uint16_t pos = (uint16_t)(cur_row * VGA_COLS + cur_col);
    outb(CRTC_INDEX, CRTC_CURSOR_HI);
    outb(CRTC_DATA, pos >> 8);
    outb(CRTC_INDEX, CRTC_CURSOR_LO);
    outb(CRTC_DATA, pos & 0xff);
}

void vga_init(void) {
    // An underline cursor (scan lines 13-14) that the BIOS may have left disabled.
    outb(CRTC_INDEX, CRTC_CURSOR_START);
    outb(CRTC_DATA, 13);
    outb(CRTC_INDEX, CRTC_CURSOR_END);
    outb(CRTC_DATA, 14);
    attr = VGA_DEFAULT_ATTR;
    vga_clear(attr);
    ready = 1;
}

int vga_ready(void) {
    return ready;
}

void vga_clear(uint8_t a) {
    for (int i = top * VGA_COLS; i < VGA_ROWS * VGA_COLS; i++) {
        VGA_TEXT[i] = blank(a);
    }
    cur_row = top;
    cur_col = 0;
    update_cursor();
}

void vga_scroll(int lines) {
    if (lines <= 0) {
        return;
    }
    if (lines > VGA_ROWS - top) {
        lines = VGA_ROWS - top;
    }
    for (int i = top * VGA_COLS; i < (VGA_ROWS - lines) * VGA_COLS; i++) {
        VGA_TEXT[i] = VGA_TEXT[i + lines * VGA_COLS];
    }
    for (int i = (VGA_ROWS - lines) * VGA_COLS; i < VGA_ROWS * VGA_COLS; i++) {
        VGA_TEXT[i] = blank(attr);
    }
    cur_row = cur_row - lines >= top ? cur_row - lines : top;
    update_cursor();
}

void vga_reserve(int rows) {
    rows = rows < 0 ? 0 : rows > VGA_ROWS - 1 ? VGA_ROWS - 1 : rows;
    if (rows > top) {       // move the text down into the free rows below the cursor, then take the top
        int down = rows - top < VGA_ROWS - 1 - cur_row ? rows - top : VGA_ROWS - 1 - cur_row;
        for (int i = (cur_row + 1) * VGA_COLS - 1; i >= top * VGA_COLS; i--) {
            VGA_TEXT[i + down * VGA_COLS] = VGA_TEXT[i];
        }
        cur_row += down;
        for (int i = top * VGA_COLS; i < rows * VGA_COLS; i++) {
            VGA_TEXT[i] = blank(attr);
        }
    }
    top = rows;
    if (cur_row < top) {
        cur_row = top;
        cur_col = 0;
    }
    update_cursor();
}

int vga_reserved(void) {
    return top;
}

static void newline(void) {
    cur_col = 0;
    if (++cur_row == VGA_ROWS) {
        vga_scroll(1);      // leaves cur_row on the last line
    }
}

// ESC [ parameters final-byte: everything up to the final byte (0x40-0x7e) is dropped.
static int skip_escape(char c) {
    switch (esc_state) {
        case ESCAPE:
            esc_state = c == '[' ? CSI : TEXT;
            return 1;
        case CSI:
            if (c >= 0x40 && c <= 0x7e) {
                esc_state = TEXT;
            }
            return 1;
        default:
            if (c == 0x1b) {
                esc_state = ESCAPE;
                return 1;
            }
            return 0;
    }
}

static void put_char(char c) {
    if (skip_escape(c)) {
        return;
    }
    switch (c) {
        case '\n':
            newline();
            return;
        case '\r':
            cur_col = 0;
            return;
        case '\b':
            if (cur_col > 0) {
                cur_col--;
            }
            return;
        case '\t':
            cur_col = (cur_col / TAB_WIDTH + 1) * TAB_WIDTH;
            if (cur_col >= VGA_COLS) {
                newline();
            }
            return;
        default:
            if ((unsigned char)c < ' ') {
                return;
            }
            VGA_TEXT[cur_row * VGA_COLS + cur_col] = (uint16_t)attr << 8 | (unsigned char)c;
            if (++cur_col == VGA_COLS) {
                newline();
            }
    }
}

void vga_write(const char *s, size_t n) {
    if (!ready) {
        return;
    }
    for (size_t i = 0; i < n; i++) {
        put_char(s[i]);
    }
    update_cursor();
}

void vga_console_write(const char *s, size_t n) {
    if (mirror) {
        vga_write(s, n);
    }
}

void vga_set_mirror(int on) {
    mirror = on;
}

int vga_get_mirror(void) {
    return mirror;
}

void vga_put_at(int row, int col, const char *s, size_t n, uint8_t a) {
    if (row < 0 || row >= VGA_ROWS || col < 0) {
        return;
    }
    for (size_t i = 0; i < n && col + (int)i < VGA_COLS; i++) {
        VGA_TEXT[row * VGA_COLS + col + (int)i] = (uint16_t)a << 8 | (unsigned char)s[i];
    }
}

void vga_set_cursor(int row, int col) {
    cur_row = row < top ? top : row >= VGA_ROWS ? VGA_ROWS - 1 : row;
    cur_col = col < 0 ? 0 : col >= VGA_COLS ? VGA_COLS - 1 : col;
    update_cursor();
}

void vga_get_cursor(int *row, int *col) {
    *row = cur_row;
    *col = cur_col;
}

void vga_set_attr(uint8_t a) {
    attr = a;
}

uint8_t vga_get_attr(void) {
    return attr;
}

uint16_t vga_cell(int row, int col) {
    return VGA_TEXT[row * VGA_COLS + col];
}
