// pci: the PCI functions the machine has, read from configuration space (drivers/pci.c).
#include "py/runtime.h"
#include "py/objtuple.h"
#include "drivers/pci.h"

static const qstr device_fields[] = {
    MP_QSTR_bus, MP_QSTR_slot, MP_QSTR_function, MP_QSTR_vendor, MP_QSTR_device,
    MP_QSTR_class_, MP_QSTR_subclass, MP_QSTR_prog_if, MP_QSTR_bars, MP_QSTR_irq,
};

static mp_obj_t device_tuple(const struct pci_device *d) {
    mp_obj_t bars[6];
    for (int i = 0; i < 6; i++) {
        bars[i] = mp_obj_new_int_from_uint(d->bar[i]);
    }
    mp_obj_t items[MP_ARRAY_SIZE(device_fields)] = {
        MP_OBJ_NEW_SMALL_INT(d->bus), MP_OBJ_NEW_SMALL_INT(d->device), MP_OBJ_NEW_SMALL_INT(d->function),
        MP_OBJ_NEW_SMALL_INT(d->vendor_id), MP_OBJ_NEW_SMALL_INT(d->device_id),
        MP_OBJ_NEW_SMALL_INT(d->class_code), MP_OBJ_NEW_SMALL_INT(d->subclass), MP_OBJ_NEW_SMALL_INT(d->prog_if),
        mp_obj_new_tuple(6, bars),
        d->irq_line == 0xff ? mp_const_none : MP_OBJ_NEW_SMALL_INT(d->irq_line),
    };
    return mp_obj_new_attrtuple(device_fields, MP_ARRAY_SIZE(items), items);
}

// devices() -> [(bus, slot, function, vendor, device, class_, subclass, prog_if, bars, irq)]:
// every function found, as named tuples; bars are the raw register values, irq the 8259 line
static mp_obj_t pci_devices(void) {
    struct pci_device found[PCI_MAX_DEVICES];
    int n = pci_scan(found, PCI_MAX_DEVICES);
    mp_obj_t list = mp_obj_new_list(0, NULL);
    for (int i = 0; i < n; i++) {
        mp_obj_list_append(list, device_tuple(&found[i]));
    }
    return list;
}
static MP_DEFINE_CONST_FUN_OBJ_0(pci_devices_obj, pci_devices);

// read_config(bus, slot, function, offset) -> int: one 32-bit configuration register
static mp_obj_t pci_read_config(size_t n_args, const mp_obj_t *args) {
    mp_int_t v[4];
    static const mp_int_t limit[4] = {256, 32, 8, 256};
    for (int i = 0; i < 4; i++) {
        v[i] = mp_obj_get_int(args[i]);
        if (v[i] < 0 || v[i] >= limit[i]) {
            mp_raise_ValueError(MP_ERROR_TEXT("bus < 256, slot < 32, function < 8, offset < 256"));
        }
    }
    if (v[3] & 3) {
        mp_raise_ValueError(MP_ERROR_TEXT("offset must be a multiple of 4"));
    }
    struct pci_device d = { .bus = v[0], .device = v[1], .function = v[2] };
    return mp_obj_new_int_from_uint(pci_read32(&d, v[3]));
}
static MP_DEFINE_CONST_FUN_OBJ_VAR_BETWEEN(pci_read_config_obj, 4, 4, pci_read_config);

static const mp_rom_map_elem_t pci_module_globals_table[] = {
    { MP_ROM_QSTR(MP_QSTR___name__), MP_ROM_QSTR(MP_QSTR_pci) },
    { MP_ROM_QSTR(MP_QSTR_devices), MP_ROM_PTR(&pci_devices_obj) },
    { MP_ROM_QSTR(MP_QSTR_read_config), MP_ROM_PTR(&pci_read_config_obj) },
};
static MP_DEFINE_CONST_DICT(pci_module_globals, pci_module_globals_table);

const mp_obj_module_t mp_module_pci = {
    .base = { &mp_type_module },
    .globals = (mp_obj_dict_t *)&pci_module_globals,
};

MP_REGISTER_MODULE(MP_QSTR_pci, mp_module_pci);
