// vga: the 80x25 text screen (drivers/vga.c). The console's output is mirrored on it until
// mirror(False); then the screen is the program's own.
#include "py/runtime.h"
#include "drivers/vga.h"

static uint8_t colour(mp_obj_t c) {
    mp_int_t v = mp_obj_get_int(c);
    if (v < 0 || v > 15) {
        mp_raise_ValueError(MP_ERROR_TEXT("colours are 0..15"));
    }
    return (uint8_t)v;
}

// write(text): at the cursor, as the console would (newlines, scrolling), in the colour() colours
static mp_obj_t vga_write_(mp_obj_t text_in) {
    size_t len;
    const char *text = mp_obj_str_get_data(text_in, &len);
    vga_write(text, len);
    return mp_const_none;
}
static MP_DEFINE_CONST_FUN_OBJ_1(vga_write_obj, vga_write_);

// print_at(row, col, text, fg=LIGHT_GREY, bg=BLACK): text at a position, cut at the right edge;
// the cursor does not move
static mp_obj_t vga_print_at(size_t n_args, const mp_obj_t *args) {
    mp_int_t row = mp_obj_get_int(args[0]), col = mp_obj_get_int(args[1]);
    if (row < 0 || row >= VGA_ROWS || col < 0 || col >= VGA_COLS) {
        mp_raise_msg_varg(&mp_type_IndexError, MP_ERROR_TEXT("(%d, %d) is off the %dx%d screen"),
            (int)row, (int)col, VGA_ROWS, VGA_COLS);
    }
    size_t len;
    const char *text = mp_obj_str_get_data(args[2], &len);
    uint8_t fg = n_args > 3 ? colour(args[3]) : VGA_DEFAULT_ATTR & 0xf;
    uint8_t bg = n_args > 4 ? colour(args[4]) : VGA_DEFAULT_ATTR >> 4;
    vga_put_at(row, col, text, len, bg << 4 | fg);
    return mp_const_none;
}
static MP_DEFINE_CONST_FUN_OBJ_VAR_BETWEEN(vga_print_at_obj, 3, 5, vga_print_at);

// clear(): blank the screen in the current colours, cursor to the top left
static mp_obj_t vga_clear_(void) {
    vga_clear(vga_get_attr());
    return mp_const_none;
}
static MP_DEFINE_CONST_FUN_OBJ_0(vga_clear_obj, vga_clear_);

// scroll(lines=1): move the screen up, blank lines at the bottom
static mp_obj_t vga_scroll_(size_t n_args, const mp_obj_t *args) {
    vga_scroll(n_args ? mp_obj_get_int(args[0]) : 1);
    return mp_const_none;
}
static MP_DEFINE_CONST_FUN_OBJ_VAR_BETWEEN(vga_scroll_obj, 0, 1, vga_scroll_);

// reserve() -> rows; reserve(rows): keep that many rows at the top for print_at (a status
// panel); the console's text, scrolling, clear() and the cursor stay below them (0: none)
static mp_obj_t vga_reserve_(size_t n_args, const mp_obj_t *args) {
    if (n_args) {
        mp_int_t rows = mp_obj_get_int(args[0]);
        if (rows < 0 || rows >= VGA_ROWS) {
            mp_raise_ValueError(MP_ERROR_TEXT("reserve 0 to 24 rows"));
        }
        vga_reserve((int)rows);
        return mp_const_none;
    }
    return MP_OBJ_NEW_SMALL_INT(vga_reserved());
}
static MP_DEFINE_CONST_FUN_OBJ_VAR_BETWEEN(vga_reserve_obj, 0, 1, vga_reserve_);

// cursor() -> (row, col); cursor(row, col): move the hardware cursor
static mp_obj_t vga_cursor(size_t n_args, const mp_obj_t *args) {
    if (n_args == 2) {
        vga_set_cursor(mp_obj_get_int(args[0]), mp_obj_get_int(args[1]));
        return mp_const_none;
    }
    if (n_args != 0) {
        mp_raise_TypeError(MP_ERROR_TEXT("cursor() or cursor(row, col)"));
    }
    int row, col;
    vga_get_cursor(&row, &col);
    mp_obj_t t[2] = { MP_OBJ_NEW_SMALL_INT(row), MP_OBJ_NEW_SMALL_INT(col) };
    return mp_obj_new_tuple(2, t);
}
static MP_DEFINE_CONST_FUN_OBJ_VAR_BETWEEN(vga_cursor_obj, 0, 2, vga_cursor);

// colour() -> (fg, bg); colour(fg, bg): the colours write() and clear() use
static mp_obj_t vga_colour(size_t n_args, const mp_obj_t *args) {
    if (n_args == 2) {
        vga_set_attr(colour(args[1]) << 4 | colour(args[0]));
        return mp_const_none;
    }
    if (n_args != 0) {
        mp_raise_TypeError(MP_ERROR_TEXT("colour() or colour(fg, bg)"));
    }
    uint8_t a = vga_get_attr();
    mp_obj_t t[2] = { MP_OBJ_NEW_SMALL_INT(a & 0xf), MP_OBJ_NEW_SMALL_INT(a >> 4) };
    return mp_obj_new_tuple(2, t);
}
static MP_DEFINE_CONST_FUN_OBJ_VAR_BETWEEN(vga_colour_obj, 0, 2, vga_colour);

