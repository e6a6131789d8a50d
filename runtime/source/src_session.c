/*
 * src_session.c — tlm-page-server sessions (src_session.h): accepting and authenticating a
 * destination connection, answering DEMANDs on the urgent channel, streaming the class map
 * and the DATA pages on the bulk channel.
 *
 * Urgent before bulk: urgent input is parsed and answered as soon as its socket is
 * readable (tlm_ps_sess_event), while bulk output is only queued by tlm_ps_bulk_pump, which
 * the loop calls after it has handled every event of an iteration, a bounded batch at a
 * time and only while the bulk connection has room (EPOLLOUT driven).
 */
#include "src_session.h"

#include <errno.h>
#include <linux/sockios.h>
#include <sys/ioctl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#include "log.h"
#include "pagebits.h"
#include "util.h"

#define PS_HANDSHAKE_MS 3000
#define PS_HANDSHAKES_MAX 16u       /* handshakes in progress at once */
#define PS_URGENT_WCAP (2u << 20)
#define PS_BULK_WCAP (4u << 20)
#define PS_BULK_BATCH 256u          /* pages queued on bulk per loop iteration */
#define PS_MAP_MIN_RUNS 4096u       /* wait for room for at least this many runs */

static const char *chan_name(uint8_t chan)
{
	return chan == TLM_CHAN_URGENT ? "urgent" : "bulk";
}

static bool region_serving(const struct tlm_src_region *r)
{
	return r->phase == TLM_SRC_CLASSIFIED || r->phase == TLM_SRC_STREAMING ||
	       r->phase == TLM_SRC_DONE;
}

/* --bulk-delay / --bulk-hold: the DATA stream has not started yet (the class map goes at
 * once; demands are answered on urgent meanwhile). */
static bool bulk_held(const struct tlm_ps_sess *s)
{
	return s->bstate == BULK_PAGES &&
	       (s->r->bulk_hold || (s->ps->bulk_hold_ns &&
				    tlm_now_ns() < s->r->st.freeze_ns + s->ps->bulk_hold_ns));
}

/*
 * Pre-sending never holds up post-copy: while any frozen region's bulk stream has work
 * (its class map or DATA pages, not held), no session pre-sends; the progress tick
 * resumes them.
 */
static bool postcopy_busy(const struct tlm_ps *ps)
{
	for (const struct tlm_src_region *r = ps->regions; r; r = r->next) {
		const struct tlm_ps_sess *b = r->bulk;

		if (b && !b->dead && (b->bstate == BULK_MAP || b->bstate == BULK_PAGES) &&
		    !bulk_held(b))
			return true;
	}
	return false;
}

/* The bulk session has frames to queue now. */
static bool bulk_has_work(const struct tlm_ps_sess *s)
{
	switch (s->bstate) {
	case BULK_LIVE_MAP:
		return true;
	case BULK_PRESEND:
		return !s->presend_idle;
	case BULK_MAP:
	case BULK_PAGES:
		return !bulk_held(s);
	default:
		return false;
	}
}

static void sess_set_events(struct tlm_ps_sess *s)
{
	uint32_t ev = 0;

	if (s->dead)
		return;
	if (s->chan == TLM_CHAN_BULK || s->dq_len < PS_DEMAND_QUEUE)
		ev |= EPOLLIN;
	if (tlm_conn_pending(&s->c) || (s->chan == TLM_CHAN_BULK && bulk_has_work(s)))
		ev |= EPOLLOUT;
	int rc = tlm_evloop_mod(&s->ps->loop, &s->src, ev);

	if (rc < 0)
		log_error("%s: epoll_ctl: %s", s->r->id, strerror(-rc));
}

void tlm_ps_sess_close(struct tlm_ps_sess *s, const char *why)
{
	struct tlm_src_region *r = s->r;

	if (s->dead)
		return;
	if (why) {
		log_warn("%s: %s session from %s closed: %s", r->id, chan_name(s->chan), s->peer,
			 why);
		r->st.sessions_dropped++;
	} else {
		log_info("%s: %s session from %s closed", r->id, chan_name(s->chan), s->peer);
	}
	tlm_evloop_del(&s->ps->loop, &s->src);
	r->st.wire_bytes_closed += s->c.bytes_in + s->c.bytes_out + s->handshake_bytes;
	if (r->urgent == s) {
		r->urgent = NULL;
		/* Replies still in flight on a dead connection may never arrive: let the bulk
		 * stream send those pages again instead of skipping them. */
		tlm_cls_clear_sent(&r->map);
	}
	if (r->bulk == s) {
		r->bulk = NULL;
		r->credit_ok = false;   /* a credit speaks of one bulk session */
		if (r->pre)
			r->pre->premap = TLM_PREMAP_NONE;
		if (r->phase == TLM_SRC_STREAMING)
			r->phase = TLM_SRC_CLASSIFIED;
	}
	tlm_conn_fini(&s->c);
	s->dead = true;
}

