/*
 * dst_region.c — one migrating region at the destination: page-state table, uffd events,
 * fault handling by class, placement (COPY / ZEROPAGE / CONTINUE), the class-map sweep,
 * completion. See dst_region.h for the page states and phases.
 *
 * Re-entrancy: a placement that meets EAGAIN (a REMOVE/UNMAP event is unread) reads the
 * uffd's events before retrying. Reading events never places pages: faults are recorded
 * and queued (redo list), REMOVE/UNMAP only change states. So nothing recurses, and the
 * queued faults are handled by whoever drains the redo list next.
 *
 * Releasing resources (sessions, uffd, tables) only happens at safe points of the main
 * loop (dst_region_work / dst_region_release): deep inside a placement or a frame loop a
 * failure only sets the phase, and every loop checks it.
 */
#include "dst_region.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sched.h>
#include <sys/epoll.h>
#include <unistd.h>

#include "log.h"
#include "util.h"

#define PS               TLM_PAGE_SIZE
#define EV_BATCH         32
#define FAULTS_MAX       4096        /* latency records kept; more faults still wait fine */
#define SWEEP_BUDGET     4096        /* pages placed per work call at most */
#define SWEEP_CHUNK      64          /* pages per ioctl between checks for events */
#define FINISH_BUDGET    65536       /* pages scanned per work call after DONE */
#define RESUME_INFLIGHT  1024        /* resumed: swept pages in flight on urgent at most */
#define AGAIN_TRIES      8           /* EAGAIN retries before a placement is deferred */

enum dst_how { HOW_COPY, HOW_ZERO, HOW_CONT };

/* Which states a placement may target. */
#define ALLOW_NORMAL  0x1u           /* MISSING, REQUESTED */
#define ALLOW_REMOVED 0x2u           /* REMOVED (fault on a discarded page: zero page) */

static int read_events(struct dst_region *r);

struct dst_region *dst_region_find(struct dst_region *list, const char *id)
{
	for (struct dst_region *r = list; r; r = r->next)
		if (!r->dead && strcmp(r->id, id) == 0)
			return r;
	return NULL;
}

const char *dst_phase_name(enum dst_phase p)
{
	static const char *const names[] = {
		"waiting_uffd", "connecting", "mapping", "fetching", "complete", "failed",
	};

	return (unsigned)p < TLM_ARRAY_SIZE(names) ? names[p] : "?";
}

const char *dst_region_phase_name(const struct dst_region *r)
{
	return r->link && r->link->paused && dst_region_active(r) ? "paused" :
	       dst_phase_name(r->phase);
}

bool dst_region_active(const struct dst_region *r)
{
	return !r->dead && r->phase != DST_COMPLETE && r->phase != DST_FAILED;
}

/* ---- page states ------------------------------------------------------------------------- */

void dst_pg_set_state(struct dst_region *r, uint64_t i, enum dst_pg_state s)
{
	enum dst_pg_state old = dst_pg_state(r, i);

	if (old == s)
		return;
	r->n_present -= old == DST_PRESENT;
	r->n_removed -= old == DST_REMOVED;
	r->n_requested -= old == DST_REQUESTED;
	r->n_present += s == DST_PRESENT;
	r->n_removed += s == DST_REMOVED;
	r->n_requested += s == DST_REQUESTED;
	r->pg[i] = (uint8_t)((r->pg[i] & ~DST_PG_ST) | (unsigned)s << DST_PG_ST_SHIFT);
}

static void pg_set_cls(struct dst_region *r, uint64_t i, unsigned cls)
{
	unsigned old = dst_pg_cls(r, i);

	if (old == cls)
		return;
	r->st.pages_by_class[old]--;
	r->st.pages_by_class[cls]++;
	r->pg[i] = (uint8_t)((r->pg[i] & ~DST_PG_CLS) | cls);
}

static bool allowed(const struct dst_region *r, uint64_t i, unsigned allow)
{
	enum dst_pg_state s = dst_pg_state(r, i);

	if (s == DST_MISSING || s == DST_REQUESTED)
		return allow & ALLOW_NORMAL;
	return s == DST_REMOVED && (allow & ALLOW_REMOVED);
}

/* ---- waiting faults ------------------------------------------------------------------------ */

static int push_u64(uint64_t **a, size_t *n, size_t *cap, uint64_t v)
{
	if (*n == *cap) {
		size_t nc = *cap ? *cap * 2 : 64;
		uint64_t *p = realloc(*a, nc * sizeof(**a));

		if (!p)
			return -ENOMEM;
		*a = p;
		*cap = nc;
	}
	(*a)[(*n)++] = v;
	return 0;
}

static void fault_record(struct dst_region *r, uint64_t page, uint64_t t_ns)
{
	if (r->nfaults == r->faults_cap && r->faults_cap < FAULTS_MAX) {
		size_t nc = r->faults_cap ? r->faults_cap * 2 : 64;
		struct dst_fault *p = realloc(r->faults, nc * sizeof(*p));

		if (p) {
			r->faults = p;
			r->faults_cap = nc;
		}
	}
	if (r->nfaults < r->faults_cap)
		r->faults[r->nfaults++] = (struct dst_fault){ page, t_ns };
}

/*
 * The page is now mapped: its waiting faults are over (the placing ioctl woke them).
 * remote: the page had been demanded (its latency includes a round trip to the source).
 */
static void fault_settle(struct dst_region *r, uint64_t page, unsigned cls, bool remote,
			 uint64_t now)
{
	size_t i = 0;

	r->pg[page] &= (uint8_t)~DST_PG_FAULTED;
	while (i < r->nfaults) {
		if (r->faults[i].page != page) {
			i++;
			continue;
		}
		uint64_t ns = now - r->faults[i].t_ns;

		tlm_hist_add(&r->st.lat_all, ns);
		tlm_hist_add(&r->st.lat_cls[cls], ns);
		tlm_hist_add(remote ? &r->st.lat_demand : &r->st.lat_local, ns);
		r->faults[i] = r->faults[--r->nfaults];
	}
}

