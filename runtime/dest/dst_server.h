/*
 * dst_server.h — tlm-uffd-server, the destination daemon: its event loop, the glue
 * socket, the control socket, the regions it migrates.
 *
 * One thread, one level-triggered loop (evloop.h). Each iteration handles the ready
 * events in priority order — uffds (guest threads are waiting), urgent sessions (demand
 * replies), bulk sessions, everything else — then gives every region a bounded slice of
 * background work (class map sweep, buffered bulk frames). While background work remains,
 * the loop does not sleep.
 *
 * Glue protocol (protocol/tlm_proto.h, local messages): a guest process connects to
 * --sock (SOCK_SEQPACKET), we check SO_PEERCRED, it sends REGION (+ uffd when armed at
 * map time); a region without uffd waits for `arm ID`, which sends ARM, and the glue
 * answers UFFD + fd. We answer DONE when every page is settled (placed, discarded, or a
 * TEMPLATE page left to the kernel: dst_region_tmpl_to_kernel) after unregistering, or
 * ERROR with a reason.
 *
 * Pre-sent DATA pages (protocol version 3: sent while the source guest still runs, held
 * until the fix map says they stand) of all regions together take at most --stage-max
 * MiB (dst_stage.h); a page that does not fit is fetched later like any missing page.
 */
#ifndef TLM_DST_SERVER_H
#define TLM_DST_SERVER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "evloop.h"
#include "dst_peer.h"
#include "dst_region.h"

/* What tlm-uffd-server's command line says. */
struct dst_server_opts {
	const char *sock, *ctl, *key, *source;   /* --sock, --ctl, --key, --source (or NULL) */
	const char **tmpl;                       /* --template files */
	size_t ntmpl;
	bool exit_when_done, progress;
	uint64_t outage_limit_ms, stall_ms;
	uint64_t stage_max;                      /* --stage-max, bytes (0: hold nothing) */
	enum dst_net_io net_io;                  /* --net-io */
	bool tls;                                /* --tls psk */
	uint64_t bulk_rcvbuf;                    /* --bulk-rcvbuf, bytes (0: autotuning) */
	uint64_t fault_around;                   /* --fault-around, pages */
};

struct dst_server {
	struct tlm_evloop loop;
	struct dst_peer_cfg peer;        /* key, outage limit, stall timeout */
	struct dst_stage_pool stage;     /* pre-sent pages of every region (--stage-max) */
	const char *default_source;      /* --source, may be NULL */
	struct tlm_tmpl **tmpls;         /* --template files, opened at startup */
	size_t ntmpls;
	struct dst_region *regions;      /* every region, newest first */
	struct dst_glue *glues;
	bool exit_when_done, progress, stop;
	uint32_t fault_around;           /* --fault-around, given to each region */
	const char *sock_path, *ctl_path;
	int glue_lfd, ctl_lfd, sig_fd, timer_fd;
	struct tlm_evsrc ev_glue, ev_ctl, ev_sig, ev_timer;
	uint64_t last_progress_ns;
};

/* Key, templates, sockets, signals, timer. 0, or -1 with the reason logged; call
 * dst_server_close either way. */
int dst_server_open(struct dst_server *s, const struct dst_server_opts *o);
/* Run until shutdown (signal, `shutdown`, --exit-when-done). 0, or 1 when the loop broke
 * or (--exit-when-done) a region failed. */
int dst_server_run(struct dst_server *s);
/* Close everything without unregistering: the glue's uffd copy keeps guest faults
 * waiting for a daemon that may come back. */
void dst_server_close(struct dst_server *s);

#endif /* TLM_DST_SERVER_H */
