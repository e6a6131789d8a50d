/*
 * dst_region.h — one migrating guest RAM region at the destination (struct dst_region):
 * its page-state table, its phase, the two things it talks to through ops tables (the
 * guest's userfaultfd and the link to the source) and its life: created from a REGION,
 * failed, completed, dropped, freed (dst_region.c).
 *
 * The rest of the region's work is one file per concern, each with its header:
 *   dst_pages   page-state transitions and waiting faults: the one place states change
 *   dst_uevent  reading the uffd's events and recording what they say (never places)
 *   dst_place   placing pages: CONTINUE / ZEROPAGE / COPY, EEXIST and EAGAIN handling
 *   dst_map     the class map: ingest, checks, the sweep that places known classes;
 *               version 3's live and fix maps (merged into the class map)
 *   dst_fault   the fault path: the uffd arrives, a fault is read, resolved, answered
 *   dst_fetch   what the link brings (messages, sessions), the finish sweep, the
 *               background work slice; the link's way in
 *   dst_stage   pre-sent DATA pages held aside (a store only, below everything)
 * Calls only go down that list (dst_fetch -> dst_fault -> dst_map -> dst_place ->
 * dst_uevent -> dst_pages, and everything -> dst_region.c -> dst_stage); the peer
 * (dst_peer.c) calls dst_fetch.h and dst_region.h, the region reaches the peer only
 * through struct dst_link.
 *
 * Page-state table: one byte per page (memory stays at 1 byte per guest page):
 *   bits 0-2  class (enum tlm_page_class; 0 = not known yet: the class map has not
 *             covered the page and no reply said what it is)
 *   bits 3-4  state: MISSING (nothing placed), REQUESTED (a DEMAND is queued or in flight
 *             on the current urgent session), PRESENT (placed, or found present: EEXIST),
 *             REMOVED (the guest discarded it: UFFD_EVENT_REMOVE; a fault gets a zero page,
 *             late DATA for it is dropped)
 *   bit 5     FAULTED: at least one guest thread sleeps on a fault for this page; the
 *             placement wakes it and the fault's latency is recorded
 *   bit 6     BADSUM: one PAGE for this page failed its checksum (a second one fails the
 *             region)
 *   bit 7     ZEROFILL: present as a zero page because the guest discarded it; the
 *             kernel's zap that follows a REMOVE event can still take that zero page
 *             away, so a later fault on it places a zero page again (always correct)
 *
 * Placement rules (docs/ARCHITECTURE.md): a page is only ever placed from
 * MISSING/REQUESTED with content that is certain: the local template (TEMPLATE: CONTINUE
 * on the template frame, or COPY of it), a zero page (ZERO, or REMOVED on fault),
 * template page k (REF), or a PAGE whose XXH3-64 matched (DATA), or a staged copy of
 * one (below). A fault whose content is not known yet waits: it is never answered with
 * anything else. In a MINOR region the sweeps do not place TEMPLATE pages: a fault on one
 * is answered by CONTINUE, the others the kernel maps after completion (the region's
 * mapping is the template file: dst_region_tmpl_to_kernel).
 *
 * Live and fix maps (protocol version 3, PROTOCOL.md): a bulk session may bring, while
 * the source guest still runs, a live map (kept in live, never placed from, never used
 * for a fault) and pre-sent DATA pages (checked, then held in the stage, never placed);
 * once the source is frozen, a fix map over the whole region, merged with the live map
 * into fix as it comes (KEEP: the live runs and copies stand; else the final class, the
 * copies of those pages are dropped). Only the final fix frame hands the merged runs to
 * the class map, exactly as if a whole map had come: until then nothing is placed and
 * faults behave as before any map. From then on a staged copy is final content: the
 * sweep and faults place it like a PAGE that just came. A bulk session lost before the
 * final fix frame takes the live map and every staged copy with it (the source starts
 * over); so does a whole map after a live map.
 */
#ifndef TLM_DST_REGION_H
#define TLM_DST_REGION_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <sys/types.h>

#include "evloop.h"
#include "tlm_proto.h"
#include "stats.h"
#include "template.h"
#include "tlm_uffd.h"
#include "dst_stage.h"

struct dst_server;

/* Event-loop priorities of the whole daemon: guest faults first, then demand replies,
 * then the bulk stream, then everything else. */
