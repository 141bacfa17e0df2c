// network.LAN: the e1000 as MicroPython's wired-network interface (the API of the stm32 and
// mimxrt ports' LAN), plus the driver's counters. Addresses go through extmod/network_lwip.c.
#include "py/runtime.h"
#include "py/mperrno.h"
#include "extmod/modnetwork.h"
#include "lwip/netif.h"
#include "lwip/dhcp.h"
#include "lwip/tcp.h"
#include "lwip/priv/tcp_priv.h"
#include "drivers/e1000.h"
#include "net/net.h"

// status() values, as on the stm32 port's LAN
#define LINK_DOWN       0
#define LINK_UP         1   // cable in, interface administratively down
#define LINK_NOIP       2   // up, no address yet
#define LINK_GOTIP      3

typedef struct _network_lan_obj_t {
    mp_obj_base_t base;
} network_lan_obj_t;

static const network_lan_obj_t network_lan_en0 = { { &network_lan_type } };

static struct netif *lan_netif(void) {
    struct netif *nif = net_netif();
    if (!nif) {
        mp_raise_OSError(MP_ENODEV);
    }
    return nif;
}

static int link_status(void) {
    struct netif *nif = lan_netif();
    if (!e1000_link_up(net_nic())) {
        return LINK_DOWN;
    }
    if (!netif_is_up(nif)) {
        return LINK_UP;
    }
    return ip4_addr_isany_val(*netif_ip4_addr(nif)) ? LINK_NOIP : LINK_GOTIP;
}

static void network_lan_print(const mp_print_t *print, mp_obj_t self_in, mp_print_kind_t kind) {
    struct netif *nif = lan_netif();
    mp_printf(print, "<LAN e1000 status=%d %s>", link_status(), ip4addr_ntoa(netif_ip4_addr(nif)));
}

// LAN() -> the one interface; OSError(ENODEV) when the machine has no e1000
static mp_obj_t network_lan_make_new(const mp_obj_type_t *type, size_t n_args, size_t n_kw, const mp_obj_t *args) {
    mp_arg_check_num(n_args, n_kw, 0, 0, false);
    lan_netif();
    return MP_OBJ_FROM_PTR(&network_lan_en0);
}

// active([state]) -> bool: whether the interface is up (and bring it up or down)
static mp_obj_t network_lan_active(size_t n_args, const mp_obj_t *args) {
    struct netif *nif = lan_netif();
    if (n_args == 1) {
        return mp_obj_new_bool(netif_is_up(nif) && netif_is_link_up(nif));
    }
    if (mp_obj_is_true(args[1])) {
        netif_set_up(nif);
    } else {
        netif_set_down(nif);
    }
    return mp_const_none;
}
static MP_DEFINE_CONST_FUN_OBJ_VAR_BETWEEN(network_lan_active_obj, 1, 2, network_lan_active);

// isconnected() -> bool: link up and an address assigned
static mp_obj_t network_lan_isconnected(mp_obj_t self_in) {
    return mp_obj_new_bool(link_status() == LINK_GOTIP);
}
static MP_DEFINE_CONST_FUN_OBJ_1(network_lan_isconnected_obj, network_lan_isconnected);

// ifconfig([(ip, mask, gw, dns) or 'dhcp']) -> (ip, mask, gw, dns)
static mp_obj_t network_lan_ifconfig(size_t n_args, const mp_obj_t *args) {
    return mod_network_nic_ifconfig(lan_netif(), n_args - 1, args + 1);
}
static MP_DEFINE_CONST_FUN_OBJ_VAR_BETWEEN(network_lan_ifconfig_obj, 1, 2, network_lan_ifconfig);

// ipconfig('addr4' | 'gw4' | 'dhcp4' | ...) or ipconfig(addr4=..., gw4=..., dhcp4=...)
static mp_obj_t network_lan_ipconfig(size_t n_args, const mp_obj_t *args, mp_map_t *kwargs) {
    return mod_network_nic_ipconfig(lan_netif(), n_args - 1, args + 1, kwargs);
}
static MP_DEFINE_CONST_FUN_OBJ_KW(network_lan_ipconfig_obj, 1, network_lan_ipconfig);