/*
 * Pages [first, first + n) are mapped. cls is what was placed; it becomes the page's
 * class only if set_cls (a zero page for a discarded page says nothing about the
 * source's content).
 */
static void mark_placed(struct dst_region *r, uint64_t first, uint64_t n, unsigned cls,
			bool set_cls)
{
	uint64_t now = 0;

	for (uint64_t i = first; i < first + n; i++) {
		bool remote = dst_pg_state(r, i) == DST_REQUESTED;

		if (set_cls && !dst_pg_cls(r, i))
			pg_set_cls(r, i, cls);
		if (!set_cls)
			r->pg[i] |= DST_PG_ZEROFILL;
		dst_pg_set_state(r, i, DST_PRESENT);
		r->st.placed_by_class[cls]++;
		if (r->pg[i] & DST_PG_FAULTED) {
			if (!now)
				now = tlm_now_ns();
			fault_settle(r, i, cls, remote, now);
		}
	}
}

/*
 * EEXIST: the page is mapped although we never placed it. Only content from before arming
 * could do that (the glue discards it first); we cannot replace a present page, so say so
 * loudly, count it, and treat the page as present. Wake: the failed ioctl woke nobody.
 */
static void mark_existing(struct dst_region *r, uint64_t page, unsigned cls, bool set_cls)
{
	bool remote = dst_pg_state(r, page) == DST_REQUESTED;

	if (!r->st.eexist++)
		log_warn("%s: page %llu was already present when placing it (%s); "
			 "treating it as present", r->id, (unsigned long long)page,
			 tlm_class_name(cls));

	if (set_cls && !dst_pg_cls(r, page))
		pg_set_cls(r, page, cls);
	if (!set_cls)
		r->pg[page] |= DST_PG_ZEROFILL;
	dst_pg_set_state(r, page, DST_PRESENT);
	if (r->pg[page] & DST_PG_FAULTED)
		fault_settle(r, page, cls, remote, tlm_now_ns());
	tlm_uffd_wake(&r->uffd, r->base + page * PS, PS);
}

/* ---- placement ------------------------------------------------------------------------------ */

