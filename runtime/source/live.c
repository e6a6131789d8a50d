/* live.c — live classification of a running guest's RAM under dirty tracking (live.h). */
#include "live.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "log.h"
#include "pagebits.h"
#include "util.h"


static uint64_t ld(const uint64_t *p)
{
	return __atomic_load_n(p, __ATOMIC_RELAXED);
}

static void st_set(uint64_t *p, uint64_t v)
{
	__atomic_store_n(p, v, __ATOMIC_RELAXED);
}

static void st_add(uint64_t *p, uint64_t v)
{
	__atomic_fetch_add(p, v, __ATOMIC_RELAXED);
}

static void set_state(struct tlm_live *l, int s)
{
	__atomic_store_n(&l->state, s, __ATOMIC_RELAXED);
}

const char *tlm_live_state_name(int state)
{
	switch (state) {
	case TLM_LIVE_PASS: return "pass";
	case TLM_LIVE_ROUNDS: return "rounds";
	case TLM_LIVE_STOPPED: return "stopped";
	}
	return "off";
}

void tlm_live_snapshot(const struct tlm_live *l, struct tlm_live_stats *st, int *state)
{
	st->classified = ld(&l->st.classified);
	st->rounds = ld(&l->st.rounds);
	st->dirty_last = ld(&l->st.dirty_last);
	st->redone = ld(&l->st.redone);
	st->pass_ns = ld(&l->st.pass_ns);
	st->final_dirty = ld(&l->st.final_dirty);
	st->final_ns = ld(&l->st.final_ns);
	*state = __atomic_load_n(&l->state, __ATOMIC_RELAXED);
}

/* ---- waiting: pacing and rounds, cut short by a stop request ---------------------------- */

static bool stopping(struct tlm_live *l)
{
	bool s;

	pthread_mutex_lock(&l->mu);
	s = l->stop;
	pthread_mutex_unlock(&l->mu);
	return s;
}

/* Sleep until CLOCK_MONOTONIC time `until` (ns) or a stop request. */
static void wait_until(struct tlm_live *l, uint64_t until)
{
	struct timespec ts = { .tv_sec = (time_t)(until / 1000000000u),
			       .tv_nsec = (long)(until % 1000000000u) };

	pthread_mutex_lock(&l->mu);
	while (!l->stop && tlm_now_ns() < until)
		if (pthread_cond_timedwait(&l->cv, &l->mu, &ts) == ETIMEDOUT)
			break;
	pthread_mutex_unlock(&l->mu);
}

/* Rate limit: bytes just read; sleep while ahead of the allowed rate. */
static void pace(struct tlm_live *l, uint64_t bytes)
{
	if (!l->rate)
		return;
	l->pace_bytes += bytes;
	wait_until(l, l->pace_t0 + l->pace_bytes * 1000000000u / l->rate);
}

static void pace_reset(struct tlm_live *l)
{
	l->pace_t0 = tlm_now_ns();
	l->pace_bytes = 0;
}

/* ---- the stale set ----------------------------------------------------------------------- */

static void stale_set(struct tlm_live *l, uint64_t p)
{
	tlm_pb_set(l->stale, p);
}

static bool stale_test(const struct tlm_live *l, uint64_t p)
{
	return tlm_pb_test(l->stale, p);
}

/* A collect reported [first, first + n): read it again (rule 3), and any copy of it sent
 * before is no longer valid (rule 5). */
static int mark_stale(void *arg, uint64_t first, uint64_t n)
{
	struct tlm_live *l = arg;
	uint64_t *count = &l->st.dirty_last;

	for (uint64_t p = first; p < first + n && p < l->r->page_count; p++) {
		stale_set(l, p);
		tlm_live_wrote_mark(l, p);
	}
	st_add(count, n);
	return 0;
}

/* Next stale run at or after *from: [*first, *first + return), at most max pages;
 * its bits are cleared. 0 when none is left. */
static unsigned take_stale(struct tlm_live *l, uint64_t *from, uint64_t *first, unsigned max)
{
	uint64_t n = l->r->page_count, p = *from;
	unsigned len = 0;

	while (p < n && !l->stale[tlm_pb_word(p)]) /* skip empty words */
		p = (tlm_pb_word(p) + 1) * TLM_PB_BITS;
	while (p < n && !stale_test(l, p))
		p++;
	*first = p;
	while (p < n && len < max && stale_test(l, p)) {
		tlm_pb_clear(l->stale, p);
		p++;
		len++;
	}
	*from = p;
	return len;
}

/* ---- wrote: what pre-sent copies the guest has written since (live.h, rules 5-7) ---- */

