/* presend.c — live map, pre-sent DATA rounds, switch policy and fix map (presend.h). */
#include "presend.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "live.h"
#include "pagebits.h"
#include "log.h"
#include "util.h"


const char *tlm_policy_name(int policy)
{
	switch (policy) {
	case TLM_POLICY_POST: return "post";
	case TLM_POLICY_HYBRID: return "hybrid";
	case TLM_POLICY_AUTO: return "auto";
	}
	return "unknown";
}

int tlm_policy_parse(const char *s)
{
	for (int p = TLM_POLICY_POST; p <= TLM_POLICY_AUTO; p++)
		if (strcmp(s, tlm_policy_name(p)) == 0)
			return p;
	return -EINVAL;
}

const char *tlm_premap_name(int premap)
{
	return premap == TLM_PREMAP_SENDING ? "sending" : premap == TLM_PREMAP_SENT ? "sent" :
	       "none";
}

int tlm_presend_new(struct tlm_src_region *r, const struct tlm_presend_cfg *cfg)
{
	struct tlm_presend *p = calloc(1, sizeof(*p));

	if (p)
		p->sent = calloc(tlm_pb_words(r->page_count), sizeof(*p->sent));
	if (!p || !p->sent) {
		free(p);
		return -ENOMEM;
	}
	p->cfg = *cfg;
	r->pre = p;
	return 0;
}

void tlm_presend_free(struct tlm_presend *p)
{
	if (!p)
		return;
	if (p->live) {
		tlm_cls_map_fini(p->live);
		free(p->live);
	}
	tlm_cls_map_fini(&p->fix);
	free(p->sent);
	free(p);
}

/* The switch decision, once: logged, shown in stats. */
static void set_ready(struct tlm_src_region *r, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));

static void set_ready(struct tlm_src_region *r, const char *fmt, ...)
{
	struct tlm_presend *p = r->pre;
	va_list ap;

	if (p->ready)
		return;
	va_start(ap, fmt);
	vsnprintf(p->ready_why, sizeof(p->ready_why), fmt, ap);
	va_end(ap);
	p->ready = true;
	log_info("%s: ready to switch: %s", r->id, p->ready_why);
}

bool tlm_presend_adopt(struct tlm_src_region *r)
{
	struct tlm_presend *p = r->pre;

	if (!p)
		return false;
	if (!p->live && r->live && r->phase == TLM_SRC_LIVE)
		p->live = tlm_live_take_map(r->live);
	return p->live != NULL;
}

void tlm_presend_session(struct tlm_src_region *r)
{
	struct tlm_presend *p = r->pre;

	if (!p)
		return;
	/* The destination discards the copies of an earlier session: so do we. A region that
	 * was ready (its rounds done) starts its rounds over for the new session, unless
	 * pre-sending has stopped for good (a read failed): otherwise the new destination
	 * would hold the live map and no DATA (a load run hit it: ready came just before the
	 * first session closed). */
	if (p->ready && !p->stopped) {
		p->ready = false;
		p->ready_why[0] = '\0';
		log_info("%s: new bulk session: pre-sending starts over, not ready", r->id);
	}
	memset(p->sent, 0, tlm_pb_words(r->page_count) * sizeof(*p->sent));
	p->premap = TLM_PREMAP_NONE;
	p->cursor = 0;
	p->round_sent = 0;
	p->st.round = 0;
	p->st.sent = p->st.resent = p->st.left = 0;
}

void tlm_presend_map_sent(struct tlm_src_region *r)
{
	r->pre->premap = TLM_PREMAP_SENT;
	if (r->pre->cfg.policy == TLM_POLICY_POST)
		set_ready(r, "post: live map sent, the DATA goes after the stop");
}

void tlm_presend_tick(struct tlm_src_region *r, bool bulk_session)
{
	struct tlm_presend *p = r->pre;

	/* Without a destination's bulk session nothing can go ahead of the stop: not ready
	 * (the orchestrator arms the destination first; its own timeout bounds the wait). */
	if (!p || p->ready || r->phase != TLM_SRC_LIVE || bulk_session)
		return;
	tlm_presend_adopt(r);
}

/* ---- rounds ------------------------------------------------------------------------------ */

/* After round k: left pages lack a valid copy, dirtied of them were written after their
 * copy went (during the round: the round passed them valid or sent them). Rates are over
 * the round's wall time l = sent/t, d = dirtied/t; the next round would leave about
 * d * (left / l) pages, the writes during the time it takes to send this leftover. */
static void decide(struct tlm_src_region *r, uint64_t left, uint64_t dirtied)
{
	struct tlm_presend *p = r->pre;
	const char *pol = tlm_policy_name(p->cfg.policy);
	unsigned k = p->st.round;
	uint64_t next = p->round_sent ?
			(uint64_t)((double)dirtied * (double)left / (double)p->round_sent) : left;

	if (left <= p->cfg.left_max)
		set_ready(r, "%s: round %u left %llu pages (presend-left %llu): converged, "
			  "switch now", pol, k, (unsigned long long)left,
			  (unsigned long long)p->cfg.left_max);
	else if (p->cfg.policy == TLM_POLICY_AUTO && next * 2 >= left)
		set_ready(r, "auto: round %u left %llu pages, next round would leave %llu "
			  "(write-heavy, not converging): switch now", k,
			  (unsigned long long)left, (unsigned long long)next);
	else if (k >= p->cfg.rounds_max)
		set_ready(r, "%s: round %u of presend-rounds %u left %llu pages: switch now",
			  pol, k, p->cfg.rounds_max, (unsigned long long)left);
}

