/*
 * src_session.h — tlm-page-server internals shared by page_server.c (main, event loop,
 * control commands) and src_session.c (destination sessions: handshake, urgent demand
 * service, bulk stream).
 *
 * One session = one TCP connection of one VM (urgent or bulk). A region has at most one
 * of each; a second one is refused with ERROR BUSY. Sessions never touch another region,
 * and a session's failure closes that session only.
 */
#ifndef TLM_SRC_SESSION_H
#define TLM_SRC_SESSION_H

#include <stdbool.h>
#include <stdint.h>

#include "evloop.h"
#include "tlm_proto.h"
#include "tlm_tls.h"
#include "src_region.h"
#include "presend.h"
#include "pace.h"

/* Event priorities (evloop.h): demands first, then the stream, then the rest. */
enum { PS_PRIO_URGENT = 0, PS_PRIO_BULK, PS_PRIO_OTHER };

struct tlm_ps {
	struct tlm_evloop loop;
	int lfd, ctlfd, sigfd, tfd;
	struct tlm_key key;
	struct tlm_tls *tls;                /* --tls psk: TLS under every session, else NULL */
	const char *ctl_path;
	struct tlm_src_region *regions;     /* singly linked, in the order added */
	struct tlm_ps_sess *sessions;       /* every session, live or waiting to be freed */
	uint64_t bulk_hold_ns;              /* --bulk-delay: DATA stream starts this long
	                                     * after freeze (benchmarks: demand-only faults) */
	uint64_t bulk_ahead_max;            /* --bulk-ahead: see demand_rides_bulk */
	struct tlm_pace_cfg pace;           /* --bulk-pace (pace.h) */
	int bulk_lowat;                     /* --bulk-lowat: TCP_NOTSENT_LOWAT of bulk
	                                     * sockets, bytes (0: the kernel's) */
	bool bulk_hold;                     /* --bulk-hold: new regions hold their stream */
	uint64_t live_rate;                 /* --live-rate, bytes/s (0: no limit) */
	struct tlm_presend_cfg presend;     /* --policy, --presend-*: per `live` call the
	                                     * policy may differ (region's cfg) */
	bool stop;
	/* Handshakes run in threads of their own (an unauthenticated peer must not hold
	 * the loop); each finished one comes back as a pointer on hs_pipe. */
	int hs_pipe[2];
	unsigned handshakes;                /* in progress; written by the loop only */
	struct tlm_evsrc src_listen, src_ctl, src_sig, src_timer, src_hs;
};

/* Where a bulk session stands; the region's phase says the same from the VM's view. */
enum tlm_bulk_state {
	BULK_WAIT = 0,   /* nothing to send yet: no live map, region not classified */
	BULK_LIVE_MAP,   /* live phase: sending the live map (presend.h) */
	BULK_PRESEND,    /* live phase: live map sent; pre-sending DATA (hybrid, auto) */
	BULK_MAP,        /* frozen: sending the fix map or the whole map */
	BULK_PAGES,      /* sending DATA pages in page order */
	BULK_FINISHED,   /* DONE queued */
};

struct tlm_demand {
	uint64_t page;
	uint32_t count;
};

#define PS_DEMAND_QUEUE 1024u   /* queued DEMANDs before we stop reading the socket */
#define PS_BULK_FRAMES  8192u   /* bulk DATA frames remembered for demand_rides_bulk */
#define PS_RA_BUFS      4u      /* read-ahead buffers: one is read while the others go out */
#define PS_JUMP_PAGES   256u    /* a demand's neighbourhood the bulk stream sends next */
#define PS_JUMP_FRAMES  256u    /* neighbourhood frames remembered for demand_rides_bulk */

/* Where a DATA frame queued on bulk ends in the session's stream (bytes). */
struct tlm_bulk_frame {
	uint64_t page;
	uint32_t count;
	uint64_t end;
};

/* The last cap DATA frames queued, oldest first (f NULL: no memory, none remembered). */
struct tlm_bulk_ring {
	struct tlm_bulk_frame *f;
	unsigned n, head, cap;
};

struct tlm_ps_sess {
	struct tlm_evsrc src;          /* the connection in the loop (src.events: interest) */
	struct tlm_ps *ps;
	struct tlm_src_region *r;
	struct tlm_conn c;
	uint8_t chan;                  /* TLM_CHAN_URGENT / TLM_CHAN_BULK */
	bool dead;                     /* closed; freed at the end of the loop iteration */
	char peer[64];
	uint64_t handshake_bytes;      /* handshake frames, before c existed */