// status() -> 0 link down, 1 link up but interface down, 2 no address yet, 3 got an address
static mp_obj_t network_lan_status(size_t n_args, const mp_obj_t *args) {
    if (n_args > 1) {
        mp_raise_ValueError(MP_ERROR_TEXT("unknown status param"));
    }
    return MP_OBJ_NEW_SMALL_INT(link_status());
}
static MP_DEFINE_CONST_FUN_OBJ_VAR_BETWEEN(network_lan_status_obj, 1, 2, network_lan_status);

// config('mac' | 'mtu' | 'hostname' | 'speed' | 'address_source'): read-only settings
static mp_obj_t network_lan_config(size_t n_args, const mp_obj_t *args, mp_map_t *kwargs) {
    struct netif *nif = lan_netif();
    if (kwargs->used || n_args != 2) {
        mp_raise_TypeError(MP_ERROR_TEXT("query one param: config('mac')"));
    }
    switch (mp_obj_str_get_qstr(args[1])) {
        case MP_QSTR_mac:
            return mp_obj_new_bytes(nif->hwaddr, nif->hwaddr_len);
        case MP_QSTR_mtu:
            return MP_OBJ_NEW_SMALL_INT(nif->mtu);
        case MP_QSTR_hostname:
            return mp_obj_new_str_from_cstr(netif_get_hostname(nif));
        case MP_QSTR_speed:
            return MP_OBJ_NEW_SMALL_INT(e1000_speed_mbps(net_nic()));
        case MP_QSTR_address_source:
            return mp_obj_new_str_from_cstr(net_address_source());
        default:
            mp_raise_ValueError(MP_ERROR_TEXT("unknown config param"));
    }
}
static MP_DEFINE_CONST_FUN_OBJ_KW(network_lan_config_obj, 1, network_lan_config);

static void dict_set(mp_obj_t d, qstr key, uint64_t value) {
    mp_obj_dict_store(d, MP_OBJ_NEW_QSTR(key), mp_obj_new_int_from_ull(value));
}

// counters() -> dict: frames and bytes in and out, drops and errors, since boot
static mp_obj_t network_lan_counters(mp_obj_t self_in) {
    lan_netif();
    struct e1000 *nic = net_nic();
    e1000_update_counters(nic);
    const struct e1000_counters *c = &nic->count;
    mp_obj_t d = mp_obj_new_dict(13);
    dict_set(d, MP_QSTR_rx_frames, c->rx_frames);
    dict_set(d, MP_QSTR_rx_bytes, c->rx_bytes);
    dict_set(d, MP_QSTR_tx_frames, c->tx_frames);
    dict_set(d, MP_QSTR_tx_bytes, c->tx_bytes);
    dict_set(d, MP_QSTR_rx_dropped, c->rx_dropped);
    dict_set(d, MP_QSTR_rx_errors, c->rx_errors);
    dict_set(d, MP_QSTR_rx_missed, c->rx_missed);
    dict_set(d, MP_QSTR_rx_no_buffers, c->rx_no_buffers);
    dict_set(d, MP_QSTR_tx_dropped, c->tx_dropped);
    dict_set(d, MP_QSTR_interrupts, nic->wakeups);
    dict_set(d, MP_QSTR_lwip_assertions, net_assertions);
    dict_set(d, MP_QSTR_time_wait_reused, net_time_wait_reused);
    dict_set(d, MP_QSTR_sockets_refused, net_sockets_refused);
    dict_set(d, MP_QSTR_tcp_write_no_memory, net_tcp_write_no_memory);
    return d;
}
static MP_DEFINE_CONST_FUN_OBJ_1(network_lan_counters_obj, network_lan_counters);

