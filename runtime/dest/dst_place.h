/*
 * dst_place.h — placing pages into the guest through the region's uffd ops: CONTINUE
 * (map the template's page-cache frame), ZEROPAGE, COPY (a checked PAGE, or a template
 * page). Placement rules are in dst_region.h: only pages a placement may target (MISSING,
 * REQUESTED; REMOVED for a zero page on a fault) are placed, and only with content that
 * is certain.
 *
 * Outcomes per page: placed -> PRESENT; EEXIST -> PRESENT (it was there: counted, waiters
 * woken); EAGAIN (the mappings are changing: a REMOVE is pending) -> the pending events
 * are read, which may turn pages REMOVED, and the call retried a few times, then
 * deferred (-EAGAIN: the caller decides); ENOENT / ESRCH / ENOSPC -> the guest's memory
 * is gone, the region is dropped; anything else fails the region.
 */
#ifndef TLM_DST_PLACE_H
#define TLM_DST_PLACE_H

#include <stdint.h>

#include "dst_region.h"

#define DST_AGAIN_TRIES 8          /* EAGAIN retries before a placement is deferred */

enum dst_how { DST_HOW_COPY, DST_HOW_ZERO, DST_HOW_CONT };

/* The real uffd: ctx is the region's struct tlm_uffd. */
extern const struct dst_uffd_ops dst_uffd_real;

/*
 * Place the allowed pages (DST_ALLOW_*) of [first, first + n) with one kind of ioctl, one
 * call per contiguous stretch; src is page first's content (COPY). cls is what is placed.
 * Returns 0, -EAGAIN (deferred), -EFAULT with *stop set (CONTINUE: the page is not in
 * the template's page cache), or a fatal -errno (already acted on).
 */
int dst_place_range(struct dst_region *r, enum dst_how how, uint64_t first, uint64_t n,
		    const uint8_t *src, unsigned cls, unsigned allow, uint64_t *stop);
/* Copy template pages k.. into [page, page + n) (REF, or TEMPLATE without MINOR). */
int dst_place_copy_tmpl(struct dst_region *r, uint64_t page, uint64_t n, uint64_t k,
			unsigned cls, unsigned allow);
/* TEMPLATE pages [page, page + n): CONTINUE, a hole in the template's page cache COPY. */
int dst_place_template(struct dst_region *r, uint64_t page, uint64_t n, unsigned allow);
/*
 * The DATA pages of [page, page + n) that hold a final staged copy (dst_stage_usable),
 * placed by COPY from the stage (copies next to each other in one call). A copy is freed
 * once its page is PRESENT or REMOVED, and kept when the placement is deferred (-EAGAIN).
 */
int dst_place_staged(struct dst_region *r, uint64_t page, uint64_t n);
/* Template pages k .. k+n-1 as one contiguous source, or NULL. */
const uint8_t *dst_place_tmpl_src(const struct dst_region *r, uint64_t k, uint64_t n);

#endif /* TLM_DST_PLACE_H */
