/*
 * dst_uevent.h — reading a region's uffd events and recording what they say: a fault is
 * queued to be resolved (dst_fault), a discard (REMOVE) turns pages REMOVED, a move of
 * the whole region (REMAP) rebases it, an unmap drops it.
 *
 * Reading events never places a page. That is what makes it safe for a placement that
 * meets EAGAIN (a REMOVE is pending) to read them before retrying: nothing recurses, and
 * the faults it queues are resolved by whoever drains the redo list next.
 */
#ifndef TLM_DST_UEVENT_H
#define TLM_DST_UEVENT_H

#include "dst_region.h"

/* Read one batch of pending events and record them: the count, 0 when none is pending,
 * <0 on error. */
int dst_uevent_read_batch(struct dst_region *r);
/* Read every pending event: how many. */
int dst_uevent_read_all(struct dst_region *r);

#endif /* TLM_DST_UEVENT_H */
