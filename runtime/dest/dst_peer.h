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
 */
#ifndef TLM_DST_PEER_H
#define TLM_DST_PEER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "evloop.h"
#include "tlm_proto.h"

struct dst_region;
struct dst_connect_job;

/* Event-loop priorities of the whole daemon: guest faults first, then demand replies,
 * then the bulk stream, then everything else. */
enum { DST_PRIO_UFFD = 0, DST_PRIO_URGENT, DST_PRIO_BULK, DST_PRIO_OTHER };

/* ---- sessions ---------------------------------------------------------------------------- */

#define DST_PEER_RETRY_MAX_MS 2000      /* backoff ceiling between connection attempts */

/* The daemon's settings every peer shares. */
struct dst_peer_cfg {
	struct tlm_key key;              /* --key: pre-shared with the source */
	uint64_t outage_limit_ms;        /* --outage-limit: source unreachable -> paused */
	uint64_t stall_ms;               /* --stall-timeout: demands unanswered -> reconnect */
};

struct dst_conn {
	struct dst_region *r;
	struct tlm_conn c;               /* c.fd -1 while down */
	struct tlm_evsrc src;            /* c.fd in the loop while up */
	uint8_t chan;                    /* TLM_CHAN_URGENT / TLM_CHAN_BULK */
	bool up;
};

struct dst_peer {
	struct dst_conn urg, bulk;
	unsigned attempts;               /* failed attempts in a row */
	uint64_t retry_at;               /* CLOCK_MONOTONIC ns of the next attempt, 0 = none */
	uint64_t outage_since;           /* first failure since a frame was handled, 0 = none */
	bool paused;                     /* outage limit reached: no attempts until resumed */
	uint64_t last_input_ns;          /* last byte read on either channel (or connected) */
	struct dst_connect_job *job;     /* connection attempt under way (its own thread) */
	bool bulk_more;                  /* bulk frames may be buffered (paused / budget) */
	bool lost;                       /* a session broke: closed at the next safe point */
	uint64_t *backlog;               /* REQUESTED pages not yet queued on urgent */
	size_t nbacklog, backlog_cap;
	uint64_t progress_sent, progress_total;
	char last_err[256];
};

void dst_peer_init(struct dst_region *r);
void dst_peer_fini(struct dst_region *r);
/* Start opening both sessions (in a thread: connect + handshake block); when it ends,
 * the loop attaches them, or a retry is scheduled (or the region fails). */
void dst_peer_connect(struct dst_region *r);
/* Close both sessions (counters are added to the region's stats). */
void dst_peer_close(struct dst_region *r);
bool dst_peer_up(const struct dst_region *r);
/* Demand [page, page+count) (pages already REQUESTED/PRESENT/REMOVED are skipped).
 * Without an urgent session the pages stay MISSING and are demanded after connecting. */
void dst_peer_demand(struct dst_region *r, uint64_t page, uint32_t count);
/* Free urgent output space in DEMAND frames (for the after-DONE sweep). */
size_t dst_peer_demand_room(const struct dst_region *r);
/* Process bulk frames buffered while paused; true if more are pending. */
bool dst_peer_work(struct dst_region *r);
void dst_peer_tick(struct dst_region *r, uint64_t now_ns);
/* Leave the paused state (new source address if not NULL) and connect at the next tick.
 * -EINVAL if the peer is not paused. */
int dst_peer_resume(struct dst_region *r, const char *source);
uint64_t dst_peer_wire_in(const struct dst_region *r);
uint64_t dst_peer_wire_out(const struct dst_region *r);

#endif /* TLM_DST_PEER_H */