enum { DST_PRIO_UFFD = 0, DST_PRIO_URGENT, DST_PRIO_BULK, DST_PRIO_OTHER };

/* ---- the guest processes ------------------------------------------------------------------ */

/* One accepted glue connection (one guest process). */
struct dst_glue {
	struct dst_server *srv;
	struct dst_glue *next;
	int fd;                          /* SOCK_SEQPACKET, non-blocking */
	pid_t pid;
	struct tlm_evsrc src;
	bool dead;                       /* closed: freed at the end of the loop iteration */
};

/* ---- the link to the source ------------------------------------------------------------------ */

/*
 * What a region needs from its link to the source page server (the urgent and bulk
 * sessions): dst_peer.c implements it over TCP, the unit tests fake it. The link tells
 * the region what happens through dst_fetch.h (and dst_region_fail); the region never
 * sees how the link works.
 */
struct dst_link;

struct dst_link_ops {
	/* Start opening the sessions; dst_region_connected follows once both are open. */
	void (*connect)(struct dst_link *l);
	/* Both sessions are open and working: demands can be sent. */
	bool (*up)(const struct dst_link *l);
	/* Send DEMANDs for [page, page + count), pages the region just marked REQUESTED
	 * (what does not fit the output waits in order). 0, or -ENOMEM: nothing queued. */
	int (*demand)(struct dst_link *l, uint64_t page, uint32_t count);
	/* DEMAND frames that fit in the output right now (0 while demands wait). */
	size_t (*demand_room)(const struct dst_link *l);
	/* The content and checksum of page in a bulk PAGES frame received but not handled
	 * yet, or NULL (valid until the link's input is handled or read again). */
	const uint8_t *(*buffered)(const struct dst_link *l, uint64_t page, uint64_t *sum);
	/* Handle input held back (bulk frame budget, a yield); true if more is pending. */
	bool (*pump)(struct dst_link *l);
	/* Timer tick: retries, stalls, lost sessions. */
	void (*tick)(struct dst_link *l, uint64_t now_ns);
	/* Bytes of the open sessions (closed ones are in the region's stats). */
	void (*wire)(const struct dst_link *l, uint64_t *in, uint64_t *out);
	/* Close everything and free the link (the region is released). */
	void (*release)(struct dst_link *l);
};

struct dst_link {
	const struct dst_link_ops *ops;
	bool paused;                     /* gave up after the outage limit: waits for resume */
};

/* ---- the guest's userfaultfd --------------------------------------------------------------- */

/*
 * The uffd as the region uses it (tlm_uffd.h semantics: 0 or -errno, *done = bytes placed
 * before an error). dst_place.c has the real one over struct tlm_uffd (ctx); the unit
 * tests substitute a fake that records every call.
 */
struct dst_uffd_ops {
	int (*copy)(void *ctx, void *dst, const void *src, size_t len, size_t *done);
	int (*zeropage)(void *ctx, void *dst, size_t len, size_t *done);
	int (*cont)(void *ctx, void *dst, size_t len, size_t *done);
	int (*wake)(void *ctx, void *addr, size_t len);
	/* Up to max pending events: the count, -EAGAIN when none, or -errno. */
	int (*read_events)(void *ctx, struct tlm_uffd_event *ev, int max);
	int (*unregister)(void *ctx, void *addr, size_t len);
};

/* ---- page-state table -------------------------------------------------------------------- */

#define DST_PG_CLS      0x07u
#define DST_PG_ST_SHIFT 3
#define DST_PG_ST       (0x3u << DST_PG_ST_SHIFT)
#define DST_PG_FAULTED  0x20u
#define DST_PG_BADSUM   0x40u
#define DST_PG_ZEROFILL 0x80u

/* The kernel's own fault-around window (fault_around_bytes, 64 KiB), which it does not
 * apply to a range registered for MINOR faults (--fault-around). */
#define DST_FAULT_AROUND_DEFAULT 16u
#define DST_FAULT_AROUND_MAX     512u

enum dst_pg_state { DST_MISSING = 0, DST_REQUESTED = 1, DST_PRESENT = 2, DST_REMOVED = 3 };

