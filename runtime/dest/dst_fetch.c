/*
 * dst_fetch.c — what the link brings a region and what makes it finish (dst_fetch.h).
 */
#include "dst_fetch.h"

#include <errno.h>
#include <stdio.h>

#include "dst_fault.h"
#include "dst_map.h"
#include "dst_pages.h"
#include "dst_place.h"
#include "log.h"
#include "util.h"

#define SWEEP_BUDGET     4096        /* pages placed per work call at most */
#define FINISH_BUDGET    65536       /* pages scanned per work call after DONE */
#define RESUME_INFLIGHT  1024        /* resumed: swept pages in flight on urgent at most */

/* ---- what the source says ------------------------------------------------------------------ */

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

/* A PAGE whose bytes do not match its checksum is never placed. The first time, the page
 * is asked for again on urgent; a second mismatch fails the region. */
static void bad_sum(struct dst_region *r, uint64_t page, bool urgent, uint64_t got,
		    uint64_t sent)
{
	r->st.checksum_errors++;
	log_error("%s: page %llu (%s): checksum mismatch: data hashes to %016llx, sender said "
		  "%016llx; not placed", r->id, (unsigned long long)page,
		  urgent ? "urgent" : "bulk", (unsigned long long)got, (unsigned long long)sent);
	if (!dst_pg_bad_sum(r, page)) {
		dst_region_fail(r, "page %llu failed its checksum twice", (unsigned long long)page);
		return;
	}
	if (!urgent && dst_pg_state(r, page) == DST_REQUESTED)
		return;                 /* a demand reply for it is on its way */
	dst_pg_set_state(r, page, DST_MISSING);
	dst_pg_demand(r, page, 1);
}

/* Place a stretch of checked DATA pages [page, page + n) whose bytes are at data. */
static void data_place(struct dst_region *r, uint64_t page, uint64_t n, const uint8_t *data)
{
	int rc;

	dst_pg_learn_cls(r, page, n, TLM_CLASS_DATA);
	rc = dst_place_range(r, DST_HOW_COPY, page, n, data, TLM_CLASS_DATA, DST_ALLOW_NORMAL,
			     NULL);
	if (rc != -EAGAIN)
		return;
	/* The bytes live in the receive buffer only: ask again for what is still missing. */
	for (uint64_t i = page; i < page + n; i++) {
		if (dst_pg_placeable(r, i)) {
			dst_pg_set_state(r, i, DST_MISSING);
			dst_pg_demand(r, i, 1);
		}
	}
}

/* One pre-sent page: held if its checksum matches and there is room. A bad one is never
 * held and takes an older copy of the page with it: the source sent the page again
 * because the guest wrote it, so that copy is stale. */
static void stage_page(struct dst_region *r, uint64_t page, const uint8_t *data, uint64_t sum)
{
	uint64_t got;
	bool had;

	if (!dst_pg_placeable(r, page)) {
		r->st.data_pages_dropped++;     /* present already, or discarded */
		return;
	}
	got = tlm_proto_page_sum(data);
	if (got != sum) {
		r->st.stage.dropped_badsum++;
		r->st.stage.invalidated += dst_stage_drop(&r->stage, page);
		log_warn("%s: pre-sent page %llu: checksum mismatch (data hashes to %016llx, sender "
			 "said %016llx); not held", r->id, (unsigned long long)page,
			 (unsigned long long)got, (unsigned long long)sum);
		return;
	}
	had = dst_stage_has(&r->stage, page);
	if (dst_stage_put(&r->stage, page, data) == 0) {
		r->st.stage.received++;
		r->st.stage.invalidated += had;     /* the newer copy replaced it */
	} else if (!r->st.stage.dropped_full++) {
		log_warn("%s: no room to hold pre-sent page %llu (--stage-max): it and any others "
			 "dropped are fetched like missing pages", r->id, (unsigned long long)page);
	}
}

/* Before the final fix frame, DATA on bulk is pre-sent: held aside, never placed. */
static int stage_msg(struct dst_region *r, const char *what, uint64_t page, uint32_t n,
		     const uint8_t *data, const uint64_t *sums, char *err, size_t errlen)
{
	int rc = range_check(r, what, page, n, err, errlen);

	if (rc)
		return rc;
	r->st.data_pages_in += n;
	for (uint32_t i = 0; i < n; i++)
		stage_page(r, page + i, data + (uint64_t)i * TLM_PAGE_SIZE, sums[i]);
	return 0;
}

