/*
 * dst_stage.h — pre-sent DATA pages held aside (protocol version 3): copies the source
 * sent on bulk while its guest still ran, kept until the fix map says which of them stand.
 * A stage is only a store of 4 KiB copies indexed by page; what each event does to them,
 * and when they may be placed (only once the final fix frame came), is the region's
 * business (dst_region.h, dst_map, dst_fetch, dst_place, dst_pages).
 *
 * Memory is bounded daemon-wide: copies live in chunks of DST_STAGE_CHUNK pages taken
 * from one pool (tlm-uffd-server --stage-max MIB, default 1024; 0 holds nothing). A page
 * that finds no free slot in its region's chunks and no room in the pool for another
 * chunk is not held (the caller counts it; the page is then fetched like any missing
 * page). A newer copy of a page overwrites the older one in its slot, so a replacement
 * always fits. Besides the chunks, a region holding copies has an index of 4 bytes per
 * guest page (calloc'ed: the parts never touched are never backed). Chunks and index go
 * back when the last copy goes, and when the region is released.
 */
#ifndef TLM_DST_STAGE_H
#define TLM_DST_STAGE_H

#include <stdbool.h>
#include <stdint.h>

#define DST_STAGE_CHUNK       64u                 /* pages per chunk (256 KiB) */
#define DST_STAGE_MAX_DEFAULT (1024ull << 20)     /* --stage-max default, bytes */

/* What every region's copies may take together (the daemon's: outlives the regions). */
struct dst_stage_pool {
	uint64_t max;                    /* bytes (--stage-max) */
	uint64_t used;                   /* bytes of chunks allocated */
};

struct dst_stage {
	struct dst_stage_pool *pool;     /* NULL: nothing is ever held */
	uint64_t npages;
	uint32_t *idx;                   /* per page: slot + 1, 0 = no copy; NULL = none */
	uint8_t **chunk;                 /* nchunks chunks of DST_STAGE_CHUNK slots */
	uint32_t nchunks;
	uint32_t *freel;                 /* free slots, a stack (lowest on top) */
	uint32_t nfree;
	uint64_t held;                   /* copies in the index */
	/* Copies being placed from [busy, busy_end): the placer frees them itself. */
	uint64_t busy, busy_end;
};

void dst_stage_init(struct dst_stage *s, struct dst_stage_pool *pool, uint64_t npages);
/* Hold a copy of page's 4 KiB at data (replacing an older copy). 0, -ENOSPC (the pool
 * has no room), -ENOMEM. */
int dst_stage_put(struct dst_stage *s, uint64_t page, const uint8_t *data);
bool dst_stage_has(const struct dst_stage *s, uint64_t page);
/* page's copy or NULL; *n: how many pages from page on (at most max) have copies that
 * follow each other in memory (one COPY can place them). Valid until a drop. */
const uint8_t *dst_stage_get(const struct dst_stage *s, uint64_t page, uint64_t max,
			     uint64_t *n);
/* Free page's copy: true if there was one. */
bool dst_stage_drop(struct dst_stage *s, uint64_t page);
/* Free the copies of [page, page + n): how many there were. */
uint64_t dst_stage_drop_range(struct dst_stage *s, uint64_t page, uint64_t n);
/* Free every copy and all memory: how many copies there were. */
uint64_t dst_stage_clear(struct dst_stage *s);

#endif /* TLM_DST_STAGE_H */
