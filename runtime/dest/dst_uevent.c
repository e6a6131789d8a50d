/*
 * dst_uevent.c — a region's uffd events, read and recorded (dst_uevent.h).
 */
#include "dst_uevent.h"

#include <errno.h>
#include <string.h>
#include <unistd.h>

#include "dst_pages.h"
#include "log.h"
#include "util.h"

#define PS       TLM_PAGE_SIZE
#define EV_BATCH 32

static bool page_of(const struct dst_region *r, uint64_t addr, uint64_t *page)
{
	uint64_t base = (uint64_t)(uintptr_t)r->base;

	if (addr < base || addr - base >= r->size)
		return false;
	*page = (addr - base) / PS;
	return true;
}

static void ev_pagefault(struct dst_region *r, const struct tlm_uffd_event *ev, uint64_t now)
{
	uint64_t page;

	if (!page_of(r, ev->addr, &page)) {
		log_warn("%s: fault at 0x%llx outside the region", r->id,
			 (unsigned long long)ev->addr);
		return;
	}
	dst_pg_fault(r, page, now);
}

/* The guest discarded [start, end): its pages read as zero from now on. */
static void ev_remove(struct dst_region *r, uint64_t start, uint64_t end)
{
	uint64_t base = (uint64_t)(uintptr_t)r->base, lo, hi, first, last;

	if (end <= base || start >= base + r->size)
		return;
	lo = start > base ? start : base;
	hi = end < base + r->size ? end : base + r->size;
	first = (lo - base) / PS;
	last = (hi - base + PS - 1) / PS;
	dst_pg_removed(r, first, last);
	log_debug("%s: REMOVE pages %llu..%llu", r->id, (unsigned long long)first,
		  (unsigned long long)last);
}

static void ev_remap(struct dst_region *r, const struct tlm_uffd_event *ev)
{
	if (ev->addr == (uint64_t)(uintptr_t)r->base && ev->len == r->size) {
		log_info("%s: region moved from 0x%llx to 0x%llx", r->id,
			 (unsigned long long)ev->addr, (unsigned long long)ev->new_addr);
		r->base = (uint8_t *)(uintptr_t)ev->new_addr;
		return;
	}
	dst_region_fail(r, "part of the region was moved (mremap 0x%llx+%llu): not supported",
			(unsigned long long)ev->addr, (unsigned long long)ev->len);
}

static void dispatch_event(struct dst_region *r, const struct tlm_uffd_event *ev,
			   uint64_t now)
{
	uint64_t base = (uint64_t)(uintptr_t)r->base;

	switch (ev->type) {
	case TLM_UFFD_EV_PAGEFAULT:
		ev_pagefault(r, ev, now);
		break;
	case TLM_UFFD_EV_REMOVE:
		ev_remove(r, ev->addr, ev->end);
		break;
	case TLM_UFFD_EV_UNMAP:
		if (ev->end > base && ev->addr < base + r->size) {
			log_info("%s: region unmapped by the guest process; dropping it", r->id);
			r->dead = true;
		}
		break;
	case TLM_UFFD_EV_REMAP:
		ev_remap(r, ev);
		break;
	case TLM_UFFD_EV_FORK:
		if (ev->fork_fd >= 0)
			close(ev->fork_fd);     /* we do not follow children */
		break;
	}
}

int dst_uevent_read_batch(struct dst_region *r)
{
	struct tlm_uffd_event ev[EV_BATCH];
	int n;
	uint64_t now;

	if (!r->uops || r->dead)
		return 0;
	n = r->uops->read_events(r->uctx, ev, EV_BATCH);
	if (n == -EAGAIN || n == -EINTR)
		return 0;
	if (n < 0) {
		log_error("%s: reading uffd events: %s", r->id, strerror(-n));
		return n;
	}
	now = tlm_now_ns();
	for (int i = 0; i < n; i++)
		dispatch_event(r, &ev[i], now);
	return n;
}

int dst_uevent_read_all(struct dst_region *r)
{
	int n, total = 0;

	while ((n = dst_uevent_read_batch(r)) > 0)
		total += n;
	return total;
}
