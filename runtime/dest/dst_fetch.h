/*
 * dst_fetch.h — getting a region's pages in: what the link brings (the source's replies
 * and stream, its sessions opening and breaking), the finish sweep, and the bounded
 * background work slice the daemon gives every region each loop iteration. This is the
 * link's way into the region (with dst_region_fail); the unit tests drive it directly.
 *
 * Messages are checked against the region before anything is used: a page range beyond
 * it, or a class that contradicts what the class map or an earlier reply said, returns
 * -EPROTO with err set, and the caller fails the region (the source cannot be trusted).
 *
 * A PAGE is placed only when its XXH3-64 matches; the first mismatch asks for the page
 * again on urgent (bulk: unless a demand reply is on its way), a second fails the region.
 * A PAGE for a page already PRESENT or REMOVED is dropped.
 *
 * Pre-sent DATA (version 3): from the first live map frame of a bulk session to its
 * final fix frame, PAGE/PAGES on bulk are not placed: each page whose checksum matches is
 * held in the stage (a newer copy replaces an older one), one that fails it is dropped
 * (and so is any older copy of it); what does not fit the stage is dropped, and fetched
 * later like any missing page. Both are counted. The sessions ending before the final fix
 * frame drops the live map and every staged copy.
 *
 * Finishing: after DONE (or at once on a session that follows one which brought the
 * whole class map: `resumed`), the pages still missing are demanded in runs as urgent has
 * room (a resumed sweep keeps a bounded number in flight so guest faults do not queue
 * behind it), and the region completes when every page is PRESENT or REMOVED.
 */
#ifndef TLM_DST_FETCH_H
#define TLM_DST_FETCH_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "dst_region.h"

/* ---- from the link -------------------------------------------------------------------------- */

/* Both sessions are open: phase MAPPING; pages of waiting faults are demanded. */
void dst_region_connected(struct dst_region *r);
/* The sessions are gone: what was requested on them is missing again; an unfixed live
 * map and the staged copies go. */
void dst_region_disconnected(struct dst_region *r);
/* One message each; urgent: it came on the urgent session. 0, or -EPROTO with err. */
int dst_region_page_msg(struct dst_region *r, const struct tlm_msg *m, bool urgent,
			char *err, size_t errlen);
int dst_region_pages_msg(struct dst_region *r, const struct tlm_msg *m, bool urgent,
			 char *err, size_t errlen);
int dst_region_zero_msg(struct dst_region *r, const struct tlm_msg *m, char *err, size_t errlen);
int dst_region_ref_msg(struct dst_region *r, const struct tlm_msg *m, char *err, size_t errlen);
int dst_region_map_msg(struct dst_region *r, const struct tlm_msg *m, char *err, size_t errlen);
void dst_region_done_msg(struct dst_region *r, const struct tlm_msg *m);

/* ---- from the loop -------------------------------------------------------------------------- */

/* Bounded background work: re-handle queued faults, sweep the class map, pump the link's
 * held-back input, the finish sweep, complete; release a dead or failed region. True
 * when more work is pending (the loop must not sleep). */
bool dst_region_work(struct dst_region *r);
bool dst_region_busy(const struct dst_region *r);
/* The daemon's timer: the link's retries and stall checks. */
void dst_region_tick(struct dst_region *r, uint64_t now_ns);

#endif /* TLM_DST_FETCH_H */