static int place_op(struct dst_region *r, enum dst_how how, uint64_t page, uint64_t n,
		    const uint8_t *src, size_t *done)
{
	void *dst = r->base + page * PS;

	switch (how) {
	case HOW_COPY:
		return tlm_uffd_copy(&r->uffd, dst, src, n * PS, 0, done, NULL);
	case HOW_ZERO:
		return tlm_uffd_zeropage(&r->uffd, dst, n * PS, 0, done, NULL);
	case HOW_CONT:
		return tlm_uffd_continue(&r->uffd, dst, n * PS, 0, done, NULL);
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

/*
 * Place the allowed pages of [first, first + n) with one kind of ioctl, one call per
 * contiguous stretch. src is page first's source (COPY). Pages in other states are
 * skipped. EEXIST marks that page present and goes on. EAGAIN (the mappings are
 * changing) reads the pending events, which may turn pages REMOVED, and retries a few
 * times; the kernel keeps answering EAGAIN after we read a REMOVE until the discarding
 * thread has run again, so then the placement is deferred: -EAGAIN, and the caller
 * retries later. Returns 0, -EAGAIN, -EFAULT with *stop set (CONTINUE: page not in the
 * template's page cache), or a fatal -errno (already reported).
 */
static int place_range(struct dst_region *r, enum dst_how how, uint64_t first, uint64_t n,
		       const uint8_t *src, unsigned cls, unsigned allow, uint64_t *stop)
{
	uint64_t i = first, end = first + n;
	bool set_cls = !(allow & ALLOW_REMOVED);
	unsigned again = 0;

	while (i < end && dst_region_live(r)) {
		uint64_t j;
		size_t done = 0;
		int rc;

		if (!allowed(r, i, allow)) {
			i++;
			continue;
		}
		for (j = i + 1; j < end && allowed(r, j, allow); j++)
			;
		rc = place_op(r, how, i, j - i, src ? src + (i - first) * PS : NULL, &done);
		mark_placed(r, i, done / PS, cls, set_cls);
		i += done / PS;
		if (rc == 0)
			continue;
		if (rc == -EEXIST) {
			mark_existing(r, i++, cls, set_cls);
		} else if (rc == -EAGAIN || rc == -ENOMEM) {
			if (++again > AGAIN_TRIES)
				return -EAGAIN;          /* ENOMEM too: memory may come back */
			if (!read_events(r))
				sched_yield();
		} else if (rc == -EFAULT && how == HOW_CONT) {
			*stop = i;
			return rc;
		} else {
			return place_fatal(r, how, i, rc);
		}
	}
	return 0;
}

/* Template page k .. k+n-1 as one contiguous source, or NULL. */
static const uint8_t *tmpl_src(const struct dst_region *r, uint64_t k, uint64_t n)
{
	const uint8_t *a, *b;

	if (!r->tmpl || k + n > tlm_tmpl_page_count(r->tmpl) || k + n < k)
		return NULL;
	a = tlm_tmpl_page(r->tmpl, k);
	b = tlm_tmpl_page(r->tmpl, k + n - 1);
	return a && b == a + (n - 1) * PS ? a : NULL;
}

static int place_copy_tmpl(struct dst_region *r, uint64_t page, uint64_t n, uint64_t k,
			   unsigned cls, unsigned allow)
{
	const uint8_t *src = tmpl_src(r, k, n);

	if (src)
		return place_range(r, HOW_COPY, page, n, src, cls, allow, NULL);
	for (uint64_t i = 0; i < n; i++) {     /* not one mapping: page by page */
		src = tmpl_src(r, k + i, 1);
		if (!src) {
			dst_region_fail(r, "template page %llu does not exist",
					(unsigned long long)(k + i));
			return -ERANGE;
		}
		int rc = place_range(r, HOW_COPY, page + i, 1, src, cls, allow, NULL);

		if (rc)
			return rc;
	}
	return 0;
}

/*
 * TEMPLATE pages: CONTINUE maps the local template's page-cache frame (shared by every
 * clone). A page the template file has no page-cache page for (a hole) gets -EFAULT:
 * COPY it from our read-only mapping of the template instead.
 */
static int place_template(struct dst_region *r, uint64_t page, uint64_t n, unsigned allow)
{
	uint64_t end = page + n, stop = 0;
	int rc;

	if (!r->minor)
		return place_copy_tmpl(r, page, n, r->tmpl_base + page, TLM_CLASS_TEMPLATE,
				       allow);
	while (page < end) {
		rc = place_range(r, HOW_CONT, page, end - page, NULL, TLM_CLASS_TEMPLATE, allow,
				 &stop);
		if (rc != -EFAULT)
			return rc;
		r->st.continue_fallbacks++;
		rc = place_copy_tmpl(r, stop, 1, r->tmpl_base + stop, TLM_CLASS_TEMPLATE, allow);
		if (rc)
			return rc;
		page = stop + 1;
	}
	return 0;
}

/* ---- class map -------------------------------------------------------------------------------- */

bool dst_region_map_pending(const struct dst_region *r)
{
	return r->mcur < r->nmruns;
}

/* REF page's template page, from the runs received; -ENOENT if not there. */
static int ref_lookup(const struct dst_region *r, uint64_t page, uint64_t *k)
{
	uint32_t lo = 0, hi = r->nmruns;

	if (!hi || page < r->mstart[0])
		return -ENOENT;
	while (hi - lo > 1) {
		uint32_t mid = lo + (hi - lo) / 2;

		if (r->mstart[mid] <= page)
			lo = mid;
		else
			hi = mid;
	}
	if (r->mruns[lo].cls != TLM_CLASS_REF || page - r->mstart[lo] >= r->mruns[lo].len)
		return -ENOENT;
	*k = r->mruns[lo].arg + (page - r->mstart[lo]);
	return 0;
}

static int map_check_run(const struct dst_region *r, const struct tlm_run *run, uint64_t page,
			 char *err, size_t errlen)
{
	uint64_t tp = r->tmpl ? tlm_tmpl_page_count(r->tmpl) : 0;

	if (run->cls < TLM_CLASS_TEMPLATE || run->cls > TLM_CLASS_DATA || !run->len) {
		snprintf(err, errlen, "CLASS_MAP: bad run (class %u, %u pages) at page %llu",
			 run->cls, run->len, (unsigned long long)page);
		return -EPROTO;
	}
	if ((run->cls == TLM_CLASS_TEMPLATE || run->cls == TLM_CLASS_REF) && !r->tmpl) {
		snprintf(err, errlen, "CLASS_MAP: %s run at page %llu but the region has no "
			 "template", tlm_class_name(run->cls), (unsigned long long)page);
		return -EPROTO;
	}
	if (run->cls == TLM_CLASS_REF && (run->arg >= tp || run->len > tp - run->arg)) {
		snprintf(err, errlen, "CLASS_MAP: REF run at page %llu refers to template pages "
			 "%llu+%u beyond the template's %llu", (unsigned long long)page,
			 (unsigned long long)run->arg, run->len, (unsigned long long)tp);
		return -EPROTO;
	}
	return 0;
}

/* Validate the whole frame before anything is used. */
static int map_check(const struct dst_region *r, const struct tlm_msg *m, char *err,
		     size_t errlen)
{
	uint64_t page = m->u.class_map.first_page;

	for (uint32_t i = 0; i < m->u.class_map.nruns; i++) {
		const struct tlm_run *run = &m->u.class_map.runs[i];
		int rc = map_check_run(r, run, page, err, errlen);

		if (rc)
			return rc;
		if (page > r->npages || run->len > r->npages - page) {
			snprintf(err, errlen, "CLASS_MAP: runs go beyond the region's %llu pages",
				 (unsigned long long)r->npages);
			return -EPROTO;
		}
		page += run->len;
	}
	return 0;
}

/* Record the classes; a class that contradicts what we knew means the source is not
 * consistent with itself: nothing it says can be trusted any more. */
static int map_classes(struct dst_region *r, const struct tlm_run *run, uint64_t page,
		       char *err, size_t errlen)
{
	for (uint64_t i = page; i < page + run->len; i++) {
		unsigned c = dst_pg_cls(r, i);

		if (!c) {
			pg_set_cls(r, i, run->cls);
		} else if (c != run->cls) {
			snprintf(err, errlen, "CLASS_MAP says page %llu is %s, earlier it was %s",
				 (unsigned long long)i, tlm_class_name(run->cls),
				 tlm_class_name(c));
			return -EPROTO;
		}
		if ((r->pg[i] & DST_PG_FAULTED) && dst_pg_placeable(r, i))
			push_u64(&r->redo, &r->nredo, &r->redo_cap, i);
	}
	return 0;
}

/* The final frame is applied: every page's class is known. */
static void map_applied(struct dst_region *r)
{
	const uint64_t *c = r->st.pages_by_class;

	if (!r->map_final || dst_region_map_pending(r) || r->phase != DST_MAPPING)
		return;
	r->phase = DST_FETCHING;
	if (!r->t_map_ns)
		r->t_map_ns = tlm_now_ns();
	log_info("%s: class map applied: %llu template, %llu zero, %llu ref, %llu data pages%s",
		 r->id, (unsigned long long)c[TLM_CLASS_TEMPLATE],
		 (unsigned long long)c[TLM_CLASS_ZERO], (unsigned long long)c[TLM_CLASS_REF],
		 (unsigned long long)c[TLM_CLASS_DATA], c[0] ? " (some pages not covered)" : "");
}

static int map_grow(struct dst_region *r, char *err, size_t errlen)
{
	uint32_t cap = r->mcap ? r->mcap * 2 : 1024;
	struct tlm_run *runs = realloc(r->mruns, cap * sizeof(*runs));
	uint64_t *start = runs ? realloc(r->mstart, cap * sizeof(*start)) : NULL;

	if (runs)
		r->mruns = runs;
	if (!start) {
		snprintf(err, errlen, "out of memory for the class map (%u runs)", cap);
		return -ENOMEM;
	}
	r->mstart = start;
	r->mcap = cap;
	return 0;
}

/* One run of a frame: the part below mend was received before (a resent map): its
 * classes must agree; the rest is appended for the sweep. */
static int map_take_run(struct dst_region *r, struct tlm_run run, uint64_t page, char *err,
			size_t errlen)
{
	uint64_t seen = r->mend > page ? r->mend - page : 0;
	int rc;

	if (seen) {
		struct tlm_run old = run;

		old.len = (uint32_t)(seen < run.len ? seen : run.len);
		rc = map_classes(r, &old, page, err, errlen);
		if (rc || seen >= run.len)
			return rc;
		run.len -= (uint32_t)seen;
		run.arg += run.cls == TLM_CLASS_REF ? seen : 0;
		page += seen;
	}
	if (r->nmruns == r->mcap && (rc = map_grow(r, err, errlen)) < 0)
		return rc;
	rc = map_classes(r, &run, page, err, errlen);
	if (rc)
		return rc;
	r->mruns[r->nmruns] = run;
	r->mstart[r->nmruns++] = page;
	r->mend = page + run.len;
	return 0;
}

int dst_region_map(struct dst_region *r, const struct tlm_msg *m, char *err, size_t errlen)
{
	uint32_t n = m->u.class_map.nruns;
	uint64_t page = m->u.class_map.first_page;
	int rc = map_check(r, m, err, errlen);

	if (rc)
		return rc;
	if (page > r->mend) {
		snprintf(err, errlen, "CLASS_MAP frame starts at page %llu, after a gap (pages "
			 "from %llu not described)", (unsigned long long)page,
			 (unsigned long long)r->mend);
		return -EPROTO;
	}
	for (uint32_t i = 0; i < n; i++) {
		rc = map_take_run(r, m->u.class_map.runs[i], page, err, errlen);
		if (rc)
			return rc;
		page += m->u.class_map.runs[i].len;
	}
	r->map_final |= m->u.class_map.final;
	if (r->map_final && !r->t_map_rcvd_ns)
		r->t_map_rcvd_ns = tlm_now_ns();
	map_applied(r);
	log_debug("%s: class map frame: pages %llu..%llu, %u runs%s", r->id,
		  (unsigned long long)m->u.class_map.first_page, (unsigned long long)page, n,
		  m->u.class_map.final ? " (final)" : "");
	return 0;
}

/* Place up to budget pages of the frame being swept, SWEEP_CHUNK at a time, and stop
 * as soon as an event waits (a guest fault must not wait behind the sweep). */
static void map_sweep(struct dst_region *r, uint64_t budget)
{
	bool first = true;

	while (budget && r->mcur < r->nmruns && dst_region_live(r)) {
		const struct tlm_run *run = &r->mruns[r->mcur];
		uint64_t page = r->mstart[r->mcur] + r->mpos, left = run->len - r->mpos;
		uint64_t n = left < SWEEP_CHUNK ? left : SWEEP_CHUNK;
		int rc = 0;

		if (!first && run->cls != TLM_CLASS_DATA &&
		    tlm_evloop_should_yield(r->loop))
			break;
		first = false;
		if (n > budget)
			n = budget;

		if (run->cls == TLM_CLASS_TEMPLATE)
			rc = place_template(r, page, n, ALLOW_NORMAL);
		else if (run->cls == TLM_CLASS_ZERO)
			rc = place_range(r, HOW_ZERO, page, n, NULL, TLM_CLASS_ZERO, ALLOW_NORMAL,
					 NULL);
		else if (run->cls == TLM_CLASS_REF)
			rc = place_copy_tmpl(r, page, n, run->arg + r->mpos, TLM_CLASS_REF,
					     ALLOW_NORMAL);
		else
			n = left;            /* DATA: comes in PAGE messages */
		if (rc)
			return;
		budget -= run->cls == TLM_CLASS_DATA ? 1 : n;
		r->mpos += n;
		if (r->mpos == run->len) {
			r->mcur++;
			r->mpos = 0;
		}
	}
	if (!dst_region_map_pending(r) && dst_region_live(r))
		map_applied(r);
}

/* ---- demand ------------------------------------------------------------------------------------ */

/*
 * Ask the source for the MISSING pages of [page, page + count): they become REQUESTED,
 * at most once per session. Without a working link they stay MISSING and are demanded
 * once it connects (dst_region_connected).
 */
static void demand(struct dst_region *r, uint64_t page, uint64_t count)
{
	uint64_t end = page + count < r->npages ? page + count : r->npages;

	if (!dst_link_up(r))
		return;
	for (uint64_t i = page, j; i < end; i = j) {
		for (j = i; j < end && dst_pg_state(r, j) == DST_MISSING; j++)
			;
		if (j == i) {
			j++;
			continue;
		}
		if (r->link->ops->demand(r->link, i, (uint32_t)(j - i)) < 0) {
			log_error("%s: out of memory queueing a demand for page %llu", r->id,
				  (unsigned long long)i);
			return;
		}
		for (uint64_t k = i; k < j; k++)
			dst_pg_set_state(r, k, DST_REQUESTED);
	}
}

/* ---- faults ------------------------------------------------------------------------------------ */

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
		rc = tlm_uffd_zeropage(&r->uffd, dst, PS, 0, &done, NULL);
	} else if (cls == TLM_CLASS_TEMPLATE && r->minor) {
		const uint8_t *src;

		rc = tlm_uffd_continue(&r->uffd, dst, PS, 0, &done, NULL);
		if (rc == -EFAULT && (src = tmpl_src(r, r->tmpl_base + page, 1)))
			rc = tlm_uffd_copy(&r->uffd, dst, src, PS, 0, &done, NULL);
	}
	if (rc)                       /* placing woke the waiters; otherwise wake them */
		tlm_uffd_wake(&r->uffd, dst, PS);
	if (r->pg[page] & DST_PG_FAULTED)
		fault_settle(r, page, cls, false, tlm_now_ns());
}

