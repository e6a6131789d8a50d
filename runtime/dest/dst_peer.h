/*
 * dst_peer.h — tlm-uffd-server's two TCP sessions to the source tlm-page-server for one
 * region: urgent (DEMAND out, PAGE/ZERO/REF replies in) and bulk (CLASS_MAP, the PAGE
 * stream, PROGRESS, DONE in).
 *
 * Connecting: tlm_tcp_connect + tlm_proto_client_handshake (blocking, bounded by a few
 * seconds) in a thread of their own, so the loop keeps serving faults; then both sockets
 * become non-blocking struct tlm_conn in the event loop.
 * A lost session is retried with backoff (the daemon's timer); faults keep waiting
 * meanwhile and their pages are demanded again on the new session. An outage (no frame
 * handled) longer than the server's outage limit pauses the peer: no more attempts, the
 * guest's faults keep waiting, `resume ID [HOST:PORT]` (ctl) starts again. A source that
 * leaves demands unanswered and sends nothing for the server's stall timeout counts as a
 * lost session (it may be hung with its connections open).
 *
 * Demand: a page is demanded at most once per session (state REQUESTED); when the urgent
 * output buffer is full the request waits in a backlog.
 * Bulk input is paused while a class map frame is still being applied (TCP backpressure
 * keeps memory bounded).
 *
 * The region sees a peer only as its struct dst_link (dst_region.h); the peer tells the
 * region what arrives through dst_fetch.h (and dst_region_fail).
 */
#ifndef TLM_DST_PEER_H
#define TLM_DST_PEER_H

#include <stdint.h>

#include "dst_rx.h"
#include "tlm_proto.h"
#include "tlm_tls.h"

struct dst_region;

#define DST_PEER_RETRY_MAX_MS 2000      /* backoff ceiling between connection attempts */
#define DST_PEER_RCVBUF_DEFAULT (1u << 20)  /* bulk SO_RCVBUF (--bulk-rcvbuf) */

/* The daemon's settings every peer shares (they must outlive the peers). */
struct dst_peer_cfg {
	struct tlm_key key;              /* --key: pre-shared with the source */
	struct tlm_tls *tls;             /* --tls psk: TLS under both channels, else NULL */
	uint64_t outage_limit_ms;        /* --outage-limit: source unreachable -> paused */
	uint64_t stall_ms;               /* --stall-timeout: demands unanswered -> reconnect */
	enum dst_net_io net_io;          /* bulk input: uring or syscall (chosen at start) */
	int bulk_rcvbuf;                 /* SO_RCVBUF of bulk sockets, bytes (0: autotuning) */
};

/* Give r its link (r->link), idle until the region connects it. 0 or -ENOMEM. */
int dst_peer_attach(struct dst_region *r, const struct dst_peer_cfg *cfg);
/* Leave the paused state (new source address if not NULL) and connect at the next tick.
 * -EINVAL if r's link is not paused. */
int dst_peer_resume(struct dst_region *r, const char *source);

#endif /* TLM_DST_PEER_H */