void tlm_live_wrote_clear(struct tlm_live *l, uint64_t p)
{
	__atomic_fetch_and(&l->wrote[tlm_pb_word(p)], ~tlm_pb_mask(p), __ATOMIC_SEQ_CST);
}

void tlm_live_wrote_mark(struct tlm_live *l, uint64_t p)
{
	__atomic_fetch_or(&l->wrote[tlm_pb_word(p)], tlm_pb_mask(p), __ATOMIC_SEQ_CST);
}

bool tlm_live_wrote(const struct tlm_live *l, uint64_t p)
{
	return __atomic_load_n(&l->wrote[tlm_pb_word(p)], __ATOMIC_SEQ_CST) & tlm_pb_mask(p);
}

/* ---- classifying ------------------------------------------------------------------------- */

/* Classify [first, first + n) as the pages are now, into cls/ref. */
static int classify_range(struct tlm_live *l, uint64_t first, unsigned n, char *err,
			  size_t errlen)
{
	uint8_t cls[TLM_SRC_SCAN_BATCH];
	uint64_t k[TLM_SRC_SCAN_BATCH];
	int rc = tlm_src_scan_batch(l->scan, first, n, cls, k, err, errlen);

	for (unsigned i = 0; rc == 0 && i < n; i++) {
		l->cls[first + i] = cls[i];
		l->ref[first + i] = (uint32_t)k[i];
	}
	return rc;
}

/* Every stale page classified again, in page order. -ECANCELED on a stop request (the
 * pages not reached stay stale). */
static int redo_stale(struct tlm_live *l, bool check_stop, uint64_t *done, char *err,
		      size_t errlen)
{
	uint64_t from = 0, first;
	unsigned n;
	int rc = 0;

	while (rc == 0) {
		if (check_stop && stopping(l))
			return -ECANCELED;       /* what was not taken stays stale */
		n = take_stale(l, &from, &first, TLM_SRC_SCAN_BATCH);
		if (n == 0)
			break;
		rc = classify_range(l, first, n, err, errlen);
		*done += n;
		if (check_stop)
			pace(l, (uint64_t)n * TLM_PAGE_SIZE);
	}
	return rc;
}

/* First pass, in page order from l->next. -ECANCELED on a stop request. */
static int first_pass(struct tlm_live *l)
{
	uint64_t t0 = tlm_now_ns(), count = l->r->page_count;
	int rc = 0;

	pace_reset(l);
	while (rc == 0 && l->next < count) {
		unsigned n = (unsigned)(count - l->next < TLM_SRC_SCAN_BATCH ?
					count - l->next : TLM_SRC_SCAN_BATCH);

		if (stopping(l))
			return -ECANCELED;
		rc = classify_range(l, l->next, n, l->errmsg, sizeof(l->errmsg));
		if (rc == 0) {
			l->next += n;
			st_set(&l->st.classified, l->next);
			pace(l, (uint64_t)n * TLM_PAGE_SIZE);
		}
	}
	st_set(&l->st.pass_ns, tlm_now_ns() - t0);
	return rc;
}

/* One round: collect what was written, classify it again, wait for the next round. */
static int round_once(struct tlm_live *l)
{
	uint64_t redone = 0, t_next = tlm_now_ns() + TLM_LIVE_ROUND_MS * 1000000ull;
	int rc;

	st_set(&l->st.dirty_last, 0);
	rc = tlm_dirty_collect(&l->dirty, mark_stale, l);
	if (rc < 0) {
		snprintf(l->errmsg, sizeof(l->errmsg), "%s: collecting written pages: %s",
			 l->r->id, strerror(-rc));
		return rc;
	}
	st_add(&l->st.rounds, 1);
	pace_reset(l);
	rc = redo_stale(l, true, &redone, l->errmsg, sizeof(l->errmsg));
	st_add(&l->st.redone, redone);
	if (rc == 0)
		wait_until(l, t_next);
	return rc;
}

static int fill_map(struct tlm_live *l, struct tlm_cls_map *m);

/* The first pass is complete: hand a copy of its classes to the event loop (the live
 * map). Without memory for it there is simply no live map (the whole map after freeze). */
static void publish_map(struct tlm_live *l)
{
	struct tlm_src_region *r = l->r;
	struct tlm_cls_map *m = calloc(1, sizeof(*m));

	if (!m || tlm_cls_map_init(m, r->page_count, r->tmpl, r->tmpl_base) < 0 ||
	    fill_map(l, m) < 0) {
		if (m)
			tlm_cls_map_fini(m);
		free(m);
		return;
	}
	__atomic_store_n(&l->snap, m, __ATOMIC_RELEASE);
}