/*
 * Phase of a region. Who moves it:
 *   WAITING_UFFD  REGION came without a uffd; `arm ID` (ctl) sends ARM, the glue's UFFD
 *                 reply moves it to CONNECTING (dst_region_attach_uffd).
 *   CONNECTING    uffd held, faults recorded; the link connects urgent + bulk to the source
 *                 and moves it to MAPPING once both sessions are open (dst_region_connected).
 *   MAPPING       the class map is arriving on bulk and being applied (dst_map_frame and
 *                 the sweep in dst_region_work); once the final frame is applied -> FETCHING.
 *   FETCHING      DATA pages arrive (bulk stream, demand replies); when every page is
 *                 settled (PRESENT/REMOVED, or an unplaced TEMPLATE page where
 *                 dst_region_tmpl_to_kernel) and DONE came, dst_region_work -> COMPLETE.
 *   COMPLETE      unregistered, glue told DONE, sessions closed; kept for stats.
 *   FAILED        unrecoverable (second checksum mismatch, inconsistent source, no source
 *                 after retries): nothing more is placed, guest faults stay waiting.
 * A lost source connection does not change the phase: the link reconnects (faults wait).
 * After --outage-limit without a working session the link is paused (stats show phase
 * "paused"; faults whose content is known locally are still served) until `resume ID`.
 */
enum dst_phase {
	DST_WAITING_UFFD = 0, DST_CONNECTING, DST_MAPPING, DST_FETCHING, DST_COMPLETE,
	DST_FAILED,
};

/* Runs of a class map in page order, with each run's first page (dst_map.c). At most one
 * run per page: bounded by the region. */
struct dst_runs {
	struct tlm_run *run;
	uint64_t *start;                  /* first page of run[i] */
	uint32_t n, cap;                  /* runs, allocated */
	uint64_t end;                     /* first page no run covers */
};

static inline void dst_runs_free(struct dst_runs *rs)
{
	free(rs->run);
	free(rs->start);
	*rs = (struct dst_runs){ 0 };
}

/*
 * Where the current bulk session is with version 3's maps (dst_map.c). Pre-sent DATA is
 * staged from the first live frame to the final fix frame; the state goes back to NONE
 * with the final fix frame (the merged map is the class map) or the session's end.
 */
enum dst_live_state {
	DST_LIVE_NONE = 0,                /* no live map (any more) in this session */
	DST_LIVE_MAP,                     /* live map frames arriving */
	DST_LIVE_HELD,                    /* the live map is complete, no fix frame yet */
	DST_LIVE_FIX,                     /* fix frames arriving */
};

struct dst_live {
	enum dst_live_state state;
	bool sess_map;                    /* a whole or fix frame came in this session */
	struct dst_runs live;             /* the live map as received */
	struct dst_runs fix;              /* the live map with the fixes received so far */
};

/* A guest thread waiting on a page: for the fault latency histogram. */
struct dst_fault {
	uint64_t page;
	uint64_t t_ns;
};

struct dst_region_stats {
	uint64_t pages_by_class[TLM_CLASS_DATA + 1];   /* [0]: class still unknown */
	uint64_t faults, faults_by_class[TLM_CLASS_DATA + 1], faults_present, faults_removed;
	uint64_t placed_by_class[TLM_CLASS_DATA + 1];
	uint64_t data_pages_in, data_pages_dropped;      /* PAGEs received / not used */
	uint64_t data_from_buffer;       /* faults placed from bulk frames not handled yet */
	uint64_t demand_msgs, demand_pages, checksum_errors, eexist, continue_fallbacks;
	uint64_t fault_around;            /* TEMPLATE pages CONTINUEd around a fault */
	uint64_t finish_demanded;                         /* DATA pages missing after DONE */
	uint64_t wire_in, wire_out;                       /* of closed sessions */
	uint64_t sessions, reconnects;
	uint64_t source_sent, source_total;               /* last PROGRESS of the source */
	uint64_t adopted;                                 /* found present when attaching */
	/* Pre-sent DATA (dst_stage.h): received = copies taken into the stage, each of which
	 * ends placed, invalidated (replaced by a newer one, a non-KEEP fix run, a lost
	 * session, a whole map, its page present or discarded another way, the region
	 * released) or is still held: received = placed + invalidated + held. Dropped ones were
	 * never held: no room (dropped_full) or a bad checksum (dropped_badsum, which also
	 * invalidates an older copy of the page). */
	struct {
		uint64_t received, placed, invalidated, dropped_full, dropped_badsum;
	} stage;
	/* Fault service latency, from reading the fault to the placing ioctl (which wakes):
	 * all faults, by class placed, and split by how: from local knowledge (template,
	 * zero, known class) or after a DEMAND round trip to the source. */
	struct tlm_hist lat_all, lat_cls[TLM_CLASS_DATA + 1], lat_local, lat_demand;
};

