/*
 * dst_place.c — placing pages (dst_place.h), and the real uffd ops.
 */
#include "dst_place.h"

#include <errno.h>
#include <sched.h>
#include <string.h>

#include "dst_pages.h"
#include "dst_uevent.h"
#include "log.h"
#include "util.h"

#define PS          TLM_PAGE_SIZE

/* ---- the real uffd ------------------------------------------------------------------------- */

static int real_copy(void *ctx, void *dst, const void *src, size_t len, size_t *done)
{
	return tlm_uffd_copy(ctx, dst, src, len, 0, done, NULL);
}

static int real_zeropage(void *ctx, void *dst, size_t len, size_t *done)
{
	return tlm_uffd_zeropage(ctx, dst, len, 0, done, NULL);
}

static int real_cont(void *ctx, void *dst, size_t len, size_t *done)
{
	return tlm_uffd_continue(ctx, dst, len, 0, done, NULL);
}

static int real_wake(void *ctx, void *addr, size_t len)
{
	return tlm_uffd_wake(ctx, addr, len);
}

static int real_read_events(void *ctx, struct tlm_uffd_event *ev, int max)
{
	return tlm_uffd_read_events(ctx, ev, max);
}

static int real_unregister(void *ctx, void *addr, size_t len)
{
	return tlm_uffd_unregister(ctx, addr, len);
}

const struct dst_uffd_ops dst_uffd_real = {
	.copy = real_copy,
	.zeropage = real_zeropage,
	.cont = real_cont,
	.wake = real_wake,
	.read_events = real_read_events,
	.unregister = real_unregister,
};

/* ---- placement ------------------------------------------------------------------------------ */

static int place_op(struct dst_region *r, enum dst_how how, uint64_t page, uint64_t n,
		    const uint8_t *src, size_t *done)
{
	void *dst = r->base + page * PS;

	switch (how) {
	case DST_HOW_COPY:
		return r->uops->copy(r->uctx, dst, src, n * PS, done);
	case DST_HOW_ZERO:
		return r->uops->zeropage(r->uctx, dst, n * PS, done);
	case DST_HOW_CONT:
		return r->uops->cont(r->uctx, dst, n * PS, done);
	}
	*done = 0;
	return -EINVAL;
}

/* A placement error that is not about one page: the guest's memory is gone or broken. */
static int place_fatal(struct dst_region *r, enum dst_how how, uint64_t page, int rc)
{
	static const char *const op[] = { "COPY", "ZEROPAGE", "CONTINUE" };

	if (rc == -ENOENT || rc == -ESRCH || rc == -ENOSPC) {
		log_warn("%s: UFFDIO_%s at page %llu: %s: the guest's memory is gone; dropping "
			 "the region", r->id, op[how], (unsigned long long)page, strerror(-rc));
		r->dead = true;
	} else {
		dst_region_fail(r, "UFFDIO_%s at page %llu: %s", op[how],
				(unsigned long long)page, strerror(-rc));
	}
	return rc;
}

/* EEXIST: the page counts as present; the failed ioctl woke nobody, so wake. */
static void place_existing(struct dst_region *r, uint64_t page, unsigned cls, bool set_cls)
{
	dst_pg_existing(r, page, cls, set_cls);
	r->uops->wake(r->uctx, r->base + page * PS, PS);
}

/*
 * Pages in other states are skipped. The kernel keeps answering EAGAIN after we read a
 * REMOVE until the discarding thread has run again, so after a few tries the placement
 * is deferred and the caller retries later.
 */
int dst_place_range(struct dst_region *r, enum dst_how how, uint64_t first, uint64_t n,
		    const uint8_t *src, unsigned cls, unsigned allow, uint64_t *stop)
{
	uint64_t i = first, end = first + n;
	bool set_cls = !(allow & DST_ALLOW_REMOVED);
	unsigned again = 0;

	while (i < end && dst_region_live(r)) {
		uint64_t j;
		size_t done = 0;
		int rc;

		if (!dst_pg_allowed(r, i, allow)) {
			i++;
			continue;
		}
		for (j = i + 1; j < end && dst_pg_allowed(r, j, allow); j++)
			;
		rc = place_op(r, how, i, j - i, src ? src + (i - first) * PS : NULL, &done);
		dst_pg_placed(r, i, done / PS, cls, set_cls);
		i += done / PS;
		if (rc == 0)
			continue;
		if (rc == -EEXIST) {
			place_existing(r, i++, cls, set_cls);
		} else if (rc == -EAGAIN || rc == -ENOMEM) {
			if (++again > DST_AGAIN_TRIES)
				return -EAGAIN;          /* ENOMEM too: memory may come back */
			if (!dst_uevent_read_all(r))
				sched_yield();
		} else if (rc == -EFAULT && how == DST_HOW_CONT) {
			*stop = i;
			return rc;
		} else {
			return place_fatal(r, how, i, rc);
		}
	}
	return 0;
}

