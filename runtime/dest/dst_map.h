/*
 * dst_map.h — a region's class map: the source's CLASS_MAP frames (runs of TEMPLATE,
 * ZERO, REF k, DATA pages, in page order, over bulk) are checked, recorded in the page
 * table, and swept: every page of a class known locally is placed without asking the
 * source (TEMPLATE by CONTINUE, ZERO by ZEROPAGE, REF by COPY of template page k); DATA
 * pages wait for their PAGE. A page whose guest fault was waiting for its class is queued
 * to be resolved at once.
 *
 * A malformed frame (a bad run, runs beyond the region or the template, a gap) is
 * refused before anything is used; a class that contradicts what the region knew is
 * found while recording. Either way the source cannot be trusted and the caller fails
 * the region. Frames are appended, so the bulk stream never waits for the sweep; the
 * runs are kept until the region is released (a fault on a REF page looks its template
 * page up in them).
 */
#ifndef TLM_DST_MAP_H
#define TLM_DST_MAP_H

#include <stddef.h>
#include <stdint.h>

#include "dst_region.h"

/* Take one CLASS_MAP frame. 0, or -EPROTO / -ENOMEM with err set (nothing applied). */
int dst_map_frame(struct dst_region *r, const struct tlm_msg *m, char *err, size_t errlen);
/* Recorded runs not swept yet. */
bool dst_map_pending(const struct dst_region *r);
/* Place up to budget pages of the recorded runs; the final frame swept -> FETCHING. */
void dst_map_sweep(struct dst_region *r, uint64_t budget);
/* A REF page's template page, from the runs received; -ENOENT if not there. */
int dst_map_ref(const struct dst_region *r, uint64_t page, uint64_t *k);

#endif /* TLM_DST_MAP_H */