struct dst_region {
	struct tlm_evloop *loop;          /* the daemon's: the uffd is watched there */
	struct dst_link *link;            /* to the source (NULL once released) */
	bool link_more;                   /* the link holds input back: pump it again */
	struct dst_glue *glue;            /* NULL once the guest process is gone */
	struct dst_region *next;
	char id[TLM_PROTO_VMID_MAX + 1];
	char source[TLM_LOCAL_PATH_MAX];  /* host:port of tlm-page-server (`resume` may change) */
	enum dst_phase phase;
	bool dead;                        /* dropped: freed at the end of the loop iteration */
	bool released;                    /* sessions, uffd and tables released */
	bool arm_sent;

	uint8_t *base;                    /* guest address of page 0 (in the glue's process) */
	uint64_t size, npages, offset;
	uint32_t flags;                   /* TLM_REGION_* */
	uint8_t digest[16];
	struct tlm_tmpl *tmpl;            /* local template (NULL without one) */
	uint64_t tmpl_base;               /* template page of region page 0: offset / 4096 */
	bool minor;                       /* registered MINOR: TEMPLATE pages via CONTINUE */
	/* A TEMPLATE fault of a MINOR region CONTINUEs the unplaced TEMPLATE pages of the
	 * aligned window of this many pages around it (dst_fault.c; 1: the page alone). */
	uint32_t fault_around;

	const struct dst_uffd_ops *uops;  /* NULL until attached and once released */
	void *uctx;
	struct tlm_uffd uffd;             /* the real one (uctx), fd -1 without */
	struct tlm_evsrc uffd_src;        /* uffd.fd in the loop once attached */

	uint8_t *pg;                      /* page-state table, npages bytes */
	uint64_t n_present, n_removed, n_requested;
	/* TEMPLATE pages not placed (MISSING or REQUESTED), kept by dst_pg_set_state and
	 * dst_pg_set_cls. A class in the table is final (a map or reply that contradicts it
	 * fails the region; live maps never reach the table), so where
	 * dst_region_tmpl_to_kernel holds these pages count as settled. */
	uint64_t n_tmpl_left;

	/* The class map as received, runs in page order (kept until the region is released:
	 * REF lookups of faulted pages search it). Frames are appended, so the bulk stream
	 * never waits for the sweep; a map resent after a reconnect only checks what is
	 * covered already. */
	struct dst_runs map;
	uint32_t mcur;                    /* the run being swept */
	uint64_t mpos;                    /* pages of map.run[mcur] already swept */
	bool map_final;                   /* the final CLASS_MAP frame was ingested */
	const char *map_kind;             /* how it came: "whole", "live+fix"; NULL: not yet */
	struct dst_live lv;               /* version 3: this session's live and fix maps */
	struct dst_stage stage;           /* pre-sent DATA pages held aside */
	bool done_rcvd;                   /* DONE came on bulk */
	/* A session after one that brought the whole class map: the pages still missing are
	 * demanded at once (finish sweep) and the region completes when they are present,
	 * without waiting for the resent bulk stream's DONE (the source sends a page it has
	 * already queued on bulk there, not on urgent: bulk is still read). */
	bool resumed;
	uint64_t finish_cursor;           /* after DONE: next page to check for leftovers */

	struct dst_fault *faults;         /* waiting faults (latency), bounded */
	size_t nfaults, faults_cap;
	uint64_t *redo;                   /* pages whose waiting fault must be re-handled */
	size_t nredo, redo_cap;