/* Tell the peer why (best effort, non-blocking), then close. */
static void sess_fail(struct tlm_ps_sess *s, uint32_t code, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

static void sess_fail(struct tlm_ps_sess *s, uint32_t code, const char *fmt, ...)
{
	struct tlm_msg m = { .type = TLM_MSG_ERROR };
	va_list ap;

	m.u.error.code = code;
	va_start(ap, fmt);
	vsnprintf(m.u.error.msg, sizeof(m.u.error.msg), fmt, ap);
	va_end(ap);
	if (tlm_conn_queue(&s->c, &m) == 0)
		tlm_conn_flush(&s->c);
	tlm_ps_sess_close(s, m.u.error.msg);
}

void tlm_ps_reap(struct tlm_ps *ps, bool all)
{
	struct tlm_ps_sess **pp = &ps->sessions;

	while (*pp) {
		struct tlm_ps_sess *s = *pp;

		if (all)
			tlm_ps_sess_close(s, NULL);
		if (!s->dead) {
			pp = &s->next;
			continue;
		}
		*pp = s->next;
		free(s->ra_buf);
		free(s->frames.f);
		free(s->jframes.f);
		free(s->jumped);
		free(s);
	}
}

uint64_t tlm_ps_wire_bytes(const struct tlm_src_region *r)
{
	uint64_t n = r->st.wire_bytes_closed;

	if (r->urgent)
		n += r->urgent->c.bytes_in + r->urgent->c.bytes_out + r->urgent->handshake_bytes;
	if (r->bulk)
		n += r->bulk->c.bytes_in + r->bulk->c.bytes_out + r->bulk->handshake_bytes;
	return n;
}

uint64_t tlm_ps_bulk_backlog(const struct tlm_src_region *r)
{
	int q = 0;

	if (!r->bulk || r->bulk->dead)
		return 0;
	if (ioctl(r->bulk->c.fd, SIOCOUTQ, &q) < 0 || q < 0)
		q = 0;
	return tlm_conn_pending(&r->bulk->c) + (uint64_t)q;
}

uint32_t tlm_ps_bulk_rtt_us(const struct tlm_src_region *r)
{
	struct tcp_info ti;
	socklen_t len = sizeof(ti);

	if (!r->bulk || r->bulk->dead ||
	    getsockopt(r->bulk->c.fd, IPPROTO_TCP, TCP_INFO, &ti, &len) < 0)
		return 0;
	return ti.tcpi_rtt;
}

/* Returns 0, or -1 if the session is gone. */
static int sess_read(struct tlm_ps_sess *s)
{
	ssize_t n = tlm_conn_read(&s->c);
	char why[128];

	if (n > 0 || n == -EAGAIN || n == -ENOBUFS)
		return 0;
	if (n == 0) {
		tlm_ps_sess_close(s, NULL);
	} else {
		snprintf(why, sizeof(why), "read: %s", strerror((int)-n));
		tlm_ps_sess_close(s, why);
	}
	return -1;
}

/* Flush; close on a hard error. Returns 0, -EAGAIN, or -1 if closed. */
static int sess_flush(struct tlm_ps_sess *s)
{
	int rc = tlm_conn_flush(&s->c);
	char why[128];

	if (rc == 0 || rc == -EAGAIN)
		return rc;
	snprintf(why, sizeof(why), "write: %s", strerror(-rc));
	tlm_ps_sess_close(s, why);
	return -1;
}

/* A peer's ERROR, or anything a source never expects on this channel. */
static void sess_unexpected(struct tlm_ps_sess *s, const struct tlm_msg *m)
{
	char why[TLM_PROTO_ERRMSG_MAX + 64];

	if (m->type == TLM_MSG_ERROR) {
		snprintf(why, sizeof(why), "peer error %u: %s", m->u.error.code, m->u.error.msg);
		tlm_ps_sess_close(s, why);
		return;
	}
	sess_fail(s, TLM_ERR_PROTOCOL, "unexpected %s on the %s channel", tlm_msg_name(m->type),
		  chan_name(s->chan));
}

/* A FAILED region's sessions learn why and end. */
static void close_failed(struct tlm_src_region *r)
{
	if (r->urgent)
		sess_fail(r->urgent, TLM_ERR_INTERNAL, "VM '%s': %s", r->id, r->fail);
	if (r->bulk)
		sess_fail(r->bulk, TLM_ERR_INTERNAL, "VM '%s': %s", r->id, r->fail);
}

/* The source became unreadable while serving (process gone, ...): no session of this
 * region can make progress any more. */
static void region_fail(struct tlm_src_region *r, int rc)
{
	r->phase = TLM_SRC_FAILED;
	snprintf(r->fail, sizeof(r->fail), "cannot read the source: %s", strerror(-rc));
	log_error("%s: %s", r->id, r->fail);
	close_failed(r);
}

/* ---- urgent: demands ------------------------------------------------------------------- */

/* Parse DEMANDs into the queue. Returns how many were queued, or -1 if closed. */
static int urgent_parse(struct tlm_ps_sess *s)
{
	char err[160];
	struct tlm_msg m;
	int n = 0, rc;

	while (s->dq_len < PS_DEMAND_QUEUE) {
		rc = tlm_conn_next(&s->c, &m, err, sizeof(err));
		if (rc == 0)
			break;
		if (rc < 0) {
			sess_fail(s, TLM_ERR_PROTOCOL, "malformed frame: %s", err);
			return -1;
		}
		if (m.type == TLM_MSG_CREDIT) {
			s->r->bulk_credit = m.u.credit.bulk_bytes;
			s->r->credit_ok = s->r->bulk != NULL;
			continue;
		}
		if (m.type != TLM_MSG_DEMAND) {
			sess_unexpected(s, &m);
			return -1;
		}
		if (m.u.demand.page + m.u.demand.count > s->r->page_count) {
			sess_fail(s, TLM_ERR_PROTOCOL, "DEMAND %llu+%u past the last page %llu",
				  (unsigned long long)m.u.demand.page, m.u.demand.count,
				  (unsigned long long)s->r->page_count - 1);
			return -1;
		}
		s->dq[(s->dq_head + s->dq_len++) % PS_DEMAND_QUEUE] =
			(struct tlm_demand){ m.u.demand.page, m.u.demand.count };
		n++;
	}
	return n;
}

/* PAGE for one DATA page, read only once there is room for it. */
static int reply_data(struct tlm_ps_sess *s, uint64_t page)
{
	struct tlm_src_region *r = s->r;
	struct tlm_msg m = { .type = TLM_MSG_PAGE };
	uint8_t buf[TLM_PAGE_SIZE];
	const uint8_t *p;
	char err[200];
	int rc;

	m.u.page.data = buf;
	if (tlm_proto_frame_size(&m) > tlm_conn_space(&s->c))
		return -ENOBUFS;
	rc = tlm_src_read_pages(r, &page, 1, buf, &p, err, sizeof(err));
	if (rc < 0) {
		log_error("%s", err);
		return rc;
	}
	m.u.page.page = page;
	m.u.page.data = p;
	m.u.page.xxh64 = tlm_proto_page_sum(p);
	rc = tlm_conn_queue(&s->c, &m);
	if (rc == 0) {
		tlm_cls_mark_sent(&r->map, page);
		r->st.data_sent_urgent++;
		r->st.payload_bytes += TLM_PAGE_SIZE;
	}
	return rc;
}

static const struct tlm_bulk_frame *ring_at(const struct tlm_bulk_ring *q, unsigned i)
{
	return &q->f[(q->head + i) % q->cap];
}

/* An empty ring of cap frames (no memory: demands are simply never left to bulk). */
static void ring_reset(struct tlm_bulk_ring *q, unsigned cap)
{
	if (!q->f)
		q->f = malloc(cap * sizeof(*q->f));
	q->cap = cap;
	q->n = q->head = 0;
}

static void ring_push(struct tlm_bulk_ring *q, struct tlm_bulk_frame f)
{
	if (!q->f)
		return;
	if (q->n == q->cap) {                   /* forget the oldest */
		q->head = (q->head + 1) % q->cap;
		q->n--;
	}
	q->f[(q->head + q->n++) % q->cap] = f;
}

/* The frame of a ring in page order holding page, or NULL. */
static const struct tlm_bulk_frame *ring_bisect(const struct tlm_bulk_ring *q,
						uint64_t page)
{
	unsigned lo = 0, hi = q->n;

	while (lo < hi) {
		unsigned mid = lo + (hi - lo) / 2;
		const struct tlm_bulk_frame *f = ring_at(q, mid);

		if (page < f->page)
			hi = mid;
		else if (page >= f->page + f->count)
			lo = mid + 1;
		else
			return f;
	}
	return NULL;
}

/* Where in the bulk stream the frame holding page ends, 0 if it is not remembered: the
 * cursor's frames are in page order, the few a jump sent are looked at newest first. */
static uint64_t bulk_frame_end(const struct tlm_ps_sess *b, uint64_t page)
{
	const struct tlm_bulk_frame *f = ring_bisect(&b->frames, page);

	for (unsigned i = b->jframes.n; !f && i-- > 0;) {
		f = ring_at(&b->jframes, i);
		if (page < f->page || page >= f->page + f->count)
			f = NULL;
	}
	return f ? f->end : 0;
}

/*
 * A demand for pages ahead of the bulk cursor: the guest works there, so the stream sends
 * the next PS_JUMP_PAGES pages' DATA (the neighbourhood) next, then goes back to its
 * cursor, as QEMU's postcopy does. The cursor skips what a jump sent, so each page still
 * goes once. A newer demand moves the window.
 */
static void bulk_jump(struct tlm_src_region *r, uint64_t next)
{
	struct tlm_ps_sess *b = r->bulk;

	if (!b || b->dead || next <= b->cursor || next >= r->page_count)
		return;
	if (!b->jumped)
		b->jumped = calloc(tlm_pb_words(r->page_count), sizeof(*b->jumped));
	if (!b->jumped)
		return;
	b->jump_page = next;
	b->jump_left = PS_JUMP_PAGES;
}

/*
 * A guest reading just behind the background stream demands pages that are already on
 * their way on bulk; answering them again on urgent would send them twice. The demand is
 * left to the bulk copy only when the destination's last CREDIT (sent right before its
 * demands: the bulk bytes it had handled) shows that at most --bulk-ahead bytes of the
 * stream lie between where it is and the end of that copy's frame: what sits in our
 * buffer, both sockets and its receive buffer all counts. No credit, a frame the
 * destination has handled already (it asks because it could not use it) or one too far
 * back to remember: answered on urgent. Only once per page: a second demand is answered.
 * On a paced WAN stream, also at most what the stream delivers in one round trip (8 MiB
 * at 700 Mbit/s is 95 ms: the urgent reply comes in about 20).
 */
static bool demand_rides_bulk(struct tlm_ps_sess *s, uint64_t page)
{
	struct tlm_src_region *r = s->r;
	uint64_t end, ahead_max;

	if (!r->bulk || r->bulk->dead || !r->credit_ok ||
	    !tlm_cls_flag(&r->map, page, TLM_CLS_BULK) ||
	    tlm_cls_flag(&r->map, page, TLM_CLS_HELD))
		return false;
	end = bulk_frame_end(r->bulk, page);
	ahead_max = tlm_pace_ride_max(&r->bulk->pace);
	if (ahead_max > s->ps->bulk_ahead_max)
		ahead_max = s->ps->bulk_ahead_max;
	if (end <= r->bulk_credit || end - r->bulk_credit > ahead_max)
		return false;
	tlm_cls_set_flag(&r->map, page, TLM_CLS_HELD);
	r->st.demand_on_bulk++;
	return true;
}

/* Answer pages [page, page + max) as far as one reply goes; *used = pages answered. */
static int reply_one(struct tlm_ps_sess *s, uint64_t page, uint32_t max, uint32_t *used)
{
	const struct tlm_cls_map *map = &s->r->map;
	struct tlm_msg m;
	uint64_t k, k2;
	enum tlm_page_class c = tlm_cls_map_get(map, page, &k);
	uint32_t n = 1;

	*used = 1;
	if (c == TLM_CLASS_DATA)
		return demand_rides_bulk(s, page) ? 0 : reply_data(s, page);
	if (c == TLM_CLASS_ZERO) {
		while (n < max && tlm_cls_map_get(map, page + n, &k2) == TLM_CLASS_ZERO)
			n++;
		m = (struct tlm_msg){ .type = TLM_MSG_ZERO, .u.zero = { page, n } };
	} else {
		/* TEMPLATE and REF both answer "equals template page k": the destination
		 * copies it from its own template. */
		for (; n < max; n++) {
			enum tlm_page_class c2 = tlm_cls_map_get(map, page + n, &k2);

			if ((c2 != TLM_CLASS_TEMPLATE && c2 != TLM_CLASS_REF) || k2 != k + n)
				break;
		}
		m = (struct tlm_msg){ .type = TLM_MSG_REF, .u.ref = { page, n, k } };
	}
	*used = n;
	return tlm_conn_queue(&s->c, &m);
}

/* Answer queued demands while there is room. Returns replies queued, or -1 if closed. */
static int urgent_serve(struct tlm_ps_sess *s)
{
	struct tlm_src_region *r = s->r;
	int n = 0, rc;
	uint32_t used;

	while (s->dq_len && region_serving(r)) {
		struct tlm_demand *d = &s->dq[s->dq_head];

		while (s->dq_done < d->count) {
			rc = reply_one(s, d->page + s->dq_done, d->count - s->dq_done, &used);
			if (rc == -ENOBUFS)
				return n;
			if (rc < 0) {
				region_fail(r, rc);
				return -1;
			}
			s->dq_done += used;
			n++;
		}
		bulk_jump(r, d->page + d->count);
		r->st.demand_requests++;
		r->st.demand_pages += d->count;
		s->dq_head = (s->dq_head + 1) % PS_DEMAND_QUEUE;
		s->dq_len--;
		s->dq_done = 0;
	}
	return n;
}

static void urgent_work(struct tlm_ps_sess *s)
{
	bool progress = true;

	while (progress && !s->dead) {
		int parsed = urgent_parse(s), served, fl;

		if (parsed < 0 || (served = urgent_serve(s)) < 0 || (fl = sess_flush(s)) == -1)
			return;
		progress = (parsed > 0 || served > 0) && fl == 0;
	}
	sess_set_events(s);
}

/* ---- bulk: class map, DATA pages, PROGRESS, DONE --------------------------------------- */

/* Send map m (of kind) from page 0 in CLASS_MAP frames. */
static void bulk_send_map(struct tlm_ps_sess *s, const struct tlm_cls_map *m, uint8_t kind,
			  enum tlm_bulk_state state)
{
	s->mout = m;
	s->mkind = kind;
	s->map_run = 0;
	s->bstate = state;
	sess_set_events(s);
}

/* Live phase, the live map published: a waiting bulk session sends it. */
static void bulk_live(struct tlm_ps_sess *s)
{
	struct tlm_src_region *r = s->r;

	if (s->bstate != BULK_WAIT || r->phase != TLM_SRC_LIVE || !tlm_presend_adopt(r))
		return;
	r->pre->premap = TLM_PREMAP_SENDING;
	bulk_send_map(s, r->pre->live, TLM_MAP_LIVE, BULK_LIVE_MAP);
}

/* The region is classified: the fix map when this session carried the whole live map
 * and freeze trusted the live result, else the whole map (the destination then discards
 * any live map and pre-sent copies). */
static void bulk_start(struct tlm_ps_sess *s)
{
	struct tlm_presend *pre = s->r->pre;
	bool fix = s->carried_live && pre && pre->fixable;

	if (s->carried_live)
		log_info("%s: bulk session carried the live map: sending the %s map", s->r->id,
			 fix ? "fix" : "whole");
	/* A new bulk session sends everything again (reconnect: keep it simple). A jump
	 * set by the demands answered just before (tlm_ps_region_ready) stands. */
	ring_reset(&s->frames, PS_BULK_FRAMES);
	ring_reset(&s->jframes, PS_JUMP_FRAMES);
	if (s->jumped)
		memset(s->jumped, 0, tlm_pb_words(s->r->page_count) * sizeof(*s->jumped));
	s->skip_valid = fix;
	s->cursor = 0;
	s->data_passed = 0;
	s->payload = 0;
	s->ra_n = s->ra_i = 0;
	s->r->phase = TLM_SRC_STREAMING;
	bulk_send_map(s, fix ? &pre->fix : &s->r->map, fix ? TLM_MAP_FIX : TLM_MAP_WHOLE,
		      BULK_MAP);
}

/* One CLASS_MAP frame with as many runs as fit. 1 = queued, 0 = no room. */
static int bulk_map(struct tlm_ps_sess *s)
{
	const struct tlm_cls_map *map = s->mout;
	size_t left = map->nruns - s->map_run, space = tlm_conn_space(&s->c);
	size_t room = space > 24 ? (space - 24) / 16 : 0;
	size_t n = left;
	struct tlm_msg m = { .type = TLM_MSG_CLASS_MAP };
	int rc;

	if (n > TLM_PROTO_MAX_RUNS)
		n = TLM_PROTO_MAX_RUNS;
	if (n > room)
		n = room;
	if (n == 0 || n < (left < PS_MAP_MIN_RUNS ? left : PS_MAP_MIN_RUNS))
		return 0;
	m.u.class_map.first_page = map->run_first[s->map_run];
	m.u.class_map.nruns = (uint32_t)n;
	m.u.class_map.final = n == left;
	m.u.class_map.kind = s->mkind;
	m.u.class_map.runs = &map->runs[s->map_run];
	rc = tlm_conn_queue(&s->c, &m);
	if (rc < 0)
		return rc == -ENOBUFS ? 0 : rc;
	s->map_run += n;
	if (s->map_run < map->nruns)
		return 1;
	if (s->mkind != TLM_MAP_LIVE) {
		s->bstate = BULK_PAGES;
		return 1;
	}
	s->bstate = BULK_PRESEND;
	s->carried_live = true;
	s->presend_idle = false;
	tlm_presend_map_sent(s->r);
	return 1;
}

/*
 * Where the next read-ahead goes: 0 with *buf (NULL for file sources, read in place),
 * -EAGAIN, or -ENOMEM. Pid sources read into one of PS_RA_BUFS buffers in turn, and
 * PAGES frames reference the buffer rather than copy it (tlm_conn_queue_ref): here the
 * lifetime rule is enforced. The buffer being left is busy until everything queued so far
 * is written; the next one is refilled only once its own frames are (-EAGAIN until then:
 * output is pending, so EPOLLOUT brings the pump back).
 */
static int ra_buffer(struct tlm_ps_sess *s, uint8_t **buf)
{
	unsigned k = (s->ra_cur + 1) % PS_RA_BUFS;

	*buf = NULL;
	if (s->r->kind != TLM_SRC_PID)
		return 0;
	if (!s->ra_buf)
		s->ra_buf = malloc((size_t)PS_RA_BUFS * TLM_SRC_READ_MAX * TLM_PAGE_SIZE);
	if (!s->ra_buf)
		return -ENOMEM;
	s->ra_busy[s->ra_cur] = tlm_conn_end(&s->c);
	if (s->c.bytes_out < s->ra_busy[k])
		return -EAGAIN;
	s->ra_cur = k;
	*buf = s->ra_buf + (size_t)k * TLM_SRC_READ_MAX * TLM_PAGE_SIZE;
	return 0;
}

/* DATA page p goes without the stream: sent on urgent, or a valid pre-sent copy. */
static bool ra_skip(const struct tlm_ps_sess *s, uint64_t p)
{
	return tlm_cls_sent(&s->r->map, p) || (s->skip_valid && tlm_presend_valid(s->r->pre, p));
}

/* The cursor's next DATA pages to send, into ra_page; returns how many. */
static unsigned ra_pick_cursor(struct tlm_ps_sess *s)
{
	struct tlm_src_region *r = s->r;
	unsigned n = 0;

	for (; s->cursor < r->page_count && n < TLM_SRC_READ_MAX; s->cursor++) {
		if (!tlm_cls_is_data(&r->map, s->cursor) ||
		    (s->jumped && tlm_pb_test(s->jumped, s->cursor)))
			continue;           /* counted when the jump handled it */
		if (ra_skip(s, s->cursor))
			s->data_passed++;
		else
			s->ra_page[n++] = s->cursor;
	}
	return n;
}

/* The neighbourhood's next DATA pages to send, into ra_page: marked jumped (bulk_pages
 * counts them in data_passed as it handles them, the cursor passes them by). */
static unsigned ra_pick_jump(struct tlm_ps_sess *s)
{
	struct tlm_src_region *r = s->r;
	unsigned n = 0;

	for (; s->jump_left && s->jump_page < r->page_count && n < TLM_SRC_READ_MAX;
	     s->jump_page++, s->jump_left--) {
		uint64_t p = s->jump_page;

		if (p < s->cursor || !tlm_cls_is_data(&r->map, p) || tlm_pb_test(s->jumped, p) ||
		    ra_skip(s, p))
			continue;
		tlm_pb_set(s->jumped, p);
		s->ra_page[n++] = p;
	}
	if (s->jump_page >= r->page_count)
		s->jump_left = 0;
	return n;
}

/* Next DATA pages to send, a jump's first, read in one go. 0, -EAGAIN (no free read-ahead
 * buffer yet), or -errno. */
static int bulk_readahead(struct tlm_ps_sess *s)
{
	struct tlm_src_region *r = s->r;
	char err[200];
	unsigned n;
	uint8_t *buf;
	int rc = ra_buffer(s, &buf);

	if (rc < 0)
		return rc;
	n = s->jump_left ? ra_pick_jump(s) : 0;
	s->ra_jump = n > 0;
	if (!n)
		n = ra_pick_cursor(s);
	s->ra_i = 0;
	s->ra_n = n;
	if (!n)
		return 0;
	rc = tlm_src_read_pages(r, s->ra_page, n, buf, s->ra_ptr, err, sizeof(err));
	if (rc < 0)
		log_error("%s", err);
	return rc;
}

static int bulk_done(struct tlm_ps_sess *s)
{
	struct tlm_src_region *r = s->r;
	struct tlm_msg m = { .type = TLM_MSG_DONE };
	int rc;

	m.u.done.data_pages = r->map.count[TLM_CLASS_DATA];
	m.u.done.bytes = s->payload;
	rc = tlm_conn_queue(&s->c, &m);
	if (rc < 0)
		return rc == -ENOBUFS ? 0 : rc;
	s->bstate = BULK_FINISHED;
	r->phase = TLM_SRC_DONE;
	r->st.bulk_rounds++;
	if (!r->st.done_ns)
		r->st.done_ns = tlm_now_ns();
	log_info("%s: bulk stream complete: %llu DATA pages, %llu sent on bulk, %.1f ms after freeze",
		 r->id, (unsigned long long)m.u.done.data_pages,
		 (unsigned long long)(s->payload / TLM_PAGE_SIZE),
		 (double)(tlm_now_ns() - r->st.freeze_ns) / 1e6);
	return 1;
}

/* Read-ahead page i went out on urgent meanwhile (only after freeze: pre-sent pages are
 * never demanded before). */
static bool ra_sent(const struct tlm_ps_sess *s, unsigned i)
{
	return s->bstate == BULK_PAGES && tlm_cls_sent(&s->r->map, s->ra_page[i]);
}

/* Pages of the read-ahead from ra_i on that go out in one PAGES frame: consecutive, not
 * sent on urgent, contiguous in memory (the file mapping, or one process_vm_readv). */
static uint32_t bulk_run(const struct tlm_ps_sess *s, unsigned max)
{
	uint32_t n = 1;

	if (ra_sent(s, s->ra_i))
		return 0;
	while (n < max && s->ra_i + n < s->ra_n &&
	       s->ra_page[s->ra_i + n] == s->ra_page[s->ra_i] + n &&
	       s->ra_ptr[s->ra_i + n] == s->ra_ptr[s->ra_i] + (size_t)n * TLM_PAGE_SIZE &&
	       !ra_sent(s, s->ra_i + n))
		n++;
	return n;
}

/* One PAGES frame of n read-ahead pages from ra_i (pre-sent or not). 0, or -ENOBUFS (no
 * room yet). A read-ahead buffer's data is sent by reference (ra_buffer keeps it until it
 * is written). A file mapping's is copied: a running guest may change it before it is
 * written (live.h: a copy is valid as read, the `wrote` bit speaks of that read), and
 * for a frozen one sendmsg straight from the mapping measured slower than the copy (the
 * kernel's copy out of the cold mapping cost more than ours of the just-summed page). */
static int queue_pages(struct tlm_ps_sess *s, uint32_t n)
{
	uint8_t sums[TLM_PROTO_MAX_PAGES * 8];
	struct tlm_msg m = { .type = TLM_MSG_PAGES };
	int rc;

	m.u.pages.page = s->ra_page[s->ra_i];
	m.u.pages.count = n;
	m.u.pages.data = s->ra_ptr[s->ra_i];
	m.u.pages.sums = sums;
	if (tlm_proto_frame_size(&m) > tlm_conn_space(&s->c))
		return -ENOBUFS;
	tlm_proto_pages_sums(sums, m.u.pages.data, n);
	if (s->r->kind == TLM_SRC_PID)
		rc = tlm_conn_queue_ref(&s->c, &m);
	else
		rc = tlm_conn_queue(&s->c, &m);
	if (rc == 0)
		s->r->st.payload_bytes += (uint64_t)n * TLM_PAGE_SIZE;
	return rc;
}

/* The bulk stream's PAGES frame: remembered for demands, counted. */
static int bulk_queue_run(struct tlm_ps_sess *s, uint32_t n)
{
	struct tlm_src_region *r = s->r;
	uint64_t page = s->ra_page[s->ra_i];
	int rc = queue_pages(s, n);

	if (rc < 0)
		return rc;
	/* Remembered for demands: where the frame ends in the stream. */
	ring_push(s->ra_jump ? &s->jframes : &s->frames,
		  (struct tlm_bulk_frame){ page, n, tlm_conn_end(&s->c) });
	for (uint32_t i = 0; i < n; i++)
		tlm_cls_set_flag(&r->map, page + i, TLM_CLS_BULK);
	r->st.data_sent_bulk += n;
	s->payload += (uint64_t)n * TLM_PAGE_SIZE;
	return 0;
}

/* Pages that fit in the free output space now as PAGES frames (a frame of one page
 * costs the most per page), at most max. */
static unsigned room_pages(const struct tlm_ps_sess *s, unsigned max)
{
	struct tlm_msg m = { .type = TLM_MSG_PAGES, .u.pages = { .count = 1 } };
	size_t n = tlm_conn_space(&s->c) / tlm_proto_frame_size(&m);

	if (max > TLM_SRC_READ_MAX)
		max = TLM_SRC_READ_MAX;
	return n < max ? (unsigned)n : max;
}

/* Live phase: pre-send the next pages of the round, read only when there is room for all
 * of them (a page read and not queued would leave its `wrote` bit cleared). Pages queued;
 * 0 = nothing now (presend_idle: the progress tick tries again, or EPOLLOUT). A read that
 * fails ends pre-sending only: freeze tells whether the region can still be served. */
static int bulk_presend(struct tlm_ps_sess *s, unsigned budget)
{
	struct tlm_src_region *r = s->r;
	unsigned n = room_pages(s, budget);
	char err[200];
	uint8_t *buf;
	int rc;

	if (n == 0 || (rc = ra_buffer(s, &buf)) == -EAGAIN)
		return 0;
	n = rc < 0 || postcopy_busy(s->ps) ? 0 : tlm_presend_pick(r, tlm_now_ns(), s->ra_page, n);
	if (n && tlm_presend_read(r, s->ra_page, n, buf, s->ra_ptr, err, sizeof(err)) < 0) {
		log_warn("%s; pre-sending stops", err);
		tlm_presend_stop(r, err);
		n = 0;
	}
	s->presend_idle = n == 0;
	for (s->ra_i = 0, s->ra_n = n; s->ra_i < n;) {
		uint32_t run = bulk_run(s, TLM_PROTO_MAX_PAGES);

		if (queue_pages(s, run) < 0)
			break;
		tlm_presend_queued(r, s->ra_page[s->ra_i], run);
		s->ra_i += run;
	}
	if (s->ra_i < n)
		tlm_presend_unread(r, s->ra_page + s->ra_i, n - s->ra_i);
	s->ra_i = s->ra_n = 0;
	return (int)n;
}

/* Queue DATA pages from the read-ahead, runs of consecutive pages as one PAGES frame.
 * Returns pages handled (>0), 0 = no room or finished, -errno on a read failure. */
static int bulk_pages(struct tlm_ps_sess *s, unsigned budget)
{
	struct tlm_src_region *r = s->r;
	int n = 0, rc;

	if (s->ra_i == s->ra_n) {
		if (s->cursor == r->page_count)
			return bulk_done(s);
		rc = bulk_readahead(s);
		if (rc == -EAGAIN)
			return 0;
		if (rc < 0)
			return rc;
		if (s->ra_n == 0)         /* the rest was sent on urgent */
			return bulk_done(s);
	}
	while (s->ra_i < s->ra_n && (unsigned)n < budget) {
		uint32_t run = bulk_run(s, budget - (unsigned)n < TLM_PROTO_MAX_PAGES ?
					budget - (unsigned)n : TLM_PROTO_MAX_PAGES);

		if (run == 0) {           /* sent on urgent meanwhile: skip it */
			run = 1;
		} else if (bulk_queue_run(s, run) < 0) {
			break;
		}
		s->ra_i += run;
		s->data_passed += run;
		n += (int)run;
	}
	return n;
}

void tlm_ps_bulk_pump(struct tlm_ps_sess *s)
{
	unsigned budget = PS_BULK_BATCH;
	int rc = 1;

	if (s->dead || (!bulk_has_work(s) && !tlm_conn_pending(&s->c)))
		return;
	rc = tlm_pace_tick(&s->pace, s->c.fd, s->r->id, tlm_now_ns());
	if (rc < 0)
		log_debug("%s: bulk stream not paced: %s", s->r->id, strerror(-rc));
	s->r->st.bulk_pace_state = s->pace.state;
	s->r->st.bulk_pace_bps = s->pace.rate;
	rc = 1;
	if (sess_flush(s) == -1)
		return;
	while (rc > 0 && budget && bulk_has_work(s)) {
		if (s->bstate == BULK_MAP || s->bstate == BULK_LIVE_MAP) {
			rc = bulk_map(s);
			continue;
		}
		rc = s->bstate == BULK_PRESEND ? bulk_presend(s, budget) : bulk_pages(s, budget);
		budget = rc > 0 && (unsigned)rc < budget ? budget - (unsigned)rc : 0;
	}
	if (rc < 0) {
		region_fail(s->r, rc);
		return;
	}
	if (sess_flush(s) == -1)
		return;
	sess_set_events(s);
}

/* Live phase: the live map once the worker published it, the next pre-send round. */
static void live_tick(struct tlm_src_region *r, struct tlm_ps_sess *s)
{
	tlm_presend_tick(r, s != NULL);
	if (!s)
		return;
	bulk_live(s);
	if (s->bstate == BULK_PRESEND && s->presend_idle) {
		s->presend_idle = false;
		tlm_ps_bulk_pump(s);
	}
}

void tlm_ps_progress_tick(struct tlm_ps *ps)
{
	for (struct tlm_src_region *r = ps->regions; r; r = r->next) {
		struct tlm_ps_sess *s = r->bulk && !r->bulk->dead ? r->bulk : NULL;
		struct tlm_msg m = { .type = TLM_MSG_PROGRESS };

		if (r->phase == TLM_SRC_LIVE)
			live_tick(r, s);
		if (!s || s->bstate != BULK_PAGES)
			continue;
		if (!(s->src.events & EPOLLOUT) && !bulk_held(s))
			tlm_ps_bulk_pump(s);         /* the --bulk-delay hold is over */
		m.u.progress.pages_sent = s->data_passed;
		m.u.progress.pages_total = r->map.count[TLM_CLASS_DATA];
		tlm_conn_queue(&s->c, &m);   /* no room: the stream is moving anyway */
	}
}

/* Bulk input: a destination sends nothing after VM_OPEN, so any frame ends the session. */
static void bulk_input(struct tlm_ps_sess *s)
{
	char err[160];
	struct tlm_msg m;
	int rc = tlm_conn_next(&s->c, &m, err, sizeof(err));

	if (rc < 0)
		sess_fail(s, TLM_ERR_PROTOCOL, "malformed frame: %s", err);
	else if (rc > 0)
		sess_unexpected(s, &m);
}

void tlm_ps_sess_event(struct tlm_evsrc *src, uint32_t events)
{
	struct tlm_ps_sess *s = TLM_EVSRC_OWNER(src, struct tlm_ps_sess, src);

	if (s->dead)
		return;
	if ((events & (EPOLLIN | EPOLLHUP | EPOLLERR)) && sess_read(s) < 0)
		return;
	if (s->chan == TLM_CHAN_URGENT)
		urgent_work(s);
	else
		bulk_input(s);
}

void tlm_ps_region_ready(struct tlm_ps *ps, struct tlm_src_region *r)
{
	if (r->phase == TLM_SRC_FAILED) {
		close_failed(r);
		return;
	}
	if (r->urgent)
		urgent_work(r->urgent);
	if (r->bulk && (r->bulk->bstate == BULK_WAIT || r->bulk->bstate == BULK_LIVE_MAP ||
			r->bulk->bstate == BULK_PRESEND))
		bulk_start(r->bulk);
}

/* ---- accepting ------------------------------------------------------------------------- */

static struct tlm_src_region *find_region(struct tlm_ps *ps, const char *id)
{
	for (struct tlm_src_region *r = ps->regions; r; r = r->next)
		if (strcmp(r->id, id) == 0)
			return r;
	return NULL;
}

static void digest_text(const uint8_t b[16], char out[33])
{
	static const uint8_t zero[16];
	struct tlm_digest d;

	memcpy(d.b, b, 16);
	if (memcmp(b, zero, 16) == 0)
		snprintf(out, 33, "none");
	else
		tlm_digest_hex(&d, out);
}

/* Why this VM_OPEN cannot be accepted: an ERROR code with its text in why, or 0. */
static uint32_t vm_open_refusal(struct tlm_ps *ps, const struct tlm_msg *o, uint8_t chan,
				struct tlm_src_region **out, char *why, size_t len)
{
	const char *id = o->u.vm_open.vm_id;
	struct tlm_src_region *r = find_region(ps, id);
	char have[33], want[33];

	*out = r;
	if (!r) {
		snprintf(why, len, "unknown VM '%s'", id);
		return TLM_ERR_UNKNOWN_VM;
	}
	if (o->u.vm_open.page_size != TLM_PAGE_SIZE || o->u.vm_open.ram_size != r->size) {
		snprintf(why, len, "size mismatch for VM '%s': source has %llu bytes in %u-byte "
			 "pages, destination has %llu in %u-byte pages", id,
			 (unsigned long long)r->size, TLM_PAGE_SIZE,
			 (unsigned long long)o->u.vm_open.ram_size, o->u.vm_open.page_size);
		return TLM_ERR_MISMATCH;
	}
	if (memcmp(o->u.vm_open.digest, r->digest.b, 16) != 0) {
		digest_text(r->digest.b, have);
		digest_text(o->u.vm_open.digest, want);
		snprintf(why, len, "template digest mismatch for VM '%s': source has %s, "
			 "destination has %s", id, have, want);
		return TLM_ERR_MISMATCH;
	}
	if (r->phase == TLM_SRC_FAILED) {
		snprintf(why, len, "VM '%s': %.120s", id, r->fail);
		return TLM_ERR_INTERNAL;
	}
	if ((chan == TLM_CHAN_URGENT ? r->urgent : r->bulk) != NULL) {
		snprintf(why, len, "VM '%s' already has an open %s session", id, chan_name(chan));
		return TLM_ERR_BUSY;
	}
	return 0;
}

/* Frame bytes of the handshake (for the overhead counter): HELLO .. VM_ACCEPT. */
static uint64_t handshake_bytes(const struct tlm_msg *open)
{
	static const enum tlm_msg_type t[] = { TLM_MSG_HELLO, TLM_MSG_CHALLENGE, TLM_MSG_AUTH,
					       TLM_MSG_AUTH_OK, TLM_MSG_VM_ACCEPT };
	uint64_t n = tlm_proto_frame_size(open);

	for (size_t i = 0; i < TLM_ARRAY_SIZE(t); i++) {
		struct tlm_msg m = { .type = t[i] };

		n += tlm_proto_frame_size(&m);
	}
	return n;
}

static int sess_register(struct tlm_ps *ps, struct tlm_src_region *r, int fd, uint8_t chan,
			 const char *peer, const struct tlm_msg *open)
{
	struct tlm_ps_sess *s = calloc(1, sizeof(*s));
	int rc = -ENOMEM;

	if (!s || (rc = tlm_conn_init(&s->c, fd, chan == TLM_CHAN_URGENT ? PS_URGENT_WCAP :
				      PS_BULK_WCAP)) < 0) {
		free(s);
		return rc;
	}
	s->src = (struct tlm_evsrc){ .fd = fd, .on_event = tlm_ps_sess_event,
				     .prio = chan == TLM_CHAN_URGENT ? PS_PRIO_URGENT : PS_PRIO_BULK };
	s->ps = ps;
	s->r = r;
	s->chan = chan;
	s->handshake_bytes = handshake_bytes(open);
	tlm_pace_init(&s->pace, &ps->pace);
	snprintf(s->peer, sizeof(s->peer), "%s", peer);
	if (tlm_set_nonblock(fd, 1) < 0 || (rc = tlm_evloop_add(&ps->loop, &s->src, EPOLLIN)) < 0) {
		rc = rc < 0 ? rc : -errno;
		s->c.fd = -1;       /* the caller closes fd */
		tlm_conn_fini(&s->c);
		free(s);
		return rc;
	}
	/* --bulk-lowat: what the kernel holds unsent of the stream is bounded (best effort). */
	if (chan == TLM_CHAN_BULK && ps->bulk_lowat &&
	    setsockopt(fd, IPPROTO_TCP, TCP_NOTSENT_LOWAT, &ps->bulk_lowat,
		       sizeof(ps->bulk_lowat)) < 0)
		log_warn("%s: TCP_NOTSENT_LOWAT: %s", r->id, strerror(errno));
	*(chan == TLM_CHAN_URGENT ? &r->urgent : &r->bulk) = s;
	s->next = ps->sessions;
	ps->sessions = s;
	r->st.sessions_opened++;
	log_info("%s: %s session from %s (phase %s)", r->id, chan_name(chan), peer,
		 tlm_src_phase_name(r->phase));
	if (chan == TLM_CHAN_BULK)
		tlm_presend_session(r);
	if (region_serving(r))
		tlm_ps_region_ready(ps, r);
	else if (chan == TLM_CHAN_BULK)
		bulk_live(s);
	return 0;
}

/* One connection's handshake, run by its own thread. */
struct ps_handshake {
	struct tlm_ps *ps;
	int fd, rc;
	uint8_t chan;
	char peer[64];
	struct tlm_msg open;
	char err[TLM_PROTO_ERRMSG_MAX + 1];
};

static void *handshake_main(void *arg)
{
	struct ps_handshake *h = arg;
	char mode[96];
	ssize_t n;

	/* TLS first: the tlm handshake then runs inside it, unchanged (tlm_tls.h). */
	h->rc = h->ps->tls ? tlm_tls_wrap(h->ps->tls, h->fd, PS_HANDSHAKE_MS, &h->fd, mode,
					  sizeof(mode), h->err, sizeof(h->err)) : 0;
	if (h->rc == 0 && h->ps->tls)
		log_info("%s: tls: %s", h->peer, mode);
	if (h->rc == 0)
		h->rc = tlm_proto_server_handshake(h->fd, &h->ps->key, &h->chan, &h->open,
						   PS_HANDSHAKE_MS, h->err, sizeof(h->err));
	/* A pointer-sized pipe write is atomic, and the pipe holds far more than
	 * PS_HANDSHAKES_MAX of them: it cannot block or be cut short. */
	do
		n = write(h->ps->hs_pipe[1], &h, sizeof(h));
	while (n < 0 && errno == EINTR);
	return NULL;
}

static void handshake_start(struct tlm_ps *ps, int fd, const char *peer)
{
	struct ps_handshake *h;
	pthread_attr_t attr;
	pthread_t th;
	int rc;

	if (ps->handshakes >= PS_HANDSHAKES_MAX) {
		log_warn("%s: refused: %u handshakes already in progress", peer, ps->handshakes);
		close(fd);
		return;
	}
	h = calloc(1, sizeof(*h));
	if (!h) {
		close(fd);
		return;
	}
	*h = (struct ps_handshake){ .ps = ps, .fd = fd };
	snprintf(h->peer, sizeof(h->peer), "%s", peer);
	tlm_tcp_nodelay(fd);
	pthread_attr_init(&attr);
	pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
	rc = pthread_create(&th, &attr, handshake_main, h);
	pthread_attr_destroy(&attr);
	if (rc) {
		log_warn("%s: cannot start its handshake: %s", peer, strerror(rc));
		close(fd);
		free(h);
		return;
	}
	ps->handshakes++;
}

/* The handshake succeeded: check the VM_OPEN, answer, register the session. */
static void sess_admit(struct tlm_ps *ps, struct ps_handshake *h)
{
	struct tlm_msg acc = { .type = TLM_MSG_VM_ACCEPT };
	struct tlm_src_region *r;
	char err[TLM_PROTO_ERRMSG_MAX + 1];
	const char *peer = h->peer;
	uint8_t chan = h->chan;
	int fd = h->fd, rc;
	uint32_t code;

	code = vm_open_refusal(ps, &h->open, chan, &r, err, sizeof(err));
	if (code) {
		log_warn("%s: refused %s session from %s: %s",
			 r ? r->id : h->open.u.vm_open.vm_id, chan_name(chan), peer, err);
		tlm_proto_send_error(fd, code, "%s", err);
		close(fd);
		return;
	}
	acc.u.vm_accept.page_count = r->page_count;
	rc = tlm_proto_send(fd, &acc, PS_HANDSHAKE_MS);
	if (rc == 0)
		rc = sess_register(ps, r, fd, chan, peer, &h->open);
	if (rc < 0) {
		log_warn("%s: %s session from %s failed: %s", r->id, chan_name(chan), peer,
			 strerror(-rc));
		close(fd);
	}
}

/* Take finished handshakes off the pipe; admit = false only closes them (shutdown). */
static void handshakes_collect(struct tlm_ps *ps, bool admit)
{
	struct ps_handshake *h;

	while (read(ps->hs_pipe[0], &h, sizeof(h)) == (ssize_t)sizeof(h)) {
		ps->handshakes--;
		if (h->rc < 0) {
			log_warn("%s: handshake failed: %s", h->peer, h->err);
			close(h->fd);
		} else if (admit) {
			sess_admit(ps, h);
		} else {
			close(h->fd);
		}
		free(h);
	}
}

void tlm_ps_handshakes_done(struct tlm_ps *ps)
{
	handshakes_collect(ps, true);
}

void tlm_ps_handshakes_drain(struct tlm_ps *ps)
{
	struct pollfd p = { .fd = ps->hs_pipe[0], .events = POLLIN };

	while (ps->handshakes && poll(&p, 1, -1) >= 0)
		handshakes_collect(ps, false);
}

void tlm_ps_accept(struct tlm_ps *ps)
{
	struct sockaddr_storage ss;
	socklen_t len = sizeof(ss);
	char host[NI_MAXHOST], serv[NI_MAXSERV], peer[64];
	int fd;

	for (;;) {
		len = sizeof(ss);
		fd = accept4(ps->lfd, (struct sockaddr *)&ss, &len, SOCK_CLOEXEC);
		if (fd < 0 && errno == EINTR)
			continue;
		if (fd < 0) {
			if (errno != EAGAIN && errno != EWOULDBLOCK)
				log_warn("accept: %s", strerror(errno));
			return;
		}
		if (getnameinfo((struct sockaddr *)&ss, len, host, sizeof(host), serv,
				sizeof(serv), NI_NUMERICHOST | NI_NUMERICSERV) != 0)
			snprintf(peer, sizeof(peer), "?");
		else
			snprintf(peer, sizeof(peer), "%.48s:%.8s", host, serv);
		handshake_start(ps, fd, peer);
	}
}