/*
 * DATA pages [page, page + n) with their checksums: a page that fails its checksum is
 * never placed, the others go in as few UFFDIO_COPY calls as there are stretches of
 * pages that may be placed (one for a PAGES frame of missing pages).
 */
static int data_msg(struct dst_region *r, const char *what, uint64_t page, uint32_t n,
		    const uint8_t *data, const uint64_t *sums, bool urgent, char *err,
		    size_t errlen)
{
	uint64_t good = page;   /* first page of the current stretch of good sums */
	int rc;

	if (!urgent && dst_region_staging(r))
		return stage_msg(r, what, page, n, data, sums, err, errlen);
	rc = range_check(r, what, page, n, err, errlen);
	if (!rc)
		rc = cls_check(r, what, page, n, TLM_CLASS_DATA, TLM_CLASS_DATA, err, errlen);
	if (rc)
		return rc;
	r->st.data_pages_in += n;
	for (uint64_t i = page; i <= page + n; i++) {
		const uint8_t *d = data + (i - page) * TLM_PAGE_SIZE;
		uint64_t sum = 0;

		if (i < page + n && !dst_pg_placeable(r, i)) {
			r->st.data_pages_dropped++;     /* present already, or discarded */
			continue;
		}
		if (i < page + n && (sum = tlm_proto_page_sum(d)) == sums[i - page])
			continue;
		if (i > good)
			data_place(r, good, i - good, data + (good - page) * TLM_PAGE_SIZE);
		if (i < page + n)
			bad_sum(r, i, urgent, sum, sums[i - page]);
		good = i + 1;
	}
	return 0;
}

int dst_region_page_msg(struct dst_region *r, const struct tlm_msg *m, bool urgent,
			char *err, size_t errlen)
{
	return data_msg(r, "PAGE", m->u.page.page, 1, m->u.page.data, &m->u.page.xxh64, urgent,
			err, errlen);
}

int dst_region_pages_msg(struct dst_region *r, const struct tlm_msg *m, bool urgent,
			 char *err, size_t errlen)
{
	uint64_t sums[TLM_PROTO_MAX_PAGES];

	for (uint32_t i = 0; i < m->u.pages.count && i < TLM_PROTO_MAX_PAGES; i++)
		sums[i] = tlm_proto_pages_sum(m, i);
	return data_msg(r, "PAGES", m->u.pages.page, m->u.pages.count, m->u.pages.data, sums,
			urgent, err, errlen);
}

int dst_region_zero_msg(struct dst_region *r, const struct tlm_msg *m, char *err, size_t errlen)
{
	uint64_t page = m->u.zero.page, n = m->u.zero.count;
	int rc = range_check(r, "ZERO", page, n, err, errlen);

	if (!rc)
		rc = cls_check(r, "ZERO", page, n, TLM_CLASS_ZERO, TLM_CLASS_ZERO, err, errlen);
	if (rc)
		return rc;
	dst_pg_learn_cls(r, page, n, TLM_CLASS_ZERO);
	rc = dst_place_range(r, DST_HOW_ZERO, page, n, NULL, TLM_CLASS_ZERO, DST_ALLOW_NORMAL,
			     NULL);
	if (rc == -EAGAIN)
		dst_pg_defer(r, page, n);
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
	dst_pg_learn_cls(r, page, n, same ? TLM_CLASS_TEMPLATE : TLM_CLASS_REF);
	if (same)
		rc = dst_place_template(r, page, n, DST_ALLOW_NORMAL);
	else
		rc = dst_place_copy_tmpl(r, page, n, k, TLM_CLASS_REF, DST_ALLOW_NORMAL);
	if (rc == -EAGAIN)
		dst_pg_defer(r, page, n);
	return 0;
}

