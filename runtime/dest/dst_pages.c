/*
 * dst_pages.c — page-state transitions and waiting faults (dst_pages.h).
 */
#include "dst_pages.h"

#include <errno.h>
#include <stdlib.h>

#include "log.h"
#include "util.h"

#define FAULTS_MAX 4096              /* latency records kept; more faults still wait fine */

bool dst_pg_allowed(const struct dst_region *r, uint64_t i, unsigned allow)
{
	enum dst_pg_state s = dst_pg_state(r, i);

	if (s == DST_MISSING || s == DST_REQUESTED)
		return allow & DST_ALLOW_NORMAL;
	return s == DST_REMOVED && (allow & DST_ALLOW_REMOVED);
}

/* A page present or discarded by other means than its staged copy (a PAGE, EEXIST, the
 * guest) has no use for the copy. Copies being placed are dst_place_staged's. */
static void stage_forget(struct dst_region *r, uint64_t i)
{
	struct dst_stage *s = &r->stage;

	if (s->held && (i < s->busy || i >= s->busy_end) && dst_stage_drop(s, i))
		r->st.stage.invalidated++;
}

/* Counted in n_tmpl_left: a TEMPLATE page nothing has placed. */
static bool tmpl_left(const struct dst_region *r, uint64_t i)
{
	return dst_pg_cls(r, i) == TLM_CLASS_TEMPLATE && dst_pg_placeable(r, i);
}

void dst_pg_set_state(struct dst_region *r, uint64_t i, enum dst_pg_state s)
{
	enum dst_pg_state old = dst_pg_state(r, i);
	bool was_left = tmpl_left(r, i);

	if (old == s)
		return;
	if (s == DST_PRESENT || s == DST_REMOVED)
		stage_forget(r, i);
	r->n_present -= old == DST_PRESENT;
	r->n_removed -= old == DST_REMOVED;
	r->n_requested -= old == DST_REQUESTED;
	r->n_present += s == DST_PRESENT;
	r->n_removed += s == DST_REMOVED;
	r->n_requested += s == DST_REQUESTED;
	r->pg[i] = (uint8_t)((r->pg[i] & ~DST_PG_ST) | (unsigned)s << DST_PG_ST_SHIFT);
	r->n_tmpl_left += (uint64_t)tmpl_left(r, i) - was_left;
	/* A page MISSING again behind the finish sweep (a reply deferred by EAGAIN, a bad
	 * checksum) must be looked at again, or the region would never complete. */
	if (s == DST_MISSING && i < r->finish_cursor)
		r->finish_cursor = i;
}

void dst_pg_set_cls(struct dst_region *r, uint64_t i, unsigned cls)
{
	unsigned old = dst_pg_cls(r, i);
	bool was_left = tmpl_left(r, i);

	if (old == cls)
		return;
	r->st.pages_by_class[old]--;
	r->st.pages_by_class[cls]++;
	r->pg[i] = (uint8_t)((r->pg[i] & ~DST_PG_CLS) | cls);
	r->n_tmpl_left += (uint64_t)tmpl_left(r, i) - was_left;
}

void dst_pg_learn_cls(struct dst_region *r, uint64_t page, uint64_t count, unsigned cls)
{
	for (uint64_t i = page; i < page + count; i++)
		if (!dst_pg_cls(r, i))
			dst_pg_set_cls(r, i, cls);
}

/* ---- waiting faults ------------------------------------------------------------------------ */

int dst_pg_redo(struct dst_region *r, uint64_t page)
{
	if (r->nredo == r->redo_cap) {
		size_t nc = r->redo_cap ? r->redo_cap * 2 : 64;
		uint64_t *p = realloc(r->redo, nc * sizeof(*p));

		if (!p)
			return -ENOMEM;
		r->redo = p;
		r->redo_cap = nc;
	}
	r->redo[r->nredo++] = page;
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

void dst_pg_fault(struct dst_region *r, uint64_t page, uint64_t now_ns)
{
	r->st.faults++;
	r->st.faults_by_class[dst_pg_cls(r, page)]++;
	r->pg[page] |= DST_PG_FAULTED;
	fault_record(r, page, now_ns);
	if (dst_pg_redo(r, page) < 0)
		log_error("%s: out of memory queueing a fault (page %llu waits)", r->id,
			  (unsigned long long)page);
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

void dst_pg_fault_over(struct dst_region *r, uint64_t page, unsigned cls)
{
	if (r->pg[page] & DST_PG_FAULTED)
		fault_settle(r, page, cls, false, tlm_now_ns());
}

/* ---- transitions -------------------------------------------------------------------------- */

void dst_pg_placed(struct dst_region *r, uint64_t first, uint64_t n, unsigned cls,
		   bool set_cls)
{
	uint64_t now = 0;

	for (uint64_t i = first; i < first + n; i++) {
		bool remote = dst_pg_state(r, i) == DST_REQUESTED;

		if (set_cls && !dst_pg_cls(r, i))
			dst_pg_set_cls(r, i, cls);
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
 * Only content from before arming could be there (the glue discards it first); we cannot
 * replace a present page, so say so loudly, count it, and treat the page as present.
 */
void dst_pg_existing(struct dst_region *r, uint64_t page, unsigned cls, bool set_cls)
{
	bool remote = dst_pg_state(r, page) == DST_REQUESTED;

	if (!r->st.eexist++)
		log_warn("%s: page %llu was already present when placing it (%s); "
			 "treating it as present", r->id, (unsigned long long)page,
			 tlm_class_name(cls));

	if (set_cls && !dst_pg_cls(r, page))
		dst_pg_set_cls(r, page, cls);
	if (!set_cls)
		r->pg[page] |= DST_PG_ZEROFILL;
	dst_pg_set_state(r, page, DST_PRESENT);
	if (r->pg[page] & DST_PG_FAULTED)
		fault_settle(r, page, cls, remote, tlm_now_ns());
}

/* A waiting fault on such a page gets its zero page through the redo list. */
void dst_pg_removed(struct dst_region *r, uint64_t first, uint64_t last)
{
	for (uint64_t i = first; i < last; i++) {
		dst_pg_set_state(r, i, DST_REMOVED);
		if (r->pg[i] & DST_PG_FAULTED)
			dst_pg_redo(r, i);
	}
}

/* At most once per session: only MISSING pages are asked for. */
void dst_pg_demand(struct dst_region *r, uint64_t page, uint64_t count)
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

/* Waiting faults are queued (their class is known now); the other pages are placed after
 * DONE at the latest. */
void dst_pg_defer(struct dst_region *r, uint64_t page, uint64_t count)
{
	for (uint64_t i = page; i < page + count; i++) {
		if (!dst_pg_placeable(r, i))
			continue;
		dst_pg_set_state(r, i, DST_MISSING);
		if (r->pg[i] & DST_PG_FAULTED)
			dst_pg_redo(r, i);
	}
}

void dst_pg_session_lost(struct dst_region *r)
{
	for (uint64_t i = 0; i < r->npages && r->n_requested; i++)
		if (dst_pg_state(r, i) == DST_REQUESTED)
			dst_pg_set_state(r, i, DST_MISSING);
}

bool dst_pg_bad_sum(struct dst_region *r, uint64_t page)
{
	if (r->pg[page] & DST_PG_BADSUM)
		return false;
	r->pg[page] |= DST_PG_BADSUM;
	return true;
}
