/*
 * src_server.h — tlm-page-server as a library: start a server from its configuration, run
 * its event loop until SIGTERM/SIGINT or `shutdown`, clean up.
 *
 *     struct tlm_ps ps = TLM_PS_INIT;
 *     struct tlm_ps_config c = { .listen = "0.0.0.0:7000", .key = "k", .ctl = "ctl.sock",
 *                                .bulk_ahead = 8 << 20 };
 *     if (tlm_ps_start(&ps, &c) == 0) { tlm_ps_announce(&ps); rc = tlm_ps_run(&ps); }
 *     tlm_ps_cleanup(&ps);
 */
#ifndef TLM_SRC_SERVER_H
#define TLM_SRC_SERVER_H

#include <stdbool.h>
#include <stdint.h>

#include "src_session.h"

struct tlm_ps_config {
	const char *listen, *key, *ctl;     /* HOST:PORT, key file, control socket path */
	bool tls;                           /* --tls psk: TLS 1.3 keyed from the key file */
	const char **regions;               /* region SPECs (see --help) */
	int nregions;
	uint64_t bulk_delay_ms;             /* DATA stream starts this long after freeze */
	bool bulk_hold;                     /* DATA stream starts at `bulk-release` */
	uint64_t bulk_ahead;                /* see demand_rides_bulk (src_session.c) */
	uint64_t bulk_lowat;                /* TCP_NOTSENT_LOWAT of bulk sockets (0: unset) */
	uint64_t live_rate;                 /* live phase reads, bytes/s (0: no limit) */
	struct tlm_pace_cfg pace;           /* --bulk-pace (pace.h; zeroed = auto) */
	struct tlm_presend_cfg presend;     /* --policy, --presend-max (bytes),
	                                     * --presend-left, --presend-rounds */
};

#define TLM_PS_INIT { .loop = { .epfd = -1 }, .lfd = -1, .ctlfd = -1, .sigfd = -1, .tfd = -1, \
		      .hs_pipe = { -1, -1 } }

/* Load the key, add the regions, listen, set up the loop: 0, or -errno (logged). */
int tlm_ps_start(struct tlm_ps *ps, const struct tlm_ps_config *c);
/* Print "port N" on stdout (a port of 0 picked one) and log the start. */
void tlm_ps_announce(struct tlm_ps *ps);
/* The event loop: 0 after a clean shutdown, -errno on a runtime failure. */
int tlm_ps_run(struct tlm_ps *ps);
void tlm_ps_cleanup(struct tlm_ps *ps);

#endif