/* Resolve a fault on a page that is not present. Content not known yet: demand it and
 * let the fault wait. A placement the kernel made us defer is queued again. */
static void fault_resolve(struct dst_region *r, uint64_t page)
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
		rc = place_range(r, HOW_ZERO, page, 1, NULL, TLM_CLASS_ZERO, ALLOW_REMOVED, NULL);
		break;
	default:
		if (cls == TLM_CLASS_TEMPLATE)
			rc = place_template(r, page, 1, ALLOW_NORMAL);
		else if (cls == TLM_CLASS_ZERO)
			rc = place_range(r, HOW_ZERO, page, 1, NULL, cls, ALLOW_NORMAL, NULL);
		else if (cls == TLM_CLASS_REF && ref_lookup(r, page, &k) == 0)
			rc = place_copy_tmpl(r, page, 1, k, cls, ALLOW_NORMAL);
		else
			demand(r, page, 1);
	}
	if (rc == -EAGAIN)
		push_u64(&r->redo, &r->nredo, &r->redo_cap, page);
}

/* Handle the faults queued so far; what gets queued meanwhile (new faults read while
 * retrying, deferred placements) waits for the next round. */
static void redo_drain(struct dst_region *r)
{
	size_t n = r->nredo, i;

	for (i = 0; i < n && dst_region_live(r); i++)
		fault_resolve(r, r->redo[i]);
	if (!dst_region_live(r))
		return;
	if (n) {
		memmove(r->redo, r->redo + n, (r->nredo - n) * sizeof(*r->redo));
		r->nredo -= n;
	}
}