/* Recorded and checked by dst_map; placed by the sweep in dst_region_work. */
int dst_region_map_msg(struct dst_region *r, const struct tlm_msg *m, char *err, size_t errlen)
{
	return dst_map_frame(r, m, err, errlen);
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

/* ---- finishing ---------------------------------------------------------------------------- */

/* Only the source has its content (a final staged copy is placed like a known class). */
static bool wants_data(const struct dst_region *r, uint64_t i)
{
	unsigned c = dst_pg_cls(r, i);

	return dst_pg_state(r, i) == DST_MISSING && (c == 0 || c == TLM_CLASS_DATA) &&
	       !(dst_stage_usable(r) && dst_stage_has(&r->stage, i));
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

/* A missing page the finish sweep leaves alone: TEMPLATE, left to the kernel. */
static bool left_to_kernel(const struct dst_region *r, uint64_t i)
{
	return dst_pg_cls(r, i) == TLM_CLASS_TEMPLATE && dst_region_tmpl_to_kernel(r);
}

/*
 * After DONE every DATA page should have come. Pages that did not (a source that skipped
 * them, a session lost mid-stream) are demanded here, in runs, as urgent has room; pages
 * of other classes still missing are placed from what we know (TEMPLATE ones only where
 * the kernel cannot map them, dst_region_tmpl_to_kernel).
 */
static void finish_sweep(struct dst_region *r)
{
	uint64_t i = r->finish_cursor, end = r->npages;

	if (!finishing(r) || dst_map_pending(r) || !dst_link_up(r))
		return;
	if (end - i > FINISH_BUDGET)
		end = i + FINISH_BUDGET;
	while (i < end && dst_region_live(r)) {
		uint64_t j = i + 1;

		if (dst_pg_state(r, i) != DST_MISSING || left_to_kernel(r, i)) {
			i++;
			continue;
		}
		if (!wants_data(r, i)) {
			dst_fault_resolve(r, i++);
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
		dst_pg_demand(r, i, j - i);
		i = j;
	}
	r->finish_cursor = i;
}

static bool settled(const struct dst_region *r)
{
	return finishing(r) && !dst_map_pending(r) && !r->nredo &&
	       dst_region_settled(r) == r->npages;
}

bool dst_region_busy(const struct dst_region *r)
{
	if (!dst_region_live(r))
		return r->dead ? !r->released : r->phase == DST_FAILED && !r->released;
	return r->nredo || dst_map_pending(r) || r->link_more ||
	       (finishing(r) && r->finish_cursor < r->npages && dst_link_up(r) &&
		!sweep_blocked(r));
}

bool dst_region_work(struct dst_region *r)
{
	if (r->dead || r->phase == DST_FAILED) {
		dst_region_release(r);
		return false;
	}
	if (!dst_region_live(r))
		return false;
	if (r->nredo)
		dst_fault_redo(r);
	if (dst_map_pending(r) && dst_region_live(r))
		dst_map_sweep(r, SWEEP_BUDGET);
	if (dst_region_live(r))
		r->link_more = r->link->ops->pump(r->link);
	if (dst_region_live(r))
		finish_sweep(r);
	if (dst_region_live(r) && settled(r))
		dst_region_complete(r);
	if (r->dead || r->phase == DST_FAILED)
		dst_region_release(r);
	return dst_region_busy(r);
}

void dst_region_tick(struct dst_region *r, uint64_t now_ns)
{
	if (dst_region_live(r))
		r->link->ops->tick(r->link, now_ns);
}

/* ---- sessions ------------------------------------------------------------------------------ */

/* Both sessions are open: faults recorded meanwhile get their pages demanded. */
void dst_region_connected(struct dst_region *r)
{
	if (r->phase == DST_CONNECTING)
		r->phase = DST_MAPPING;
	if (r->map_final && !r->resumed)
		log_info("%s: resuming with the class map we have: demanding the %llu pages still "
			 "missing", r->id, (unsigned long long)(r->npages - dst_region_settled(r)));
	r->resumed = r->map_final;
	for (uint64_t i = 0; i < r->npages && dst_region_live(r); i++)
		if ((r->pg[i] & DST_PG_FAULTED) && wants_data(r, i))
			dst_pg_demand(r, i, 1);
	r->finish_cursor = 0;
}

/* The sessions are gone: what was requested on them is missing again; a live map not
 * fixed yet and the pages pre-sent with it go too. */
void dst_region_disconnected(struct dst_region *r)
{
	if (!r->pg)
		return;
	dst_map_session_end(r);
	dst_pg_session_lost(r);
	r->finish_cursor = 0;
}