/* n copies that follow each other at src. While the ioctl runs they are busy: a page
 * that turns PRESENT or REMOVED meanwhile keeps its copy (src stays valid) until here,
 * where each is counted placed or, if it never was (EEXIST, discarded), invalidated. */
static int place_staged_run(struct dst_region *r, uint64_t page, uint64_t n,
			    const uint8_t *src)
{
	uint64_t before = r->st.placed_by_class[TLM_CLASS_DATA], gone = 0, placed;
	int rc;

	r->stage.busy = page;
	r->stage.busy_end = page + n;
	rc = dst_place_range(r, DST_HOW_COPY, page, n, src, TLM_CLASS_DATA, DST_ALLOW_NORMAL,
			     NULL);
	r->stage.busy = r->stage.busy_end = 0;
	placed = r->st.placed_by_class[TLM_CLASS_DATA] - before;
	for (uint64_t i = page; i < page + n; i++)
		if (!dst_pg_placeable(r, i))
			gone += dst_stage_drop(&r->stage, i);
	r->st.stage.placed += placed;
	r->st.stage.invalidated += gone - placed;
	return rc;
}

int dst_place_staged(struct dst_region *r, uint64_t page, uint64_t n)
{
	uint64_t end = page + n, k;
	int rc = 0;

	while (page < end && !rc && dst_stage_usable(r) && dst_region_live(r)) {
		const uint8_t *src = dst_stage_get(&r->stage, page, end - page, &k);

		if (!src) {
			page++;
			continue;
		}
		rc = place_staged_run(r, page, k, src);
		page += k;
	}
	return rc;
}

const uint8_t *dst_place_tmpl_src(const struct dst_region *r, uint64_t k, uint64_t n)
{
	const uint8_t *a, *b;

	if (!r->tmpl || k + n > tlm_tmpl_page_count(r->tmpl) || k + n < k)
		return NULL;
	a = tlm_tmpl_page(r->tmpl, k);
	b = tlm_tmpl_page(r->tmpl, k + n - 1);
	return a && b == a + (n - 1) * PS ? a : NULL;
}

int dst_place_copy_tmpl(struct dst_region *r, uint64_t page, uint64_t n, uint64_t k,
			unsigned cls, unsigned allow)
{
	const uint8_t *src = dst_place_tmpl_src(r, k, n);

	if (src)
		return dst_place_range(r, DST_HOW_COPY, page, n, src, cls, allow, NULL);
	for (uint64_t i = 0; i < n; i++) {     /* not one mapping: page by page */
		src = dst_place_tmpl_src(r, k + i, 1);
		if (!src) {
			dst_region_fail(r, "template page %llu does not exist",
					(unsigned long long)(k + i));
			return -ERANGE;
		}
		int rc = dst_place_range(r, DST_HOW_COPY, page + i, 1, src, cls, allow, NULL);

		if (rc)
			return rc;
	}
	return 0;
}

/*
 * CONTINUE maps the local template's page-cache frame (shared by every clone). A page the
 * template file has no page-cache page for (a hole) gets -EFAULT: COPY it from our
 * read-only mapping of the template instead. Without MINOR faults: COPY throughout.
 */
int dst_place_template(struct dst_region *r, uint64_t page, uint64_t n, unsigned allow)
{
	uint64_t end = page + n, stop = 0;
	int rc;

	if (!r->minor)
		return dst_place_copy_tmpl(r, page, n, r->tmpl_base + page, TLM_CLASS_TEMPLATE,
					   allow);
	while (page < end) {
		rc = dst_place_range(r, DST_HOW_CONT, page, end - page, NULL, TLM_CLASS_TEMPLATE,
				     allow, &stop);
		if (rc != -EFAULT)
			return rc;
		r->st.continue_fallbacks++;
		rc = dst_place_copy_tmpl(r, stop, 1, r->tmpl_base + stop, TLM_CLASS_TEMPLATE,
					 allow);
		if (rc)
			return rc;
		page = stop + 1;
	}
	return 0;
}
