/*
 * dst_fault.c — the fault path (dst_fault.h): attaching the uffd, reading it, resolving
 * each fault.
 */
#include "dst_fault.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/epoll.h>
#include <unistd.h>

#include "dst_map.h"
#include "dst_pages.h"
#include "dst_place.h"
#include "dst_uevent.h"
#include "log.h"
#include "util.h"

#define PS TLM_PAGE_SIZE

/* pagemap entry bits (Documentation/admin-guide/mm/pagemap.rst) */
#define PM_PRESENT (1ull << 63)
#define PM_SWAPPED (1ull << 62)
#define PM_CHUNK   4096u

/* ---- the uffd arrives --------------------------------------------------------------------- */

/*
 * A uffd handed over again (the daemon restarted mid-migration): pages an earlier daemon
 * placed are mapped in the guest; the kernel's page tables say which (pagemap of the
 * guest pid from SO_PEERCRED). They are PRESENT and never placed again (EEXIST stays the
 * backstop). On a fresh region nothing is mapped (the glue discarded it before arming).
 */
static int adopt_present(struct dst_region *r)
{
	uint64_t e[PM_CHUNK], found = 0;
	char path[64];
	int fd;

	snprintf(path, sizeof(path), "/proc/%d/pagemap", (int)r->glue->pid);
	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	for (uint64_t i = 0; i < r->npages; i += PM_CHUNK) {
		uint64_t n = r->npages - i < PM_CHUNK ? r->npages - i : PM_CHUNK;
		off_t off = (off_t)(((uintptr_t)r->base / PS + i) * sizeof(e[0]));

		if (pread(fd, e, n * sizeof(e[0]), off) != (ssize_t)(n * sizeof(e[0]))) {
			close(fd);
			return -EIO;
		}
		for (uint64_t k = 0; k < n; k++)
			if ((e[k] & (PM_PRESENT | PM_SWAPPED)) && dst_pg_placeable(r, i + k)) {
				dst_pg_set_state(r, i + k, DST_PRESENT);
				found++;
			}
	}
	close(fd);
	r->st.adopted = found;
	if (found)
		log_info("%s: %llu pages already present in the guest (placed before a restart)",
			 r->id, (unsigned long long)found);
	return 0;
}

static int check_features(struct dst_region *r, uint64_t features)
{
	if ((r->flags & TLM_REGION_TEMPLATE) && !(features & UFFD_FEATURE_MINOR_SHMEM)) {
		dst_region_fail(r, "template region's uffd lacks MINOR_SHMEM (features 0x%llx)",
				(unsigned long long)features);
		return -EINVAL;
	}
	r->minor = r->flags & TLM_REGION_TEMPLATE;
	if (!(features & UFFD_FEATURE_EVENT_REMOVE))
		log_warn("%s: uffd without EVENT_REMOVE: pages the guest discards are not seen "
			 "(a fault on one would only be woken)", r->id);
	return 0;
}

static void start(struct dst_region *r, const struct dst_uffd_ops *ops, void *ctx)
{
	r->uops = ops;
	r->uctx = ctx;
	/* threads whose fault an earlier daemon read and never answered: fault again */
	ops->wake(ctx, r->base, r->size);
	r->phase = DST_CONNECTING;
	log_info("%s: uffd attached: %llu pages at 0x%llx%s; connecting to %s", r->id,
		 (unsigned long long)r->npages, (unsigned long long)(uintptr_t)r->base,
		 r->minor ? " (template-backed, MINOR)" : "", r->source);
	dst_uevent_read_all(r);          /* faults that came before we watched */
	r->link->ops->connect(r->link);
}

int dst_region_attach_ops(struct dst_region *r, const struct dst_uffd_ops *ops, void *ctx,
			  uint64_t features)
{
	int rc = check_features(r, features);

	if (!rc)
		start(r, ops, ctx);
	return rc;
}

/* uffd readable: unless the region is going away. */
static void on_uffd(struct tlm_evsrc *src, uint32_t events)
{
	struct dst_region *r = TLM_EVSRC_OWNER(src, struct dst_region, uffd_src);

	if (!r->dead && r->uops)
		dst_region_uffd_event(r);
}

