/*
 * dst_fault.h — the fault path of a region, top to bottom: the guest's uffd arrives
 * (attach), becomes readable (the event loop), its faults are read (dst_uevent) and
 * each is resolved by the page's state and class:
 *   PRESENT   a race, or the kernel took the mapping away: placed again where the content
 *             is certain (zero, template), else the thread is woken
 *   REMOVED   the guest discarded it: a zero page
 *   TEMPLATE / ZERO / REF (class known from the class map or a reply): placed locally
 *   DATA with a final staged copy (pre-sent, kept by the fix map): placed from it
 *   DATA, or class not known yet: demanded from the source; the fault waits (it is never
 *             answered with anything else) until the PAGE comes, or the class map says it
 *             is a class known locally
 * A placement the kernel made us defer (EAGAIN) is queued and retried.
 */
#ifndef TLM_DST_FAULT_H
#define TLM_DST_FAULT_H

#include <stdint.h>

#include "dst_region.h"

/* Take over the uffd (ownership passes; it joins the region's loop). A template region
 * must have MINOR faults: without them the kernel would map template pages into the
 * guest for pages whose real content differs. Phase -> CONNECTING, the link connects.
 * 0, or -errno with the region failed. */
int dst_region_attach_uffd(struct dst_region *r, int fd, uint64_t features);
/* The same over any uffd ops (the unit tests' fake); nothing joins the loop. */
int dst_region_attach_ops(struct dst_region *r, const struct dst_uffd_ops *ops, void *ctx,
			  uint64_t features);

/* uffd readable: read every pending event; each batch of faults is resolved at once. */
void dst_region_uffd_event(struct dst_region *r);
/* Resolve the faults queued so far (the redo list). */
void dst_fault_redo(struct dst_region *r);
/* Resolve a fault on page: place it if its content is known, else demand it. */
void dst_fault_resolve(struct dst_region *r, uint64_t page);

#endif /* TLM_DST_FAULT_H */
