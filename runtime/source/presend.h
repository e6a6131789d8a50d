/*
 * presend.h — what a bulk session sends while its region is in the live phase (protocol
 * version 3, protocol/PROTOCOL.md "Live and fix maps"), and the switch policy: when the
 * source has sent enough for the orchestrator to stop the guest.
 *
 *   live map     the worker's classes when its first pass ends (tlm_live_take_map),
 *                sent as CLASS_MAP kind LIVE from page 0; kept here as sent.
 *   pre-sent     (policy hybrid, auto) PAGES of the live map's DATA pages in rounds:
 *                round 1 every one, round k+1 those without a valid copy at the
 *                destination (never sent, or written since: live.h, rules 5-7). A round
 *                lasts at least TLM_PRESEND_ROUND_MS (a worker collect falls in it);
 *                pre-sending stops at --presend-max bytes per VM.
 *   fix map      at freeze, after tlm_live_finish: from page 0, KEEP where the final
 *                class (and REF page) equals the live map's and the page has no invalid
 *                pre-sent copy, else the final class. valid = sent && !wrote && KEEP:
 *                the bulk stream skips those DATA pages.
 *   ready        post: once the live map is sent. hybrid: once a round leaves at most
 *                --presend-left pages without a valid copy, or after --presend-rounds
 *                rounds. auto (AdaMig-style): also when the next round is predicted to
 *                leave half of this round's leftover or more (a write-heavy guest: the
 *                rest goes post-copy). Ready ends the rounds (the stop follows).
 *
 *     tlm_presend_new(r, &cfg)          // live phase started
 *     tlm_presend_adopt(r)              // loop: take the live map once published
 *     tlm_presend_session(r)            // a new bulk session: forget what was sent
 *     n = tlm_presend_pick(r, now, pages, max); tlm_presend_read(...);
 *     tlm_presend_queued(r, page, n)    // per PAGES frame queued
 *     tlm_presend_freeze(r)             // after tlm_live_finish succeeded: fix map
 *     tlm_presend_valid(r, page)        // bulk stream of a session that sent the fix
 *
 * Everything here belongs to the event loop; only `wrote` (live.h) is shared with the
 * live worker.
 */
#ifndef TLM_PRESEND_H
#define TLM_PRESEND_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "classify.h"
#include "src_region.h"

#define TLM_PRESEND_ROUND_MS 100u   /* shortest round: two worker collect periods */

enum tlm_policy { TLM_POLICY_POST = 0, TLM_POLICY_HYBRID, TLM_POLICY_AUTO };
enum tlm_premap { TLM_PREMAP_NONE = 0, TLM_PREMAP_SENDING, TLM_PREMAP_SENT };

struct tlm_presend_cfg {
	int policy;              /* enum tlm_policy */
	uint64_t max_bytes;      /* --presend-max: pre-sent bytes per VM, resends included */
	uint64_t left_max;       /* --presend-left: pages a converged round may leave */
	unsigned rounds_max;     /* --presend-rounds */
};

struct tlm_presend_stats {
	unsigned round;            /* current round (0: none yet) */
	uint64_t sent, resent;     /* pages pre-sent (this bulk session); sent again */
	uint64_t left;             /* live-map DATA pages without a valid copy, last round */
	double dirty_pps, send_pps;
	uint64_t bytes;            /* pre-sent bytes, all sessions (--presend-max) */
	uint64_t fix_runs, keep_pages, valid, invalid;   /* at freeze */
};

struct tlm_presend {
	struct tlm_presend_cfg cfg;
	struct tlm_cls_map *live;  /* the live map as sent; NULL until taken */
	struct tlm_cls_map fix;    /* built at freeze */
	bool fixable;              /* fix built from a trusted live result */
	uint64_t *sent;            /* bitmap: copies queued in this bulk session; from
	                            * tlm_presend_freeze on: the valid copies */
	int premap;                /* enum tlm_premap, of the current bulk session */
	uint64_t cursor;           /* next page of the round */
	uint64_t t_round;          /* round start (ns) */
	uint64_t round_sent;
	bool ready, stopped;
	char ready_why[200];
	struct tlm_presend_stats st;
};

const char *tlm_policy_name(int policy);
/* "post", "hybrid", "auto": the enum, or -EINVAL. */
int tlm_policy_parse(const char *s);
const char *tlm_premap_name(int premap);

/* r->pre for a region whose live phase just started. 0 or -ENOMEM. */
int tlm_presend_new(struct tlm_src_region *r, const struct tlm_presend_cfg *cfg);
void tlm_presend_free(struct tlm_presend *p);

/* The live map is here (taken from the worker now or before). */
bool tlm_presend_adopt(struct tlm_src_region *r);
/* A bulk session starts: nothing of the region is at the destination. */
void tlm_presend_session(struct tlm_src_region *r);
/* The bulk session queued the last frame of the live map. */
void tlm_presend_map_sent(struct tlm_src_region *r);
/* Progress tick without a bulk session: take the live map once published (never ready
 * then: nothing can go ahead of the stop). */
void tlm_presend_tick(struct tlm_src_region *r, bool bulk_session);

/* Up to max pages to pre-send now, in page order (rounds start and end here). 0: none
 * now (policy post, budget spent, round over and the next one not due, no live map). */
unsigned tlm_presend_pick(struct tlm_src_region *r, uint64_t now, uint64_t *pages,
			  unsigned max);
/* Read picked pages for sending (clears their `wrote` bits first). 0 or -errno. */
int tlm_presend_read(struct tlm_src_region *r, const uint64_t *pages, unsigned n,
		     uint8_t *buf, const uint8_t **ptrs, char *err, size_t errlen);
/* Pre-sending cannot go on (a read failed): ready, why says so; freeze decides the rest. */
void tlm_presend_stop(struct tlm_src_region *r, const char *why);
/* n pages from page on were queued; pages read but not queued: tlm_presend_unread. */
void tlm_presend_queued(struct tlm_src_region *r, uint64_t page, uint32_t n);
void tlm_presend_unread(struct tlm_src_region *r, const uint64_t *pages, unsigned n);

/* Freeze, after tlm_live_finish built r->map: the fix map and the valid copies. Without
 * a live map nothing is done (fixable stays false). 0 or -ENOMEM. */
int tlm_presend_freeze(struct tlm_src_region *r);
/* After tlm_presend_freeze: the destination holds a valid copy of page. */
bool tlm_presend_valid(const struct tlm_presend *p, uint64_t page);

#endif
