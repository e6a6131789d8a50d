/*
 * dst_map.c — a region's class map: ingest, checks, the sweep (dst_map.h).
 */
#include "dst_map.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>

#include "dst_pages.h"
#include "dst_place.h"
#include "log.h"
#include "util.h"

#define SWEEP_CHUNK 64               /* pages per ioctl between checks for events */

bool dst_map_pending(const struct dst_region *r)
{
	return r->mcur < r->nmruns;
}

int dst_map_ref(const struct dst_region *r, uint64_t page, uint64_t *k)
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

/* The frame is checked whole before anything is used; runs below mend were received
 * before (a map resent after a reconnect): they are only compared. */
int dst_map_frame(struct dst_region *r, const struct tlm_msg *m, char *err, size_t errlen)
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

/* Place n pages of a known class from page (at offset pos into its run). */
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
	}
	return 0;
}

/* A guest fault must not wait behind the sweep: after the first chunk, it stops as soon
 * as an event waits. DATA runs cost one unit of budget (nothing to place). */
void dst_map_sweep(struct dst_region *r, uint64_t budget)
{
	bool first = true;

	while (budget && r->mcur < r->nmruns && dst_region_live(r)) {
		const struct tlm_run *run = &r->mruns[r->mcur];
		uint64_t page = r->mstart[r->mcur] + r->mpos, left = run->len - r->mpos;
		uint64_t n = left < SWEEP_CHUNK ? left : SWEEP_CHUNK;

		if (!first && run->cls != TLM_CLASS_DATA && tlm_evloop_should_yield(r->loop))
			break;
		first = false;
		if (n > budget)
			n = budget;
		if (run->cls == TLM_CLASS_DATA)
			n = left;            /* DATA: comes in PAGE messages */
		else if (sweep_place(r, run, page, r->mpos, n))
			return;
		budget -= run->cls == TLM_CLASS_DATA ? 1 : n;
		r->mpos += n;
		if (r->mpos == run->len) {
			r->mcur++;
			r->mpos = 0;
		}
	}
	if (!dst_map_pending(r) && dst_region_live(r))
		map_applied(r);
}