	/* urgent: ring of DEMANDs; dq_done pages of the head one are answered */
	struct tlm_demand dq[PS_DEMAND_QUEUE];
	unsigned dq_head, dq_len;
	uint32_t dq_done;

	/* bulk */
	enum tlm_bulk_state bstate;
	const struct tlm_cls_map *mout;   /* the map being sent (whole, live or fix) */
	uint8_t mkind;                 /* its enum tlm_map_kind */
	bool carried_live;             /* the whole live map went out on this session */
	bool skip_valid;               /* the fix went out: skip valid pre-sent copies */
	bool presend_idle;             /* nothing to pre-send until the next tick */
	size_t map_run;                /* next run to put in a CLASS_MAP frame */
	uint64_t cursor;               /* next page to look at for DATA */
	uint64_t data_passed;          /* DATA pages behind the cursor (sent or skipped) */
	uint64_t payload;              /* page bytes sent on this session */
	uint64_t ra_page[TLM_SRC_READ_MAX];   /* read-ahead: pages read, not yet queued */
	const uint8_t *ra_ptr[TLM_SRC_READ_MAX];
	unsigned ra_n, ra_i;
	uint8_t *ra_buf;               /* PS_RA_BUFS buffers of TLM_SRC_READ_MAX pages, pid
	                                * sources: queued PAGES frames reference them */
	uint64_t ra_busy[PS_RA_BUFS];  /* buffer k is referenced until c.bytes_out gets here */
	unsigned ra_cur;               /* the buffer the read-ahead is in */
	struct tlm_bulk_ring frames;   /* the cursor's frames, in page order (it only moves
	                                * forward) */
	/* A demand ahead of the cursor makes the stream send the DATA pages after it next
	 * (bulk_jump): jump_left pages from jump_page on are still to look at. */
	uint64_t jump_page;
	unsigned jump_left;
	bool ra_jump;                  /* the read-ahead holds neighbourhood pages */
	uint64_t *jumped;              /* bitmap: pages the cursor finds sent by a jump */
	struct tlm_bulk_ring jframes;  /* the neighbourhood frames, in stream order */
	struct tlm_pace pace;          /* kept below a WAN bottleneck (pace.h) */

	struct tlm_ps_sess *next;
};

/* Listening socket readable: accept, start each connection's handshake in a thread (at
 * most PS_HANDSHAKES_MAX at a time, more are closed at once). */
void tlm_ps_accept(struct tlm_ps *ps);
/* hs_pipe readable: admit the sessions whose handshake finished (VM_OPEN checked,
 * VM_ACCEPT or ERROR sent). */
void tlm_ps_handshakes_done(struct tlm_ps *ps);
/* Shutdown: wait for the handshakes in progress (each ends within its timeout), close them. */
void tlm_ps_handshakes_drain(struct tlm_ps *ps);
/* epoll event on a session; urgent input is served at once, bulk only flagged. */
void tlm_ps_sess_event(struct tlm_evsrc *src, uint32_t events);
/* Queue a bounded batch of bulk output while the connection has room. */
void tlm_ps_bulk_pump(struct tlm_ps_sess *s);
/* Region classified (or failed): answer queued demands, start the bulk stream. */
void tlm_ps_region_ready(struct tlm_ps *ps, struct tlm_src_region *r);
/* Every ~100 ms: PROGRESS on streaming bulk sessions; in the live phase the live map
 * once published, pre-sending rounds, the switch decision. */
void tlm_ps_progress_tick(struct tlm_ps *ps);
/* Bytes the region's bulk session has not delivered yet: queued here and in the socket's
 * send queue (SIOCOUTQ: unsent + unacknowledged); 0 without a session. */
uint64_t tlm_ps_bulk_backlog(const struct tlm_src_region *r);
/* The kernel's smoothed round-trip time of the bulk session, µs (TCP_INFO); 0 without a
 * session. Tells an orchestrator how far the destination is. */
uint32_t tlm_ps_bulk_rtt_us(const struct tlm_src_region *r);
/* Close with a reason (logged as a warning unless NULL = orderly). */
void tlm_ps_sess_close(struct tlm_ps_sess *s, const char *why);
/* Free closed sessions (end of a loop iteration) or all (shutdown). */
void tlm_ps_reap(struct tlm_ps *ps, bool all);
/* Wire bytes of a region's sessions, live and ended (stats). */
uint64_t tlm_ps_wire_bytes(const struct tlm_src_region *r);

#endif /* TLM_SRC_SESSION_H */