struct tlm_cls_map *tlm_live_take_map(struct tlm_live *l)
{
	return __atomic_exchange_n(&l->snap, NULL, __ATOMIC_ACQ_REL);
}

static void *live_main(void *arg)
{
	struct tlm_live *l = arg;
	int rc = first_pass(l);

	if (rc == 0) {
		publish_map(l);
		set_state(l, TLM_LIVE_ROUNDS);
	}
	while (rc == 0 && !stopping(l))
		rc = round_once(l);
	if (rc < 0 && rc != -ECANCELED)
		l->err = rc;
	set_state(l, TLM_LIVE_STOPPED);
	return NULL;
}

/* ---- start, finish, free ----------------------------------------------------------------- */

/* Why this region cannot be tracked (empty: it can). */
static bool untrackable(const struct tlm_src_region *r, char *why, size_t whylen)
{
	if (!r->pid)
		snprintf(why, whylen, "no process to track (a file source without pid= and addr=)");
	else if (r->map.tmpl_pages > UINT32_MAX)
		snprintf(why, whylen, "template of %llu pages: more than the live tables hold",
			 (unsigned long long)r->map.tmpl_pages);
	else
		return false;
	return true;
}

static int live_alloc(struct tlm_live *l, struct tlm_src_region *r)
{
	pthread_condattr_t ca;

	l->joined = true;
	l->dirty.pagemap_fd = l->dirty.clear_refs_fd = -1;
	l->cls = malloc(r->page_count);
	l->ref = malloc(r->page_count * sizeof(*l->ref));
	l->stale = calloc(tlm_pb_words(r->page_count), sizeof(*l->stale));
	l->wrote = calloc(tlm_pb_words(r->page_count), sizeof(*l->wrote));
	if (!l->cls || !l->ref || !l->stale || !l->wrote)
		return -ENOMEM;
	pthread_mutex_init(&l->mu, NULL);
	pthread_condattr_init(&ca);
	pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
	pthread_cond_init(&l->cv, &ca);
	pthread_condattr_destroy(&ca);
	l->r = r;   /* from here on tlm_live_free destroys mu and cv */
	return 0;
}

/* Tracker opened and armed, scan open: 1, 0 (tracking unavailable: why), -errno. */
static int live_track(struct tlm_live *l, char *why, size_t whylen)
{
	struct tlm_src_region *r = l->r;
	int rc = tlm_dirty_open(&l->dirty, r->pid, r->addr, r->size);

	if (rc < 0) {
		snprintf(why, whylen, "cannot watch pid %d: %s", r->pid, strerror(-rc));
		return 0;
	}
	if (l->dirty.method == TLM_DIRTY_NONE) {
		snprintf(why, whylen, "%s", l->dirty.why);
		return 0;
	}
	rc = tlm_src_scan_open(r, &l->scan, why, whylen);
	if (rc == 0 && (rc = tlm_dirty_arm(&l->dirty)) < 0)   /* before the first read */
		snprintf(why, whylen, "%s: arming dirty tracking: %s", r->id, strerror(-rc));
	return rc < 0 ? rc : 1;
}

int tlm_live_start(struct tlm_src_region *r, uint64_t rate, char *why, size_t whylen)
{
	struct tlm_live *l;
	int rc;

	if (r->phase != TLM_SRC_CONFIGURED) {
		snprintf(why, whylen, "%s: live needs phase configured, not %s", r->id,
			 tlm_src_phase_name(r->phase));
		return -EPERM;
	}
	if (untrackable(r, why, whylen))
		return 0;
	l = calloc(1, sizeof(*l));
	if (!l || live_alloc(l, r) < 0) {
		tlm_live_free(l);
		snprintf(why, whylen, "%s: out of memory for the live tables", r->id);
		return -ENOMEM;
	}
	l->rate = rate;
	rc = live_track(l, why, whylen);
	if (rc == 1) {
		int e;

		/* Before the thread exists: a quick first pass moves it on (to ROUNDS) and a
		 * store after pthread_create could put it back. */
		l->state = TLM_LIVE_PASS;
		e = pthread_create(&l->thread, NULL, live_main, l);
		l->joined = e != 0;
		if (e) {
			snprintf(why, whylen, "%s: worker thread: %s", r->id, strerror(e));
			rc = -e;
		}
	}
	if (rc <= 0) {
		tlm_live_free(l);
		return rc;
	}
	snprintf(why, whylen, "%s", l->dirty.why);
	r->live = l;
	r->phase = TLM_SRC_LIVE;
	return 1;
}