/* ---- uffd events --------------------------------------------------------------------------------- */

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
	r->st.faults++;
	r->st.faults_by_class[dst_pg_cls(r, page)]++;
	r->pg[page] |= DST_PG_FAULTED;
	fault_record(r, page, now);
	if (push_u64(&r->redo, &r->nredo, &r->redo_cap, page) < 0)
		log_error("%s: out of memory queueing a fault (page %llu waits)", r->id,
			  (unsigned long long)page);
}

/* The guest discarded [start, end): its pages read as zero from now on. A waiting fault
 * on such a page gets its zero page through the redo list. */
static void ev_remove(struct dst_region *r, uint64_t start, uint64_t end)
{
	uint64_t base = (uint64_t)(uintptr_t)r->base, lo, hi, first, last;

	if (end <= base || start >= base + r->size)
		return;
	lo = start > base ? start : base;
	hi = end < base + r->size ? end : base + r->size;
	first = (lo - base) / PS;
	last = (hi - base + PS - 1) / PS;
	for (uint64_t i = first; i < last; i++) {
		dst_pg_set_state(r, i, DST_REMOVED);
		if (r->pg[i] & DST_PG_FAULTED)
			push_u64(&r->redo, &r->nredo, &r->redo_cap, i);
	}
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

/* Read one batch of events: the count, 0 when none is pending, <0 on error. Faults are
 * only queued here (see the top of the file). */
static int read_batch(struct dst_region *r)
{
	struct tlm_uffd_event ev[EV_BATCH];
	int n;
	uint64_t now;

	if (r->uffd.fd < 0 || r->dead)
		return 0;
	n = tlm_uffd_read_events(&r->uffd, ev, EV_BATCH);
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

/* Read every pending event (before retrying a placement that met EAGAIN): how many. */
static int read_events(struct dst_region *r)
{
	int n, total = 0;

	while ((n = read_batch(r)) > 0)
		total += n;
	return total;
}

/* uffd readable: serve each batch of faults as soon as it is read. */
void dst_region_uffd_event(struct dst_region *r)
{
	while (read_batch(r) > 0)
		if (dst_region_live(r))
			redo_drain(r);
	/* FAILED/WAITING: faults stay recorded and waiting; never answered here. */
}

/* ---- replies and the bulk stream ------------------------------------------------------------------ */

static int range_check(const struct dst_region *r, const char *what, uint64_t page,
		       uint64_t count, char *err, size_t errlen)
{
	if (!count || page >= r->npages || count > r->npages - page) {
		snprintf(err, errlen, "%s for pages %llu+%llu beyond the region's %llu pages", what,
			 (unsigned long long)page, (unsigned long long)count,
			 (unsigned long long)r->npages);
		return -EPROTO;
	}
	return 0;
}

/* What a reply says about a page must agree with what we know (class map, earlier
 * replies): a source that contradicts itself cannot be trusted with guest memory. */
static int cls_check(const struct dst_region *r, const char *what, uint64_t page,
		     uint64_t count, unsigned cls, unsigned alt, char *err, size_t errlen)
{
	for (uint64_t i = page; i < page + count; i++) {
		unsigned c = dst_pg_cls(r, i);

		if (c && c != cls && c != alt) {
			snprintf(err, errlen, "%s for page %llu, which the class map says is %s", what,
				 (unsigned long long)i, tlm_class_name(c));
			return -EPROTO;
		}
	}
	return 0;
}

/* A reply whose placement was deferred: its pages are missing again; waiting faults are
 * queued (their class is known now), the others are placed after DONE at the latest. */
static void defer_reply(struct dst_region *r, uint64_t page, uint64_t count)
{
	for (uint64_t i = page; i < page + count; i++) {
		if (!dst_pg_placeable(r, i))
			continue;
		dst_pg_set_state(r, i, DST_MISSING);
		if (r->pg[i] & DST_PG_FAULTED)
			push_u64(&r->redo, &r->nredo, &r->redo_cap, i);
	}
}

static void set_unknown_cls(struct dst_region *r, uint64_t page, uint64_t count, unsigned cls)
{
	for (uint64_t i = page; i < page + count; i++)
		if (!dst_pg_cls(r, i))
			pg_set_cls(r, i, cls);
}

/* A PAGE whose bytes do not match its checksum is never placed. The first time, the page
 * is asked for again on urgent; a second mismatch fails the region. */
static void bad_sum(struct dst_region *r, uint64_t page, bool urgent, uint64_t got,
		    uint64_t sent)
{
	r->st.checksum_errors++;
	log_error("%s: page %llu (%s): checksum mismatch: data hashes to %016llx, sender said "
		  "%016llx; not placed", r->id, (unsigned long long)page,
		  urgent ? "urgent" : "bulk", (unsigned long long)got, (unsigned long long)sent);
	if (r->pg[page] & DST_PG_BADSUM) {
		dst_region_fail(r, "page %llu failed its checksum twice", (unsigned long long)page);
		return;
	}
	r->pg[page] |= DST_PG_BADSUM;
	if (!urgent && dst_pg_state(r, page) == DST_REQUESTED)
		return;                 /* a demand reply for it is on its way */
	dst_pg_set_state(r, page, DST_MISSING);
	demand(r, page, 1);
}

int dst_region_page_msg(struct dst_region *r, const struct tlm_msg *m, bool urgent,
			char *err, size_t errlen)
{
	uint64_t page = m->u.page.page, sum;
	int rc = range_check(r, "PAGE", page, 1, err, errlen);

	if (!rc)
		rc = cls_check(r, "PAGE", page, 1, TLM_CLASS_DATA, TLM_CLASS_DATA, err, errlen);
	if (rc)
		return rc;
	r->st.data_pages_in++;
	if (!dst_pg_placeable(r, page)) {
		r->st.data_pages_dropped++;     /* present already, or discarded */
		return 0;
	}
	sum = tlm_proto_page_sum(m->u.page.data);
	if (sum != m->u.page.xxh64) {
		bad_sum(r, page, urgent, sum, m->u.page.xxh64);
		return 0;
	}
	set_unknown_cls(r, page, 1, TLM_CLASS_DATA);
	rc = place_range(r, HOW_COPY, page, 1, m->u.page.data, TLM_CLASS_DATA, ALLOW_NORMAL,
			 NULL);
	if (rc == -EAGAIN && dst_pg_placeable(r, page)) {
		/* The bytes live in the receive buffer only: ask for them again. */
		dst_pg_set_state(r, page, DST_MISSING);
		demand(r, page, 1);
	}
	return 0;
}

int dst_region_zero_msg(struct dst_region *r, const struct tlm_msg *m, char *err, size_t errlen)
{
	uint64_t page = m->u.zero.page, n = m->u.zero.count;
	int rc = range_check(r, "ZERO", page, n, err, errlen);

	if (!rc)
		rc = cls_check(r, "ZERO", page, n, TLM_CLASS_ZERO, TLM_CLASS_ZERO, err, errlen);
	if (rc)
		return rc;
	set_unknown_cls(r, page, n, TLM_CLASS_ZERO);
	rc = place_range(r, HOW_ZERO, page, n, NULL, TLM_CLASS_ZERO, ALLOW_NORMAL, NULL);
	if (rc == -EAGAIN)
		defer_reply(r, page, n);
	return 0;
}

/* REF(k): the pages equal template pages k..; k at the same offset is a TEMPLATE page
 * (mapped, not copied). */
int dst_region_ref_msg(struct dst_region *r, const struct tlm_msg *m, char *err, size_t errlen)
{
	uint64_t page = m->u.ref.page, n = m->u.ref.count, k = m->u.ref.tmpl_page;
	uint64_t tp = r->tmpl ? tlm_tmpl_page_count(r->tmpl) : 0;
	bool same;
	int rc = range_check(r, "REF", page, n, err, errlen);

	if (rc)
		return rc;
	if (k >= tp || n > tp - k) {
		snprintf(err, errlen, "REF for page %llu names template pages %llu+%llu, the local "
			 "template has %llu", (unsigned long long)page, (unsigned long long)k,
			 (unsigned long long)n, (unsigned long long)tp);
		return -EPROTO;
	}
	rc = cls_check(r, "REF", page, n, TLM_CLASS_REF, TLM_CLASS_TEMPLATE, err, errlen);
	if (rc)
		return rc;
	same = k == r->tmpl_base + page;
	set_unknown_cls(r, page, n, same ? TLM_CLASS_TEMPLATE : TLM_CLASS_REF);
	if (same)
		rc = place_template(r, page, n, ALLOW_NORMAL);
	else
		rc = place_copy_tmpl(r, page, n, k, TLM_CLASS_REF, ALLOW_NORMAL);
	if (rc == -EAGAIN)
		defer_reply(r, page, n);
	return 0;
}

void dst_region_done_msg(struct dst_region *r, const struct tlm_msg *m)
{
	log_info("%s: source finished its stream: %llu data pages, %llu bytes", r->id,
		 (unsigned long long)m->u.done.data_pages, (unsigned long long)m->u.done.bytes);
	if (!r->map_final)
		log_warn("%s: DONE before the final class map frame", r->id);
	r->done_rcvd = true;
	if (!r->t_done_ns)
		r->t_done_ns = tlm_now_ns();
	r->finish_cursor = 0;
}

/* ---- finishing ------------------------------------------------------------------------------------- */

static bool wants_data(const struct dst_region *r, uint64_t i)
{
	unsigned c = dst_pg_cls(r, i);

	return dst_pg_state(r, i) == DST_MISSING && (c == 0 || c == TLM_CLASS_DATA);
}

/* Every page's class is known and the stream is over (DONE) or not needed (resumed). */
static bool finishing(const struct dst_region *r)
{
	return r->done_rcvd || r->resumed;
}

/*
 * No room for more sweep demands now. A resumed session's sweep may have most of the
 * region to demand: it keeps at most RESUME_INFLIGHT pages outstanding, so that a guest
 * fault's demand never queues behind more than that on urgent.
 */
static bool sweep_blocked(const struct dst_region *r)
{
	return !r->link || !r->link->ops->demand_room(r->link) ||
	       (r->resumed && !r->done_rcvd && r->n_requested >= RESUME_INFLIGHT);
}

/*
 * After DONE every DATA page should have come. Pages that did not (a source that skipped
 * them, a session lost mid-stream) are demanded here, in runs, as urgent has room; pages
 * of other classes still missing are placed from what we know.
 */
static void finish_sweep(struct dst_region *r)
{
	uint64_t i = r->finish_cursor, end = r->npages;

	if (!finishing(r) || dst_region_map_pending(r) || !dst_link_up(r))
		return;
	if (end - i > FINISH_BUDGET)
		end = i + FINISH_BUDGET;
	while (i < end && dst_region_live(r)) {
		uint64_t j = i + 1;

		if (dst_pg_state(r, i) != DST_MISSING) {
			i++;
			continue;
		}
		if (!wants_data(r, i)) {
			fault_resolve(r, i++);
			continue;
		}
		if (sweep_blocked(r))
			break;
		while (j < r->npages && j - i < TLM_PROTO_MAX_DEMAND && wants_data(r, j))
			j++;
		if (!r->st.finish_demanded && !r->resumed)
			log_warn("%s: page %llu missing after DONE: demanding it (and any other)",
				 r->id, (unsigned long long)i);
		r->st.finish_demanded += j - i;
		demand(r, i, (uint32_t)(j - i));
		i = j;
	}
	r->finish_cursor = i;
}

static bool settled(const struct dst_region *r)
{
	return finishing(r) && !dst_region_map_pending(r) && !r->nredo &&
	       r->n_present + r->n_removed == r->npages;
}

/* Sessions, uffd and tables go; the counters stay for stats. */
static void release(struct dst_region *r)
{
	if (r->released)
		return;
	r->released = true;
	if (r->link) {
		r->link->ops->release(r->link);
		r->link = NULL;
	}
	if (r->uffd.fd >= 0) {
		/* before close: the glue holds the same uffd file, the epoll entry would stay */
		tlm_evloop_del(r->loop, &r->uffd_src);
		tlm_uffd_close(&r->uffd);
	}
	free(r->pg);
	free(r->mruns);
	free(r->mstart);
	free(r->faults);
	free(r->redo);
	r->pg = NULL;
	r->mruns = NULL;
	r->mstart = NULL;
	r->faults = NULL;
	r->redo = NULL;
	r->nmruns = r->mcap = r->mcur = 0;
	r->nfaults = r->faults_cap = r->nredo = r->redo_cap = 0;
}

static void complete(struct dst_region *r)
{
	const struct dst_region_stats *st = &r->st;
	uint64_t ms;
	int rc;

	rc = tlm_uffd_unregister(&r->uffd, r->base, r->size);
	if (rc < 0)
		log_warn("%s: unregistering the region: %s", r->id, strerror(-rc));
	r->phase = DST_COMPLETE;
	r->t_end_ns = tlm_now_ns();
	dst_region_notify_glue(r, TLM_LOCAL_DONE, NULL);
	release(r);
	ms = (r->t_end_ns - r->t_start_ns) / 1000000;
	log_info("%s: complete: %llu pages (%llu template, %llu zero, %llu ref, %llu data), "
		 "%.1f MB in %llu ms", r->id, (unsigned long long)r->npages,
		 (unsigned long long)st->pages_by_class[TLM_CLASS_TEMPLATE],
		 (unsigned long long)st->pages_by_class[TLM_CLASS_ZERO],
		 (unsigned long long)st->pages_by_class[TLM_CLASS_REF],
		 (unsigned long long)st->pages_by_class[TLM_CLASS_DATA],
		 (double)st->wire_in / 1e6, (unsigned long long)ms);
}

bool dst_region_busy(const struct dst_region *r)
{
	if (!dst_region_live(r))
		return r->dead ? !r->released : r->phase == DST_FAILED && !r->released;
	return r->nredo || dst_region_map_pending(r) || r->link_more ||
	       (finishing(r) && r->finish_cursor < r->npages && dst_link_up(r) &&
		!sweep_blocked(r));
}

bool dst_region_work(struct dst_region *r)
{
	if (r->dead || r->phase == DST_FAILED) {
		release(r);
		return false;
	}
	if (!dst_region_live(r))
		return false;
	if (r->nredo)
		redo_drain(r);
	if (dst_region_map_pending(r) && dst_region_live(r))
		map_sweep(r, SWEEP_BUDGET);
	if (dst_region_live(r))
		r->link_more = r->link->ops->pump(r->link);
	if (dst_region_live(r))
		finish_sweep(r);
	if (dst_region_live(r) && settled(r))
		complete(r);
	if (r->dead || r->phase == DST_FAILED)
		release(r);
	return dst_region_busy(r);
}

void dst_region_tick(struct dst_region *r, uint64_t now_ns)
{
	if (dst_region_live(r))
		r->link->ops->tick(r->link, now_ns);
}

/* ---- from the link --------------------------------------------------------------------------------- */

/* Both sessions are open: faults recorded meanwhile get their pages demanded. */
void dst_region_connected(struct dst_region *r)
{
	if (r->phase == DST_CONNECTING)
		r->phase = DST_MAPPING;
	if (r->map_final && !r->resumed)
		log_info("%s: resuming with the class map we have: demanding the %llu pages still "
			 "missing", r->id, (unsigned long long)(r->npages - r->n_present -
								 r->n_removed));
	r->resumed = r->map_final;
	for (uint64_t i = 0; i < r->npages && dst_region_live(r); i++)
		if ((r->pg[i] & DST_PG_FAULTED) && wants_data(r, i))
			demand(r, i, 1);
	r->finish_cursor = 0;
}

/* The urgent session is gone: what was requested on it is missing again. */
void dst_region_disconnected(struct dst_region *r)
{
	if (!r->pg)
		return;
	for (uint64_t i = 0; i < r->npages && r->n_requested; i++)
		if (dst_pg_state(r, i) == DST_REQUESTED)
			dst_pg_set_state(r, i, DST_MISSING);
	r->finish_cursor = 0;
}

/* ---- lifecycle -------------------------------------------------------------------------------------- */

void dst_region_notify_glue(struct dst_region *r, uint32_t type, const char *text)
{
	struct tlm_local_msg m;
	int rc;

	if (!r->glue || r->glue->dead)
		return;
	memset(&m, 0, sizeof(m));
	m.version = TLM_LOCAL_VERSION;
	m.type = type;
	m.page_size = PS;
	m.base = (uint64_t)(uintptr_t)r->base;
	m.size = r->size;
	m.offset = r->offset;
	memcpy(m.digest, r->digest, sizeof(m.digest));
	snprintf(m.vm_id, sizeof(m.vm_id), "%s", r->id);
	if (text)
		snprintf(m.text, sizeof(m.text), "%s", text);
	rc = tlm_local_send(r->glue->fd, &m, -1);
	if (rc < 0)
		log_warn("%s: telling the glue (pid %d): %s", r->id, (int)r->glue->pid,
			 strerror(-rc));
}

void dst_region_fail(struct dst_region *r, const char *fmt, ...)
{
	va_list ap;

	if (r->phase == DST_FAILED || r->phase == DST_COMPLETE)
		return;
	va_start(ap, fmt);
	vsnprintf(r->fail_reason, sizeof(r->fail_reason), fmt, ap);
	va_end(ap);
	log_error("%s: migration FAILED: %s (the guest's faults stay waiting)", r->id,
		  r->fail_reason);
	r->phase = DST_FAILED;
	r->t_end_ns = tlm_now_ns();
	dst_region_notify_glue(r, TLM_LOCAL_ERROR, r->fail_reason);
}

/* The guest process is gone (or unmapped the region). Finished regions stay for stats. */
void dst_region_drop(struct dst_region *r, const char *why)
{
	if (dst_region_active(r))
		log_warn("%s: dropping the region in phase %s: %s", r->id,
			 dst_phase_name(r->phase), why);
	r->glue = NULL;
	if (r->phase != DST_COMPLETE && r->phase != DST_FAILED)
		r->dead = true;
}

void dst_region_free(struct dst_region *r)
{
	release(r);
	free(r);
}

static int region_tmpl_check(const struct dst_region *r, char *err, size_t errlen)
{
	uint64_t tp = tlm_tmpl_page_count(r->tmpl);

	if (r->tmpl_base > tp || r->npages > tp - r->tmpl_base) {
		snprintf(err, errlen, "%s: region (offset %llu, %llu pages) extends beyond the "
			 "local template %s (%llu pages)", r->id, (unsigned long long)r->offset,
			 (unsigned long long)r->npages, tlm_tmpl_pages_path(r->tmpl),
			 (unsigned long long)tp);
		return -ERANGE;
	}
	return 0;
}

/* uffd readable: unless the region is going away. */
static void on_uffd(struct tlm_evsrc *src, uint32_t events)
{
	struct dst_region *r = TLM_EVSRC_OWNER(src, struct dst_region, uffd_src);

	if (!r->dead && r->uffd.fd >= 0)
		dst_region_uffd_event(r);
}

struct dst_region *dst_region_new(struct tlm_evloop *loop, struct dst_glue *g,
				  const struct tlm_local_msg *m, struct tlm_tmpl *tmpl,
				  const char *source, char *err, size_t errlen)
{
	struct dst_region *r = calloc(1, sizeof(*r));

	if (r)
		r->pg = calloc(m->size / PS, 1);
	if (!r || !r->pg) {
		free(r);
		snprintf(err, errlen, "%s: out of memory for %llu pages", m->vm_id,
			 (unsigned long long)(m->size / PS));
		return NULL;
	}
	r->loop = loop;
	r->glue = g;
	snprintf(r->id, sizeof(r->id), "%s", m->vm_id);
	snprintf(r->source, sizeof(r->source), "%s", source);
	r->base = (uint8_t *)(uintptr_t)m->base;
	r->size = m->size;
	r->npages = m->size / PS;
	r->offset = m->offset;
	r->flags = m->flags;
	memcpy(r->digest, m->digest, sizeof(r->digest));
	r->tmpl = tmpl;
	r->tmpl_base = m->offset / PS;
	r->uffd.fd = -1;
	r->uffd_src = (struct tlm_evsrc){ .fd = -1, .on_event = on_uffd, .prio = DST_PRIO_UFFD };
	r->st.pages_by_class[0] = r->npages;
	tlm_hist_init(&r->st.lat_all);
	tlm_hist_init(&r->st.lat_local);
	tlm_hist_init(&r->st.lat_demand);
	for (unsigned c = 0; c <= TLM_CLASS_DATA; c++)
		tlm_hist_init(&r->st.lat_cls[c]);
	r->t_start_ns = r->last_progress_ns = tlm_now_ns();
	if (tmpl && region_tmpl_check(r, err, errlen) < 0) {
		free(r->pg);
		free(r);
		return NULL;
	}
	return r;
}

/* pagemap entry bits (Documentation/admin-guide/mm/pagemap.rst) */
#define PM_PRESENT (1ull << 63)
#define PM_SWAPPED (1ull << 62)
#define PM_CHUNK   4096u

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

/*
 * Take over the uffd. A template region must have MINOR faults: without them the
 * kernel would map template pages into the guest for pages whose real content differs.
 */
int dst_region_attach_uffd(struct dst_region *r, int fd, uint64_t features)
{
	int rc;

	tlm_uffd_adopt(&r->uffd, fd, features);
	if ((r->flags & TLM_REGION_TEMPLATE) && !(features & UFFD_FEATURE_MINOR_SHMEM)) {
		dst_region_fail(r, "template region's uffd lacks MINOR_SHMEM (features 0x%llx)",
				(unsigned long long)features);
		tlm_uffd_close(&r->uffd);
		return -EINVAL;
	}
	r->minor = r->flags & TLM_REGION_TEMPLATE;
	if (!(features & UFFD_FEATURE_EVENT_REMOVE))
		log_warn("%s: uffd without EVENT_REMOVE: pages the guest discards are not seen "
			 "(a fault on one would only be woken)", r->id);
	rc = tlm_set_nonblock(fd, 1);
	r->uffd_src.fd = fd;
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
	/* threads whose fault an earlier daemon read and never answered: fault again */
	tlm_uffd_wake(&r->uffd, r->base, r->size);
	r->phase = DST_CONNECTING;
	log_info("%s: uffd attached: %llu pages at 0x%llx%s; connecting to %s", r->id,
		 (unsigned long long)r->npages, (unsigned long long)(uintptr_t)r->base,
		 r->minor ? " (template-backed, MINOR)" : "", r->source);
	read_events(r);          /* faults that came before we watched */
	r->link->ops->connect(r->link);
	return 0;
}
