/*
 * dst_map.c — a region's class map: ingest, checks, the sweep; version 3's live and fix
 * maps and their merge (dst_map.h).
 */
#include "dst_map.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>

#include "dst_pages.h"
#include "dst_place.h"
#include "log.h"
#include "util.h"

#define SWEEP_CHUNK 64               /* pages per ioctl at most */
#define SWEEP_YIELD 64               /* pages placed between checks for events */

/* ---- runs ---------------------------------------------------------------------------------- */

static int runs_grow(struct dst_runs *rs, char *err, size_t errlen)
{
	uint32_t cap = rs->cap ? rs->cap * 2 : 1024;
	struct tlm_run *run = realloc(rs->run, cap * sizeof(*run));
	uint64_t *start = run ? realloc(rs->start, cap * sizeof(*start)) : NULL;

	if (run)
		rs->run = run;
	if (!start) {
		snprintf(err, errlen, "out of memory for the class map (%u runs)", cap);
		return -ENOMEM;
	}
	rs->start = start;
	rs->cap = cap;
	return 0;
}

/* Append run, which starts at page (the end of the runs so far). */
static int runs_add(struct dst_runs *rs, struct tlm_run run, uint64_t page, char *err,
		    size_t errlen)
{
	int rc;

	if (rs->n == rs->cap && (rc = runs_grow(rs, err, errlen)) < 0)
		return rc;
	rs->run[rs->n] = run;
	rs->start[rs->n++] = page;
	rs->end = page + run.len;
	return 0;
}

/* The last run that starts at or before page (rs->n if none does). */
static uint32_t runs_find(const struct dst_runs *rs, uint64_t page)
{
	uint32_t lo = 0, hi = rs->n;

	if (!hi || page < rs->start[0])
		return rs->n;
	while (hi - lo > 1) {
		uint32_t mid = lo + (hi - lo) / 2;

		if (rs->start[mid] <= page)
			lo = mid;
		else
			hi = mid;
	}
	return lo;
}

/* ---- the class map -------------------------------------------------------------------------- */

bool dst_map_pending(const struct dst_region *r)
{
	return r->mcur < r->map.n;
}

int dst_map_ref(const struct dst_region *r, uint64_t page, uint64_t *k)
{
	uint32_t i = runs_find(&r->map, page);

	if (i == r->map.n || r->map.run[i].cls != TLM_CLASS_REF ||
	    page - r->map.start[i] >= r->map.run[i].len)
		return -ENOENT;
	*k = r->map.run[i].arg + (page - r->map.start[i]);
	return 0;
}