int dst_region_attach_uffd(struct dst_region *r, int fd, uint64_t features)
{
	int rc;

	tlm_uffd_adopt(&r->uffd, fd, features);
	rc = check_features(r, features);
	if (rc) {
		tlm_uffd_close(&r->uffd);
		return rc;
	}
	rc = tlm_set_nonblock(fd, 1);
	r->uffd_src = (struct tlm_evsrc){ .fd = fd, .on_event = on_uffd, .prio = DST_PRIO_UFFD };
	if (!rc)
		rc = tlm_evloop_add(r->loop, &r->uffd_src, EPOLLIN);
	if (rc < 0) {
		dst_region_fail(r, "watching the uffd: %s", strerror(-rc));
		tlm_uffd_close(&r->uffd);
		return rc;
	}
	rc = r->glue ? adopt_present(r) : 0;
	if (rc < 0) {
		dst_region_fail(r, "reading the guest's pagemap: %s", strerror(-rc));
		return rc;
	}
	start(r, &dst_uffd_real, &r->uffd);
	return 0;
}

/* ---- a fault is read and resolved --------------------------------------------------------- */

void dst_region_uffd_event(struct dst_region *r)
{
	while (dst_uevent_read_batch(r) > 0)
		if (dst_region_live(r))
			dst_fault_redo(r);
	/* FAILED/WAITING: faults stay recorded and waiting; never answered here. */
}

/* What gets queued meanwhile (new faults read while retrying, deferred placements)
 * waits for the next round. */
void dst_fault_redo(struct dst_region *r)
{
	size_t n = r->nredo, i;

	for (i = 0; i < n && dst_region_live(r); i++)
		dst_fault_resolve(r, r->redo[i]);
	if (!dst_region_live(r))
		return;
	if (n) {
		memmove(r->redo, r->redo + n, (r->nredo - n) * sizeof(*r->redo));
		r->nredo -= n;
	}
}

/*
 * A fault on a page we placed: usually a race (placed between the fault and our read).
 * But the kernel can also have taken the mapping away since: a TEMPLATE frame unmapped by
 * reclaim, or a zero page we put on a discarded page just before the discard's zap. Where
 * the content is certain, place it again (EEXIST: it really is there); else just wake.
 */
static void fault_on_present(struct dst_region *r, uint64_t page)
{
	uint8_t *dst = r->base + page * PS;
	unsigned cls = dst_pg_cls(r, page);
	size_t done;
	int rc = -1;

	r->st.faults_present++;
	if ((r->pg[page] & DST_PG_ZEROFILL) || cls == TLM_CLASS_ZERO) {
		rc = r->uops->zeropage(r->uctx, dst, PS, &done);
	} else if (cls == TLM_CLASS_TEMPLATE && r->minor) {
		const uint8_t *src;

		rc = r->uops->cont(r->uctx, dst, PS, &done);
		if (rc == -EFAULT && (src = dst_place_tmpl_src(r, r->tmpl_base + page, 1)))
			rc = r->uops->copy(r->uctx, dst, src, PS, &done);
	}
	if (rc)                       /* placing woke the waiters; otherwise wake them */
		r->uops->wake(r->uctx, dst, PS);
	dst_pg_fault_over(r, page, cls);
}

/*
 * A DATA page the bulk stream brought already, in frames received but not handled yet:
 * placed from there at once instead of after the frames ahead of it or a demand's round
 * trip. Its frame finds it present later. A copy that fails its checksum is left to its
 * frame (reported there, in stream order) and the page is demanded as usual.
 */
static bool place_buffered(struct dst_region *r, uint64_t page, int *rc)
{
	const uint8_t *d;
	uint64_t sum;

	if (dst_region_staging(r) || !dst_link_up(r))
		return false;
	d = r->link->ops->buffered(r->link, page, &sum);
	if (!d || tlm_proto_page_sum(d) != sum)
		return false;
	r->st.data_from_buffer++;
	*rc = dst_place_range(r, DST_HOW_COPY, page, 1, d, TLM_CLASS_DATA, DST_ALLOW_NORMAL,
			      NULL);
	return true;
}