static mp_obj_t pcb_tuple(const struct tcp_pcb *pcb) {
    char remote[24];
    snprintf(remote, sizeof(remote), "%s:%u", ip4addr_ntoa(ip_2_ip4(&pcb->remote_ip)), pcb->remote_port);
    size_t queued = 0;
    for (const struct tcp_seg *seg = pcb->unsent; seg; seg = seg->next) {
        queued += seg->len;
    }
    for (const struct tcp_seg *seg = pcb->unacked; seg; seg = seg->next) {
        queued += seg->len;
    }
    mp_obj_t items[6] = {
        mp_obj_new_str_from_cstr(tcp_debug_state_str(pcb->state)),
        MP_OBJ_NEW_SMALL_INT(pcb->local_port),
        mp_obj_new_str_from_cstr(remote),
        MP_OBJ_NEW_SMALL_INT(pcb->refused_data ? pcb->refused_data->tot_len : 0),
        MP_OBJ_NEW_SMALL_INT(queued),
        MP_OBJ_NEW_SMALL_INT(pcb->rcv_wnd),
    };
    return mp_obj_new_tuple(6, items);
}

// tcp() -> list of (state, local port, "remote:port", bytes refused (arrived before accept() and
// not yet handed over), bytes sent and not yet acknowledged, receive window): lwIP's connections,
// as netstat shows them; listening ports as ("LISTEN", port, "0.0.0.0:0", 0, 0, 0).
static mp_obj_t network_lan_tcp(mp_obj_t self_in) {
    lan_netif();
    mp_obj_t list = mp_obj_new_list(0, NULL);
    for (struct tcp_pcb_listen *l = tcp_listen_pcbs.listen_pcbs; l; l = l->next) {
        mp_obj_t items[6] = { MP_OBJ_NEW_QSTR(MP_QSTR_LISTEN), MP_OBJ_NEW_SMALL_INT(l->local_port),
                              mp_obj_new_str_from_cstr("0.0.0.0:0"), MP_OBJ_NEW_SMALL_INT(0),
                              MP_OBJ_NEW_SMALL_INT(0), MP_OBJ_NEW_SMALL_INT(0) };
        mp_obj_list_append(list, mp_obj_new_tuple(6, items));
    }
    for (struct tcp_pcb *pcb = tcp_active_pcbs; pcb; pcb = pcb->next) {
        mp_obj_list_append(list, pcb_tuple(pcb));
    }
    for (struct tcp_pcb *pcb = tcp_tw_pcbs; pcb; pcb = pcb->next) {
        mp_obj_list_append(list, pcb_tuple(pcb));
    }
    return list;
}
static MP_DEFINE_CONST_FUN_OBJ_1(network_lan_tcp_obj, network_lan_tcp);

static const mp_rom_map_elem_t network_lan_locals_dict_table[] = {
    { MP_ROM_QSTR(MP_QSTR_active), MP_ROM_PTR(&network_lan_active_obj) },
    { MP_ROM_QSTR(MP_QSTR_isconnected), MP_ROM_PTR(&network_lan_isconnected_obj) },
    { MP_ROM_QSTR(MP_QSTR_ifconfig), MP_ROM_PTR(&network_lan_ifconfig_obj) },
    { MP_ROM_QSTR(MP_QSTR_ipconfig), MP_ROM_PTR(&network_lan_ipconfig_obj) },
    { MP_ROM_QSTR(MP_QSTR_status), MP_ROM_PTR(&network_lan_status_obj) },
    { MP_ROM_QSTR(MP_QSTR_config), MP_ROM_PTR(&network_lan_config_obj) },
    { MP_ROM_QSTR(MP_QSTR_counters), MP_ROM_PTR(&network_lan_counters_obj) },
    { MP_ROM_QSTR(MP_QSTR_tcp), MP_ROM_PTR(&network_lan_tcp_obj) },
};
static MP_DEFINE_CONST_DICT(network_lan_locals_dict, network_lan_locals_dict_table);

MP_DEFINE_CONST_OBJ_TYPE(
    network_lan_type,
    MP_QSTR_LAN,
    MP_TYPE_FLAG_NONE,
    make_new, network_lan_make_new,
    print, network_lan_print,
    locals_dict, &network_lan_locals_dict
    );
