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
 *
 * Version 3 (dst_region.h, "Live and fix maps"): a live map is checked like a whole one
 * and kept apart; it must start at page 0, come in order, cover the region, and come
 * before any whole or fix frame of the bulk session (a second one is refused). A fix map
 * (KEEP runs allowed) only follows a complete live map, in order from page 0 over the
 * region; each frame is merged with the live map as it comes (a non-KEEP run drops the
 * staged copies of its pages) and the final frame feeds the merged runs to the class
 * map. The sweep places a DATA page from its staged copy once that copy is final.
 */
#ifndef TLM_DST_MAP_H
#define TLM_DST_MAP_H

#include <stddef.h>
#include <stdint.h>

#include "dst_region.h"

/* Take one CLASS_MAP frame (whole, live or fix). 0, or -EPROTO / -ENOMEM with err set:
 * the caller fails the region. */
int dst_map_frame(struct dst_region *r, const struct tlm_msg *m, char *err, size_t errlen);
/* The bulk session ended: a live map without its final fix frame goes, with every
 * staged copy (the source starts over). */
void dst_map_session_end(struct dst_region *r);
/* Recorded runs not swept yet. */
bool dst_map_pending(const struct dst_region *r);
/* Place up to budget pages of the recorded runs; the final frame swept -> FETCHING. */
void dst_map_sweep(struct dst_region *r, uint64_t budget);
/* A REF page's template page, from the runs received; -ENOENT if not there. */
int dst_map_ref(const struct dst_region *r, uint64_t page, uint64_t *k);

#endif /* TLM_DST_MAP_H */