static void round_end(struct tlm_src_region *r, uint64_t now)
{
	struct tlm_presend *p = r->pre;
	double secs = (double)(now - p->t_round) / 1e9;
	uint64_t left = 0, dirtied = 0;

	for (uint64_t pg = 0; pg < r->page_count; pg++) {
		if (!tlm_cls_is_data(p->live, pg))
			continue;
		if (!tlm_pb_test(p->sent, pg)) {
			left++;
		} else if (tlm_live_wrote(r->live, pg)) {
			left++;
			dirtied++;
		}
	}
	p->st.left = left;
	p->st.send_pps = secs > 0 ? (double)p->round_sent / secs : 0;
	p->st.dirty_pps = secs > 0 ? (double)dirtied / secs : 0;
	decide(r, left, dirtied);
}

static uint64_t budget_pages(const struct tlm_presend *p)
{
	if (p->st.bytes >= p->cfg.max_bytes)
		return 0;
	return (p->cfg.max_bytes - p->st.bytes) / TLM_PAGE_SIZE;
}

unsigned tlm_presend_pick(struct tlm_src_region *r, uint64_t now, uint64_t *pages,
			  unsigned max)
{
	struct tlm_presend *p = r->pre;
	uint64_t budget;
	unsigned n = 0;

	/* Ready ends the rounds: the policy judged that more would not pay (or enough went),
	 * and what still sits in the bulk queue at the stop delays the fix map. */
	if (!p || !p->live || p->cfg.policy == TLM_POLICY_POST || p->stopped || p->ready ||
	    r->phase != TLM_SRC_LIVE)
		return 0;
	budget = budget_pages(p);
	if (budget == 0) {
		set_ready(r, "%s: presend-max of %llu MiB reached: switch now",
			  tlm_policy_name(p->cfg.policy),
			  (unsigned long long)(p->cfg.max_bytes >> 20));
		return 0;
	}
	if (p->st.round == 0 || (p->cursor == r->page_count &&
				 now - p->t_round >= TLM_PRESEND_ROUND_MS * 1000000ull)) {
		if (p->st.round)
			round_end(r, now);
		if (p->ready)
			return 0;
		p->st.round++;
		p->cursor = 0;
		p->t_round = now;
		p->round_sent = 0;
	}
	if (max > budget)
		max = (unsigned)budget;
	for (; p->cursor < r->page_count && n < max; p->cursor++)
		if (tlm_cls_is_data(p->live, p->cursor) &&
		    (!tlm_pb_test(p->sent, p->cursor) || tlm_live_wrote(r->live, p->cursor)))
			pages[n++] = p->cursor;
	return n;
}

int tlm_presend_read(struct tlm_src_region *r, const uint64_t *pages, unsigned n,
		     uint8_t *buf, const uint8_t **ptrs, char *err, size_t errlen)
{
	int rc;

	for (unsigned i = 0; i < n; i++)    /* before the read: live.h, rule 6 */
		tlm_live_wrote_clear(r->live, pages[i]);
	rc = tlm_src_read_presend(r, pages, n, buf, ptrs, err, errlen);
	if (rc < 0)
		tlm_presend_unread(r, pages, n);
	return rc;
}

void tlm_presend_stop(struct tlm_src_region *r, const char *why)
{
	r->pre->stopped = true;
	set_ready(r, "%s: pre-sending stopped: %.150s", tlm_policy_name(r->pre->cfg.policy), why);
}

void tlm_presend_unread(struct tlm_src_region *r, const uint64_t *pages, unsigned n)
{
	/* The destination may hold an older copy: it must not count as valid. */
	for (unsigned i = 0; i < n; i++)
		tlm_live_wrote_mark(r->live, pages[i]);
}

void tlm_presend_queued(struct tlm_src_region *r, uint64_t page, uint32_t n)
{
	struct tlm_presend *p = r->pre;

	for (uint64_t pg = page; pg < page + n; pg++) {
		if (tlm_pb_test(p->sent, pg))
			p->st.resent++;
		tlm_pb_set(p->sent, pg);
	}
	p->st.sent += n;
	p->round_sent += n;
	p->st.bytes += (uint64_t)n * TLM_PAGE_SIZE;
}

/* ---- the fix map ------------------------------------------------------------------------- */

/* Word w of the stale copies: sent, then written (valid = sent && !wrote). At freeze the
 * worker is joined; the atomic load is for form's sake. */
static uint64_t stale_word(const struct tlm_src_region *r, uint64_t w)
{
	return r->pre->sent[w] & __atomic_load_n(&r->live->wrote[w], __ATOMIC_RELAXED);
}