static int map_check_run(const struct dst_region *r, const struct tlm_run *run, uint64_t page,
			 bool keep_ok, char *err, size_t errlen)
{
	uint64_t tp = r->tmpl ? tlm_tmpl_page_count(r->tmpl) : 0;
	unsigned lo = keep_ok ? TLM_CLASS_KEEP : TLM_CLASS_TEMPLATE;

	if (run->cls < lo || run->cls > TLM_CLASS_DATA || !run->len) {
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

/* Validate the whole frame before anything is used (KEEP runs only in a fix map). */
static int map_check(const struct dst_region *r, const struct tlm_msg *m, char *err,
		     size_t errlen)
{
	uint64_t page = m->u.class_map.first_page;
	bool keep_ok = m->u.class_map.kind == TLM_MAP_FIX;

	for (uint32_t i = 0; i < m->u.class_map.nruns; i++) {
		const struct tlm_run *run = &m->u.class_map.runs[i];
		int rc = map_check_run(r, run, page, keep_ok, err, errlen);

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
			dst_pg_set_cls(r, i, run->cls);
		} else if (c != run->cls) {
			snprintf(err, errlen, "CLASS_MAP says page %llu is %s, earlier it was %s",
				 (unsigned long long)i, tlm_class_name(run->cls),
				 tlm_class_name(c));
			return -EPROTO;
		}
		if ((r->pg[i] & DST_PG_FAULTED) && dst_pg_placeable(r, i))
			dst_pg_redo(r, i);
	}
	return 0;
}

/* The final frame is applied: every page's class is known. */
static void map_applied(struct dst_region *r)
{
	const uint64_t *c = r->st.pages_by_class;

	if (!r->map_final || dst_map_pending(r) || r->phase != DST_MAPPING)
		return;
	r->phase = DST_FETCHING;
	if (!r->t_map_ns)
		r->t_map_ns = tlm_now_ns();
	log_info("%s: class map applied: %llu template, %llu zero, %llu ref, %llu data pages%s",
		 r->id, (unsigned long long)c[TLM_CLASS_TEMPLATE],
		 (unsigned long long)c[TLM_CLASS_ZERO], (unsigned long long)c[TLM_CLASS_REF],
		 (unsigned long long)c[TLM_CLASS_DATA], c[0] ? " (some pages not covered)" : "");
}

/* The final frame of a map came at now (kind: how the map came, for the stats). */
static void map_complete(struct dst_region *r, const char *kind, uint64_t now)
{
	if (r->map_final)
		return;                  /* a map resent after a reconnect */
	r->map_final = true;
	r->map_kind = kind;
	r->t_map_rcvd_ns = now;
}

/* One run of a frame: the part below map.end was received before (a resent map): its
 * classes must agree; the rest is appended for the sweep. */
static int map_take_run(struct dst_region *r, struct tlm_run run, uint64_t page, char *err,
			size_t errlen)
{
	uint64_t seen = r->map.end > page ? r->map.end - page : 0;
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
	if (r->map.n == r->map.cap && (rc = runs_grow(&r->map, err, errlen)) < 0)
		return rc;
	rc = map_classes(r, &run, page, err, errlen);
	return rc ? rc : runs_add(&r->map, run, page, err, errlen);
}

/* ---- version 3: live and fix maps ----------------------------------------------------------- */

static void stage_invalidate(struct dst_region *r, uint64_t page, uint64_t n)
{
	if (r->stage.held)
		r->st.stage.invalidated += dst_stage_drop_range(&r->stage, page, n);
}

/* The live map (and what was merged of the fix map) goes, with every staged copy: they
 * belong to a session that is over, or the source chose to start over. */
static void live_discard(struct dst_region *r, const char *why)
{
	uint64_t n = dst_stage_clear(&r->stage);

	r->st.stage.invalidated += n;
	log_warn("%s: %s: dropping the live map and %llu pre-sent pages", r->id, why,
		 (unsigned long long)n);
	dst_runs_free(&r->lv.live);
	dst_runs_free(&r->lv.fix);
	r->lv.state = DST_LIVE_NONE;
}

void dst_map_session_end(struct dst_region *r)
{
	if (dst_region_staging(r))
		live_discard(r, "the bulk session ended before the final fix frame");
	r->lv.sess_map = false;
}

/* Live and fix maps come in order from page 0, each frame where the last one ended, and
 * their final frame covers the whole region. */
static int frame_follows(const struct dst_region *r, const struct dst_runs *rs,
			 const struct tlm_msg *m, const char *what, char *err, size_t errlen)
{
	uint64_t end = m->u.class_map.first_page;

	if (end != rs->end) {
		snprintf(err, errlen, "CLASS_MAP: %s map frame starts at page %llu, expected %llu",
			 what, (unsigned long long)end, (unsigned long long)rs->end);
		return -EPROTO;
	}
	for (uint32_t i = 0; i < m->u.class_map.nruns; i++)
		end += m->u.class_map.runs[i].len;
	if (m->u.class_map.final && end != r->npages) {
		snprintf(err, errlen, "CLASS_MAP: %s map ends at page %llu, the region has %llu",
			 what, (unsigned long long)end, (unsigned long long)r->npages);
		return -EPROTO;
	}
	return 0;
}

static int live_allowed(const struct dst_region *r, const struct tlm_msg *m, char *err,
			size_t errlen)
{
	enum dst_live_state st = r->lv.state;

	if (st == DST_LIVE_HELD || st == DST_LIVE_FIX ||
	    (st == DST_LIVE_MAP && !m->u.class_map.first_page)) {
		snprintf(err, errlen, "CLASS_MAP: a second live map in this bulk session before "
			 "the fix map");
		return -EPROTO;
	}
	if (r->lv.sess_map) {
		snprintf(err, errlen, "CLASS_MAP: live map after the class map in this bulk "
			 "session");
		return -EPROTO;
	}
	return 0;
}

/* Recorded apart (never placed from, never used for a fault); PAGES from now on are
 * pre-sent: staged. */
static int live_frame(struct dst_region *r, const struct tlm_msg *m, char *err, size_t errlen)
{
	uint64_t page = m->u.class_map.first_page;
	int rc = live_allowed(r, m, err, errlen);

	if (!rc)
		rc = map_check(r, m, err, errlen);
	if (!rc)
		rc = frame_follows(r, &r->lv.live, m, "live", err, errlen);
	for (uint32_t i = 0; i < m->u.class_map.nruns && !rc; i++) {
		rc = runs_add(&r->lv.live, m->u.class_map.runs[i], page, err, errlen);
		page += m->u.class_map.runs[i].len;
	}
	if (rc)
		return rc;
	r->lv.state = m->u.class_map.final ? DST_LIVE_HELD : DST_LIVE_MAP;
	if (m->u.class_map.final)
		log_info("%s: live map received: %u runs; pre-sent pages are held until the fix "
			 "map", r->id, r->lv.live.n);
	return 0;
}

/* KEEP [page, page + len): the live map's runs over the range, cut at its ends (a REF
 * run's template page moves with the cut). Only DATA pages keep their copies. */
static int fix_keep(struct dst_region *r, uint64_t page, uint64_t len, char *err,
		    size_t errlen)
{
	const struct dst_runs *lv = &r->lv.live;
	uint64_t end = page + len;
	int rc = 0;

	for (uint32_t i = runs_find(lv, page); page < end && !rc; i++) {
		struct tlm_run run = lv->run[i];
		uint64_t off = page - lv->start[i], n = run.len - off;

		if (n > end - page)
			n = end - page;
		run.arg += run.cls == TLM_CLASS_REF ? off : 0;
		run.len = (uint32_t)n;
		if (run.cls != TLM_CLASS_DATA)
			stage_invalidate(r, page, n);
		rc = runs_add(&r->lv.fix, run, page, err, errlen);
		page += n;
	}
	return rc;
}

/* The final fix frame: the merged runs become the class map, as if it had come whole. */
static int fix_apply(struct dst_region *r, char *err, size_t errlen)
{
	const struct dst_runs *f = &r->lv.fix;
	int rc = 0;

	for (uint32_t i = 0; i < f->n && !rc; i++)
		rc = map_take_run(r, f->run[i], f->start[i], err, errlen);
	if (rc)
		return rc;
	log_info("%s: fix map received: %u runs, %llu pre-sent pages stand", r->id, f->n,
		 (unsigned long long)r->stage.held);
	dst_runs_free(&r->lv.live);
	dst_runs_free(&r->lv.fix);
	r->lv.state = DST_LIVE_NONE;
	r->t_fix_ns = tlm_now_ns();
	map_complete(r, "live+fix", r->t_fix_ns);
	map_applied(r);
	return 0;
}

/* Merged as it comes (a non-KEEP run's pages lose their copies at once: a page pre-sent
 * after it is newer); nothing reaches the class map before the final frame. */
static int fix_frame(struct dst_region *r, const struct tlm_msg *m, char *err, size_t errlen)
{
	uint64_t page = m->u.class_map.first_page;
	int rc;

	if (r->lv.state != DST_LIVE_HELD && r->lv.state != DST_LIVE_FIX) {
		snprintf(err, errlen, "CLASS_MAP: fix map without a %slive map",
			 r->lv.state == DST_LIVE_MAP ? "complete " : "");
		return -EPROTO;
	}
	rc = map_check(r, m, err, errlen);
	if (!rc)
		rc = frame_follows(r, &r->lv.fix, m, "fix", err, errlen);
	if (rc)
		return rc;
	r->lv.state = DST_LIVE_FIX;
	r->lv.sess_map = true;
	for (uint32_t i = 0; i < m->u.class_map.nruns && !rc; i++) {
		struct tlm_run run = m->u.class_map.runs[i];

		if (run.cls == TLM_CLASS_KEEP) {
			rc = fix_keep(r, page, run.len, err, errlen);
		} else {
			stage_invalidate(r, page, run.len);
			rc = runs_add(&r->lv.fix, run, page, err, errlen);
		}
		page += run.len;
	}
	if (!rc && m->u.class_map.final)
		rc = fix_apply(r, err, errlen);
	return rc;
}

/* ---- whole maps ----------------------------------------------------------------------------- */

/* The frame is checked whole before anything is used; runs below map.end were received
 * before (a map resent after a reconnect): they are only compared. */
static int whole_frame(struct dst_region *r, const struct tlm_msg *m, char *err, size_t errlen)
{
	uint32_t n = m->u.class_map.nruns;
	uint64_t page = m->u.class_map.first_page;
	int rc = map_check(r, m, err, errlen);

	if (rc)
		return rc;
	if (page > r->map.end) {
		snprintf(err, errlen, "CLASS_MAP frame starts at page %llu, after a gap (pages "
			 "from %llu not described)", (unsigned long long)page,
			 (unsigned long long)r->map.end);
		return -EPROTO;
	}
	if (dst_region_staging(r))
		live_discard(r, "a whole class map came after a live map");
	r->lv.sess_map = true;
	for (uint32_t i = 0; i < n; i++) {
		rc = map_take_run(r, m->u.class_map.runs[i], page, err, errlen);
		if (rc)
			return rc;
		page += m->u.class_map.runs[i].len;
	}
	if (m->u.class_map.final)
		map_complete(r, "whole", tlm_now_ns());
	map_applied(r);
	log_debug("%s: class map frame: pages %llu..%llu, %u runs%s", r->id,
		  (unsigned long long)m->u.class_map.first_page, (unsigned long long)page, n,
		  m->u.class_map.final ? " (final)" : "");
	return 0;
}

int dst_map_frame(struct dst_region *r, const struct tlm_msg *m, char *err, size_t errlen)
{
	switch (m->u.class_map.kind) {
	case TLM_MAP_LIVE:
		return live_frame(r, m, err, errlen);
	case TLM_MAP_FIX:
		return fix_frame(r, m, err, errlen);
	}
	return whole_frame(r, m, err, errlen);
}

/* ---- the sweep ------------------------------------------------------------------------------ */

/* Place n pages of a known class from page (at offset pos into its run); DATA pages only
 * where a staged copy stands. */
static int sweep_place(struct dst_region *r, const struct tlm_run *run, uint64_t page,
		       uint64_t pos, uint64_t n)
{
	switch (run->cls) {
	case TLM_CLASS_TEMPLATE:
		return dst_place_template(r, page, n, DST_ALLOW_NORMAL);
	case TLM_CLASS_ZERO:
		return dst_place_range(r, DST_HOW_ZERO, page, n, NULL, TLM_CLASS_ZERO,
				       DST_ALLOW_NORMAL, NULL);
	case TLM_CLASS_REF:
		return dst_place_copy_tmpl(r, page, n, run->arg + pos, TLM_CLASS_REF,
					   DST_ALLOW_NORMAL);
	case TLM_CLASS_DATA:
		return dst_place_staged(r, page, n);
	}
	return 0;
}

/*
 * Nothing to place in a run: DATA without staged copies (the pages come in PAGE
 * messages), TEMPLATE in a MINOR region (the kernel maps the template's page once the
 * region is unregistered, dst_region_tmpl_to_kernel; a fault on one is served by
 * CONTINUE meanwhile; if the map never becomes final the finish sweep places them).
 */
static bool sweep_skips(const struct dst_region *r, const struct tlm_run *run)
{
	if (run->cls == TLM_CLASS_TEMPLATE)
		return r->minor;
	return run->cls == TLM_CLASS_DATA && !dst_stage_usable(r);
}

/*
 * A guest fault must not wait behind the sweep: every SWEEP_YIELD pages placed it stops
 * if an event waits. Counted in pages, not runs: a map of short runs would otherwise pay
 * an epoll_wait for every run of a page or two. A run with nothing to place costs one
 * unit of budget.
 */
void dst_map_sweep(struct dst_region *r, uint64_t budget)
{
	uint64_t placed = 0;

	while (budget && r->mcur < r->map.n && dst_region_live(r)) {
		const struct tlm_run *run = &r->map.run[r->mcur];
		uint64_t page = r->map.start[r->mcur] + r->mpos, left = run->len - r->mpos;
		uint64_t n = left < SWEEP_CHUNK ? left : SWEEP_CHUNK;
		bool skip = sweep_skips(r, run);

		if (placed >= SWEEP_YIELD && !skip) {
			placed = 0;
			if (tlm_evloop_should_yield(r->loop))
				break;
		}
		if (n > budget)
			n = budget;
		if (skip)
			n = left;
		else if (sweep_place(r, run, page, r->mpos, n))
			return;
		budget -= skip ? 1 : n;
		placed += skip ? 0 : n;
		r->mpos += n;
		if (r->mpos == run->len) {
			r->mcur++;
			r->mpos = 0;
		}
	}
	if (!dst_map_pending(r) && dst_region_live(r))
		map_applied(r);
}