static void live_join(struct tlm_live *l)
{
	if (l->joined)
		return;
	pthread_mutex_lock(&l->mu);
	l->stop = true;
	pthread_cond_broadcast(&l->cv);
	pthread_mutex_unlock(&l->mu);
	pthread_join(l->thread, NULL);
	l->joined = true;
}

/* End of the run of class c that starts at p: 8 pages per step where the class is the
 * same (a guest's RAM is mostly long runs); REF runs also need consecutive template pages. */
static uint64_t run_end(const struct tlm_live *l, uint64_t p, uint64_t n)
{
	const uint8_t c = l->cls[p];
	const uint64_t rep = 0x0101010101010101ull * c;
	uint64_t w;

	if (c == TLM_CLASS_REF) {
		while (++p < n && l->cls[p] == c && l->ref[p] == l->ref[p - 1] + 1)
			;
		return p;
	}
	for (p++; p < n && p % 8; p++)
		if (l->cls[p] != c)
			return p;
	for (; p + 8 <= n; p += 8) {
		memcpy(&w, l->cls + p, 8);
		if (w != rep)
			break;
	}
	while (p < n && l->cls[p] == c)
		p++;
	return p;
}

/* A class map (empty) from the live tables, in page order, one call per run. */
static int fill_map(struct tlm_live *l, struct tlm_cls_map *m)
{
	uint64_t n = l->r->page_count;
	int rc = 0;

	for (uint64_t p = 0, end; rc == 0 && p < n; p = end) {
		end = run_end(l, p, n);
		rc = tlm_cls_map_add_run(m, l->cls[p], l->ref[p], end - p);
	}
	m->known_pages = tlm_src_scan_known(l->scan);
	m->hole_pages = tlm_src_scan_holes(l->scan);
	return rc;
}

/* The final class map. */
static int build_map(struct tlm_live *l)
{
	tlm_cls_map_reset(&l->r->map);
	return fill_map(l, &l->r->map);
}

/* The worker is gone: drop the tables and the tracker, keep the counters for `stats`. */
static void live_release(struct tlm_live *l)
{
	live_join(l);
	tlm_dirty_close(&l->dirty);
	if (l->scan)
		tlm_src_scan_close(l->scan);
	free(l->cls);
	free(l->ref);
	free(l->stale);
	if (l->snap) {            /* published, never taken */
		tlm_cls_map_fini(l->snap);
		free(l->snap);
		l->snap = NULL;
	}
	l->scan = NULL;
	l->cls = NULL;
	l->ref = NULL;
	l->stale = NULL;
}

bool tlm_live_usable(const struct tlm_live *l)
{
	return l && l->cls;
}

/* Stop the worker, last collect, redo what is stale, build r->map. */
static int live_final(struct tlm_src_region *r, struct tlm_live *l, char *err, size_t errlen)
{
	uint64_t redone = 0;
	int rc;

	live_join(l);
	if (l->err) {
		snprintf(err, errlen, "%s", l->errmsg);
		return l->err;
	}
	st_set(&l->st.dirty_last, 0);
	rc = tlm_dirty_collect(&l->dirty, mark_stale, l);   /* the guest is stopped */
	if (rc < 0) {
		snprintf(err, errlen, "%s: last collect of written pages: %s", r->id,
			 strerror(-rc));
		return rc;
	}
	st_set(&l->st.final_dirty, ld(&l->st.dirty_last));
	for (uint64_t p = l->next; p < r->page_count; p++)   /* not reached by the pass */
		stale_set(l, p);
	l->next = r->page_count;
	rc = redo_stale(l, false, &redone, err, errlen);
	if (rc == 0)
		rc = build_map(l);
	if (rc < 0 && !*err)
		snprintf(err, errlen, "%s: class map: %s", r->id, strerror(-rc));
	return rc;
}

int tlm_live_finish(struct tlm_src_region *r, char *err, size_t errlen)
{
	struct tlm_live *l = r->live;
	uint64_t t0 = tlm_now_ns();
	int rc;

	err[0] = '\0';
	if (!tlm_live_usable(l) || r->phase != TLM_SRC_FROZEN)
		return -EINVAL;
	rc = live_final(r, l, err, errlen);
	st_set(&l->st.final_ns, tlm_now_ns() - t0);
	live_release(l);
	return rc;
}

void tlm_live_free(struct tlm_live *l)
{
	if (!l)
		return;
	live_release(l);
	free(l->wrote);
	if (l->r) {
		pthread_cond_destroy(&l->cv);
		pthread_mutex_destroy(&l->mu);
	}
	free(l);
}