/* The bits of word w that fall in pages [a, b). */
static uint64_t range_mask(uint64_t w, uint64_t a, uint64_t b)
{
	uint64_t lo = w * TLM_PB_BITS, m = ~0ull;

	if (a > lo)
		m &= ~0ull << (a - lo);
	if (b < lo + TLM_PB_BITS)
		m &= (1ull << (b - lo)) - 1;
	return m;
}

/* First page in [pg, b) whose copy is stale (want) or not stale (!want); b if none. */
static uint64_t next_stale(const struct tlm_src_region *r, uint64_t pg, uint64_t b, bool want)
{
	for (uint64_t w = tlm_pb_word(pg); w * TLM_PB_BITS < b; w++) {
		uint64_t x = stale_word(r, w);

		x = (want ? x : ~x) & range_mask(w, pg, b);
		if (x)
			return w * TLM_PB_BITS + (uint64_t)__builtin_ctzll(x);
	}
	return b;
}

/* Pre-sent copies of pages [a, b): those in keep (and not stale) stay valid, the others
 * are dropped from sent. Counted in st.valid / st.invalid. */
static void settle_copies(struct tlm_src_region *r, uint64_t a, uint64_t b, bool keep)
{
	struct tlm_presend *p = r->pre;

	for (uint64_t w = tlm_pb_word(a); w * TLM_PB_BITS < b; w++) {
		uint64_t m = range_mask(w, a, b), in = p->sent[w] & m;
		uint64_t bad = keep ? stale_word(r, w) & m : in;

		p->st.invalid += (uint64_t)__builtin_popcountll(bad);
		p->st.valid += (uint64_t)__builtin_popcountll(in & ~bad);
		p->sent[w] &= ~bad;
	}
}

/* Pages [a, b), where the final run fr (a is foff pages into it) and the live run lr (loff
 * pages in) both hold: KEEP where the classes agree and no copy went stale, else fr. The
 * copies that stand stay in sent (valid), the others leave it. */
static int fix_segment(struct tlm_src_region *r, const struct tlm_run *fr, uint64_t foff,
		       const struct tlm_run *lr, uint64_t loff, uint64_t a, uint64_t b)
{
	struct tlm_cls_map *fix = &r->pre->fix;
	bool same = fr->cls == lr->cls &&
		    (fr->cls != TLM_CLASS_REF || fr->arg + foff == lr->arg + loff);
	int rc = 0;

	if (!same)
		rc = tlm_cls_map_add_run(fix, fr->cls, fr->arg + foff, b - a);
	for (uint64_t pg = a, e; same && rc == 0 && pg < b; pg = e) {
		bool keep = next_stale(r, pg, pg + 1, true) > pg;

		e = next_stale(r, pg, b, keep);
		rc = keep ? tlm_cls_map_add_run(fix, TLM_CLASS_KEEP, 0, e - pg) :
			    tlm_cls_map_add_run(fix, fr->cls, fr->arg + foff + (pg - a), e - pg);
	}
	settle_copies(r, a, b, same);   /* after: the runs above read the stale copies */
	return rc;
}

/* The final map and the live map side by side, segment by segment: O(runs + words). */
static int build_fix(struct tlm_src_region *r)
{
	const struct tlm_cls_map *f = &r->map, *l = r->pre->live;
	size_t i = 0, j = 0;
	int rc = 0;

	r->pre->st.valid = r->pre->st.invalid = 0;
	for (uint64_t a = 0; rc == 0 && a < r->page_count;) {
		uint64_t fe = f->run_first[i] + f->runs[i].len;
		uint64_t le = l->run_first[j] + l->runs[j].len;
		uint64_t b = fe < le ? fe : le;

		rc = fix_segment(r, &f->runs[i], a - f->run_first[i], &l->runs[j],
				 a - l->run_first[j], a, b);
		a = b;
		i += a == fe;
		j += a == le;
	}
	return rc;
}

int tlm_presend_freeze(struct tlm_src_region *r)
{
	struct tlm_presend *p = r->pre;
	int rc;

	if (!p || !p->live)
		return 0;
	tlm_cls_map_fini(&p->fix);
	rc = tlm_cls_map_init(&p->fix, r->page_count, r->tmpl, r->tmpl_base);
	if (rc == 0)
		rc = build_fix(r);
	if (rc < 0) {
		tlm_cls_map_fini(&p->fix);
		return rc;
	}
	p->st.fix_runs = p->fix.nruns;
	p->st.keep_pages = p->fix.count[TLM_CLASS_KEEP];
	p->fixable = true;
	log_info("%s: fix map: %zu runs, %llu pages keep their live class; pre-sent copies: "
		 "%llu valid, %llu written since", r->id, p->fix.nruns,
		 (unsigned long long)p->st.keep_pages, (unsigned long long)p->st.valid,
		 (unsigned long long)p->st.invalid);
	return 0;
}

bool tlm_presend_valid(const struct tlm_presend *p, uint64_t page)
{
	return p && p->fixable && tlm_pb_test(p->sent, page);
}