	struct dst_region_stats st;
	uint64_t t_start_ns, t_end_ns;    /* REGION received; COMPLETE/FAILED */
	uint64_t t_map_ns, t_done_ns;     /* class map applied; first DONE (stats) */
	uint64_t t_map_rcvd_ns;           /* final class map frame received (stats) */
	uint64_t t_fix_ns;                /* final fix map frame received (stats) */
	uint64_t last_progress_ns, last_progress_present;
	char fail_reason[TLM_LOCAL_PATH_MAX];
};

static inline unsigned dst_pg_cls(const struct dst_region *r, uint64_t i)
{
	return r->pg[i] & DST_PG_CLS;
}

static inline enum dst_pg_state dst_pg_state(const struct dst_region *r, uint64_t i)
{
	return (enum dst_pg_state)((r->pg[i] & DST_PG_ST) >> DST_PG_ST_SHIFT);
}

/* Not placed yet and not discarded: a placement may target it. */
static inline bool dst_pg_placeable(const struct dst_region *r, uint64_t i)
{
	enum dst_pg_state s = dst_pg_state(r, i);

	return s == DST_MISSING || s == DST_REQUESTED;
}

/* Placement allowed: alive, holding the uffd, not finished. */
static inline bool dst_region_live(const struct dst_region *r)
{
	return !r->dead && r->uops &&
	       (r->phase == DST_CONNECTING || r->phase == DST_MAPPING ||
		r->phase == DST_FETCHING);
}

static inline bool dst_region_active(const struct dst_region *r)
{
	return !r->dead && r->phase != DST_COMPLETE && r->phase != DST_FAILED;
}

/* Pre-sent DATA is being staged: a live map began in this session, no final fix yet. */
static inline bool dst_region_staging(const struct dst_region *r)
{
	return r->lv.state != DST_LIVE_NONE;
}

/* Staged copies are final content (the final fix frame came) and there are some. */
static inline bool dst_stage_usable(const struct dst_region *r)
{
	return r->stage.held && !dst_region_staging(r);
}

/*
 * TEMPLATE pages may be left to the kernel: the guest maps the template file privately
 * (MINOR), so once the region is unregistered the kernel maps such a page from the
 * template's page cache on first touch (a read shares the frame, a write gets a private
 * copy): exactly the page UFFDIO_CONTINUE would have mapped. Only once the class map is
 * final (whole map, or live map + final fix frame): until then the region does not
 * count them as settled and the finish sweep places them as before.
 */
static inline bool dst_region_tmpl_to_kernel(const struct dst_region *r)
{
	return r->minor && r->map_final && !dst_region_staging(r);
}

/* Pages that need nothing more: placed, discarded, or TEMPLATE left to the kernel. */
static inline uint64_t dst_region_settled(const struct dst_region *r)
{
	return r->n_present + r->n_removed +
	       (dst_region_tmpl_to_kernel(r) ? r->n_tmpl_left : 0);
}

static inline bool dst_link_up(const struct dst_region *r)
{
	return r->link && r->link->ops->up(r->link);
}

/* ---- lifecycle (dst_region.c) ---------------------------------------------------------------- */

/* The live (not dead) region named id in list, or NULL. */
struct dst_region *dst_region_find(struct dst_region *list, const char *id);
const char *dst_phase_name(enum dst_phase p);
/* The phase as reported: "paused" while the link waits for `resume`. */
const char *dst_region_phase_name(const struct dst_region *r);

/* From a checked REGION message; whoever creates it gives it its link. Returns NULL
 * with err set. */
struct dst_region *dst_region_new(struct tlm_evloop *loop, struct dst_glue *g,
				  const struct tlm_local_msg *m, struct tlm_tmpl *tmpl,
				  const char *source, char *err, size_t errlen);
/* Nothing more is placed; the glue gets ERROR; faults keep waiting. */
void dst_region_fail(struct dst_region *r, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));
void dst_region_notify_glue(struct dst_region *r, uint32_t type, const char *text);
/* Every page is settled: unregister, tell the glue DONE, release. */
void dst_region_complete(struct dst_region *r);
/* Sessions, uffd and tables go; the counters stay for stats. Only at safe points of the
 * loop: deep inside a placement or a frame loop a failure only sets the phase. */
void dst_region_release(struct dst_region *r);
/* The guest is gone or the region is refused: release everything but the stats. */
void dst_region_drop(struct dst_region *r, const char *why);
void dst_region_free(struct dst_region *r);

#endif /* TLM_DST_REGION_H */
