/*
 * dst_pages.h — a region's page-state transitions (the table's layout and the states are
 * described in dst_region.h) and its waiting faults. Every change of a page's state byte
 * goes through here, so the counters (present, removed, requested, TEMPLATE pages left,
 * pages by class, placed by class) and the fault latency records always agree with the table.
 *
 * Transitions:
 *   MISSING   -> REQUESTED  dst_pg_demand (the link sends a DEMAND)
 *   REQUESTED -> MISSING    dst_pg_session_lost (the session the DEMAND went on broke),
 *                           dst_pg_defer (a reply could not be placed yet), a bad checksum
 *   MISSING/REQUESTED -> PRESENT   dst_pg_placed, dst_pg_existing (EEXIST), adoption
 *   any       -> REMOVED    dst_pg_removed (the guest discarded the page)
 *   REMOVED   -> PRESENT    dst_pg_placed with a zero page (ZEROFILL) on a fault
 * A page that turns PRESENT or REMOVED loses its staged copy (dst_stage.h), if any.
 */
#ifndef TLM_DST_PAGES_H
#define TLM_DST_PAGES_H

#include <stdbool.h>
#include <stdint.h>

#include "dst_region.h"

/* Which states a placement may target. */
#define DST_ALLOW_NORMAL  0x1u          /* MISSING, REQUESTED */
#define DST_ALLOW_REMOVED 0x2u          /* REMOVED (fault on a discarded page: zero page) */

bool dst_pg_allowed(const struct dst_region *r, uint64_t i, unsigned allow);
void dst_pg_set_state(struct dst_region *r, uint64_t i, enum dst_pg_state s);
void dst_pg_set_cls(struct dst_region *r, uint64_t i, unsigned cls);
/* Pages whose class is not known yet get cls (what a reply says they are). */
void dst_pg_learn_cls(struct dst_region *r, uint64_t page, uint64_t count, unsigned cls);

/* ---- waiting faults ------------------------------------------------------------------------ */

/* A guest thread faulted on page at now_ns: it waits until the page is placed. */
void dst_pg_fault(struct dst_region *r, uint64_t page, uint64_t now_ns);
/* The page's waiting fault is to be handled (again) by the next redo drain. */
int dst_pg_redo(struct dst_region *r, uint64_t page);
/* A fault on a page that was present: it is over (woken by a placement or a wake). */
void dst_pg_fault_over(struct dst_region *r, uint64_t page, unsigned cls);

/* ---- transitions -------------------------------------------------------------------------- */

/* Pages [first, first + n) were placed with class cls content; it becomes their class
 * only if set_cls (else: a zero page for a discarded page, ZEROFILL). */
void dst_pg_placed(struct dst_region *r, uint64_t first, uint64_t n, unsigned cls,
		   bool set_cls);
/* EEXIST: the page was mapped although we never placed it (the caller wakes waiters). */
void dst_pg_existing(struct dst_region *r, uint64_t page, unsigned cls, bool set_cls);
/* The guest discarded pages [first, last): REMOVED; their waiting faults are queued. */
void dst_pg_removed(struct dst_region *r, uint64_t first, uint64_t last);
/* Ask the link for the MISSING pages of [page, page + count): REQUESTED. Without a
 * working link they stay MISSING (demanded once it connects). */
void dst_pg_demand(struct dst_region *r, uint64_t page, uint64_t count);
/* A reply whose placement was deferred: its pages are MISSING again, faults queued. */
void dst_pg_defer(struct dst_region *r, uint64_t page, uint64_t count);
/* The urgent session broke: what was requested on it is MISSING again. */
void dst_pg_session_lost(struct dst_region *r);
/* A PAGE for it failed its checksum: BADSUM. False when it had failed before. */
bool dst_pg_bad_sum(struct dst_region *r, uint64_t page);

#endif /* TLM_DST_PAGES_H */