static void demand(struct dst_region *r, uint64_t page, unsigned cls)
{
	log_debug("%s: fault on page %llu (class %s%s): demanded", r->id,
		  (unsigned long long)page, cls ? tlm_class_name(cls) : "unknown",
		  dst_stage_has(&r->stage, page) ? ", held copy" : "");
	dst_pg_demand(r, page, 1);
}

/* A TEMPLATE page fault-around may CONTINUE: not placed, not asked for, not discarded. */
static bool around_ok(const struct dst_region *r, uint64_t i)
{
	return dst_pg_cls(r, i) == TLM_CLASS_TEMPLATE && dst_pg_state(r, i) == DST_MISSING;
}

/* The run of around_ok pages from i, at most up to end: its end. */
static uint64_t around_run_end(const struct dst_region *r, uint64_t i, uint64_t end)
{
	while (i < end && around_ok(r, i))
		i++;
	return i;
}

/*
 * A TEMPLATE fault. Once the class map is final its TEMPLATE pages are left to the
 * kernel, which maps up to 16 neighbouring page-cache pages on a read fault — but not in
 * a range registered for MINOR faults, so until the region completes every TEMPLATE page
 * the guest touches would be a fault of its own. The daemon does the fault-around
 * instead: the unplaced TEMPLATE pages of the aligned window around the fault, the
 * faulting page's run first (its CONTINUE wakes the guest), then the window's other runs.
 * Only TEMPLATE pages of the final class map, mapped from the template as the kernel
 * would map them: nothing placed here could be wrong.
 */
static int place_template_around(struct dst_region *r, uint64_t page)
{
	uint64_t w = r->minor && r->fault_around > 1 ? r->fault_around : 1;
	uint64_t lo = page / w * w, hi = lo + w < r->npages ? lo + w : r->npages;
	uint64_t a = page, b, i;
	int rc;

	if (w == 1 || !around_ok(r, page))
		return dst_place_template(r, page, 1, DST_ALLOW_NORMAL);
	while (a > lo && around_ok(r, a - 1))
		a--;
	b = around_run_end(r, page, hi);
	rc = dst_place_template(r, a, b - a, DST_ALLOW_NORMAL);
	if (rc)
		return rc;                   /* the fault is redone (EAGAIN) or the region failed */
	r->st.fault_around += b - a - 1;
	for (i = lo; i < hi && dst_region_live(r);) {
		uint64_t e;

		if (i == a) {
			i = b;
			continue;
		}
		if (!around_ok(r, i)) {
			i++;
			continue;
		}
		e = around_run_end(r, i, i < a ? a : hi);
		if (dst_place_template(r, i, e - i, DST_ALLOW_NORMAL))
			break;               /* left for its own fault or the kernel */
		r->st.fault_around += e - i;
		i = e;
	}
	return 0;
}

void dst_fault_resolve(struct dst_region *r, uint64_t page)
{
	unsigned cls = dst_pg_cls(r, page);
	uint64_t k;
	int rc = 0;

	switch (dst_pg_state(r, page)) {
	case DST_PRESENT:
		fault_on_present(r, page);
		return;
	case DST_REMOVED:
		r->st.faults_removed++;
		rc = dst_place_range(r, DST_HOW_ZERO, page, 1, NULL, TLM_CLASS_ZERO,
				     DST_ALLOW_REMOVED, NULL);
		break;
	default:
		if (cls == TLM_CLASS_TEMPLATE)
			rc = place_template_around(r, page);
		else if (cls == TLM_CLASS_ZERO)
			rc = dst_place_range(r, DST_HOW_ZERO, page, 1, NULL, cls, DST_ALLOW_NORMAL,
					     NULL);
		else if (cls == TLM_CLASS_REF && dst_map_ref(r, page, &k) == 0)
			rc = dst_place_copy_tmpl(r, page, 1, k, cls, DST_ALLOW_NORMAL);
		else if (cls == TLM_CLASS_DATA && dst_stage_usable(r) &&
			 dst_stage_has(&r->stage, page))
			rc = dst_place_staged(r, page, 1);
		else if (cls != TLM_CLASS_DATA || !place_buffered(r, page, &rc))
			demand(r, page, cls);
	}
	if (rc == -EAGAIN)
		dst_pg_redo(r, page);
}