// cell(row, col) -> (char, fg, bg): what the screen shows there
static mp_obj_t vga_cell_(mp_obj_t row_in, mp_obj_t col_in) {
    mp_int_t row = mp_obj_get_int(row_in), col = mp_obj_get_int(col_in);
    if (row < 0 || row >= VGA_ROWS || col < 0 || col >= VGA_COLS) {
        mp_raise_msg(&mp_type_IndexError, MP_ERROR_TEXT("off the screen"));
    }
    uint16_t c = vga_cell(row, col);
    char ch = c & 0xff;
    mp_obj_t t[3] = { mp_obj_new_str(&ch, 1), MP_OBJ_NEW_SMALL_INT((c >> 8) & 0xf), MP_OBJ_NEW_SMALL_INT(c >> 12) };
    return mp_obj_new_tuple(3, t);
}
static MP_DEFINE_CONST_FUN_OBJ_2(vga_cell_obj, vga_cell_);

// mirror() -> bool; mirror(on): whether the console's output is copied to the screen
static mp_obj_t vga_mirror(size_t n_args, const mp_obj_t *args) {
    if (n_args) {
        vga_set_mirror(mp_obj_is_true(args[0]));
        return mp_const_none;
    }
    return mp_obj_new_bool(vga_get_mirror());
}
static MP_DEFINE_CONST_FUN_OBJ_VAR_BETWEEN(vga_mirror_obj, 0, 1, vga_mirror);

static const mp_rom_map_elem_t vga_module_globals_table[] = {
    { MP_ROM_QSTR(MP_QSTR___name__), MP_ROM_QSTR(MP_QSTR_vga) },
    { MP_ROM_QSTR(MP_QSTR_write), MP_ROM_PTR(&vga_write_obj) },
    { MP_ROM_QSTR(MP_QSTR_print_at), MP_ROM_PTR(&vga_print_at_obj) },
    { MP_ROM_QSTR(MP_QSTR_clear), MP_ROM_PTR(&vga_clear_obj) },
    { MP_ROM_QSTR(MP_QSTR_scroll), MP_ROM_PTR(&vga_scroll_obj) },
    { MP_ROM_QSTR(MP_QSTR_cursor), MP_ROM_PTR(&vga_cursor_obj) },
    { MP_ROM_QSTR(MP_QSTR_colour), MP_ROM_PTR(&vga_colour_obj) },
    { MP_ROM_QSTR(MP_QSTR_cell), MP_ROM_PTR(&vga_cell_obj) },
    { MP_ROM_QSTR(MP_QSTR_mirror), MP_ROM_PTR(&vga_mirror_obj) },
    { MP_ROM_QSTR(MP_QSTR_reserve), MP_ROM_PTR(&vga_reserve_obj) },
    { MP_ROM_QSTR(MP_QSTR_ROWS), MP_ROM_INT(VGA_ROWS) },
    { MP_ROM_QSTR(MP_QSTR_COLS), MP_ROM_INT(VGA_COLS) },
    // the 16 colours of the CGA palette
    { MP_ROM_QSTR(MP_QSTR_BLACK), MP_ROM_INT(0) },
    { MP_ROM_QSTR(MP_QSTR_BLUE), MP_ROM_INT(1) },
    { MP_ROM_QSTR(MP_QSTR_GREEN), MP_ROM_INT(2) },
    { MP_ROM_QSTR(MP_QSTR_CYAN), MP_ROM_INT(3) },
    { MP_ROM_QSTR(MP_QSTR_RED), MP_ROM_INT(4) },
    { MP_ROM_QSTR(MP_QSTR_MAGENTA), MP_ROM_INT(5) },
    { MP_ROM_QSTR(MP_QSTR_BROWN), MP_ROM_INT(6) },
    { MP_ROM_QSTR(MP_QSTR_LIGHT_GREY), MP_ROM_INT(7) },
    { MP_ROM_QSTR(MP_QSTR_DARK_GREY), MP_ROM_INT(8) },
    { MP_ROM_QSTR(MP_QSTR_LIGHT_BLUE), MP_ROM_INT(9) },
    { MP_ROM_QSTR(MP_QSTR_LIGHT_GREEN), MP_ROM_INT(10) },
    { MP_ROM_QSTR(MP_QSTR_LIGHT_CYAN), MP_ROM_INT(11) },
    { MP_ROM_QSTR(MP_QSTR_LIGHT_RED), MP_ROM_INT(12) },
    { MP_ROM_QSTR(MP_QSTR_LIGHT_MAGENTA), MP_ROM_INT(13) },
    { MP_ROM_QSTR(MP_QSTR_YELLOW), MP_ROM_INT(14) },
    { MP_ROM_QSTR(MP_QSTR_WHITE), MP_ROM_INT(15) },
};
static MP_DEFINE_CONST_DICT(vga_module_globals, vga_module_globals_table);

const mp_obj_module_t mp_module_vga = {
    .base = { &mp_type_module },
    .globals = (mp_obj_dict_t *)&vga_module_globals,
};

MP_REGISTER_MODULE(MP_QSTR_vga, mp_module_vga);
