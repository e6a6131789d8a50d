/*
 * dst_peer.c — the urgent and bulk sessions of one region to the source page server
 * (dst_peer.h), behind the region's struct dst_link. Messages are checked against the
 * channel they may arrive on and handed to the region, which validates their contents.
 *
 * Closing a session frees its buffers, and a frame being handled points into them; so a
 * broken session is only flagged (peer->lost) where it is found and closed at the next
 * safe point (end of the event, the pump).
 */
#include "dst_peer.h"

#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <pthread.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include "dst_fetch.h"
#include "dst_region.h"
#include "evloop.h"
#include "log.h"
#include "tlm_bytes.h"
#include "util.h"

#define CONNECT_TIMEOUT_MS   3000
#define HANDSHAKE_TIMEOUT_MS 5000
#define URG_WCAP             (64 * 1024)     /* DEMAND frames: 3000+ requests */
#define BULK_WCAP            4096            /* we never send on bulk */
#define PAGES_PER_CALL       256             /* bulk pages handled before yielding */
#define READS_PER_EVENT      4
#define YIELD_PAGES          32              /* bulk pages between checks for events */
#define RETRY_BASE_MS        100
#define KEEPALIVE_IDLE_S     5               /* a silent link is probed after this */
#define KEEPALIVE_TIMEOUT_S  20              /* unanswered this long: the session is lost */

struct dst_peer;

struct dst_conn {
	struct dst_peer *p;
	struct tlm_conn c;               /* c.fd -1 while down */
	struct tlm_evsrc src;            /* c.fd (or rx.efd) in the loop while up */
	struct dst_rx rx;                /* bulk input through io_uring (uring set) */
	uint8_t chan;                    /* TLM_CHAN_URGENT / TLM_CHAN_BULK */
	bool up, uring;
};

struct dst_peer {
	struct dst_link link;            /* what the region sees (first member) */
	struct dst_region *r;
	const struct dst_peer_cfg *cfg;
	struct dst_conn urg, bulk;
	unsigned attempts;               /* failed attempts in a row */
	uint64_t retry_at;               /* CLOCK_MONOTONIC ns of the next attempt, 0 = none */
	uint64_t outage_since;           /* first failure since a frame was handled, 0 = none */
	uint64_t last_input_ns;          /* last byte read on either channel (or connected) */
	struct dst_connect_job *job;     /* connection attempt under way (its own thread) */
	bool bulk_more;                  /* bulk frames may be buffered (paused / budget) */
	bool lost;                       /* a session broke: closed at the next safe point */
	uint64_t *backlog;               /* REQUESTED pages not yet queued on urgent */
	size_t nbacklog, backlog_cap;
	char last_err[256];
};

/*
 * A connection attempt (TCP connect + handshake of both channels) blocks for seconds when
 * the source is down or hung, so it runs in a thread of its own while the loop goes on
 * serving faults. The thread touches only the job (the key is the daemon's, read-only)
 * and says it is done on job->efd; the loop then takes the sockets (on_job).
 */
struct dst_connect_job {
	struct tlm_evsrc src;             /* efd */
	struct tlm_evloop *loop;
	const struct dst_peer_cfg *cfg;
	struct dst_peer *p;               /* NULL once the peer let go of it */
	pthread_t thread;
	int efd;
	char source[TLM_LOCAL_PATH_MAX];
	struct tlm_msg open;
	uint64_t npages;
	int fd[2];                        /* urgent, bulk once handshaken, else -1 */
	int rc;
	uint8_t chan;                     /* the channel that failed */
	char err[256];
};

static struct dst_peer *peer_of(const struct dst_link *l)
{
	return (struct dst_peer *)(void *)l;     /* link is the first member */
}

static void on_conn(struct tlm_evsrc *src, uint32_t events);

static void conn_init(struct dst_conn *c, struct dst_peer *p, uint8_t chan)
{
	memset(c, 0, sizeof(*c));
	c->p = p;
	c->c.fd = -1;
	c->src = (struct tlm_evsrc){ .fd = -1, .on_event = on_conn, .prio = DST_PRIO_BULK };
	if (chan == TLM_CHAN_URGENT)
		c->src.prio = DST_PRIO_URGENT;       /* demand replies before the stream */
	c->chan = chan;
}

static const char *chan_str(uint8_t chan)
{
	return chan == TLM_CHAN_URGENT ? "urgent" : chan == TLM_CHAN_BULK ? "bulk" : "local";
}

static const char *chan_name(const struct dst_conn *c)
{
	return chan_str(c->chan);
}

static bool peer_up(const struct dst_peer *p)
{
	return p->urg.up && p->bulk.up && !p->lost;
}

static void set_events(struct dst_conn *c, uint32_t events)
{
	if (c->up)
		tlm_evloop_mod(c->p->r->loop, &c->src, events);
}

/* ---- sessions ------------------------------------------------------------------------------ */

static void conn_close(struct dst_conn *c)
{
	struct dst_region *r = c->p->r;

	if (!c->up)
		return;
	r->st.wire_in += c->c.bytes_in;
	r->st.wire_out += c->c.bytes_out;
	tlm_evloop_del(r->loop, &c->src);
	if (c->uring)
		dst_rx_close(&c->rx, &c->c);
	tlm_conn_fini(&c->c);          /* closes the fd */
	c->up = false;
	c->uring = false;
}

/* Close both sessions (counters are added to the region's stats); tell the region unless
 * it is the one letting go. */
static void peer_close(struct dst_peer *p, bool tell)
{
	bool was_up = p->urg.up || p->bulk.up;

	conn_close(&p->urg);
	conn_close(&p->bulk);
	p->nbacklog = 0;
	p->bulk_more = false;
	p->lost = false;
	if (was_up && tell)
		dst_region_disconnected(p->r);
}

/* The TCP socket's options, set before TLS may put a relay's socketpair in front of it. */
static int job_tcp_opts(struct dst_connect_job *j, int fd, uint8_t chan)
{
	int rc = tlm_tcp_keepalive(fd, KEEPALIVE_IDLE_S, KEEPALIVE_TIMEOUT_S);

	/* Bounded: a page waiting in the socket cannot be placed for a fault that wants it,
	 * one in our input buffer can (link_buffered); and what waits there counts against
	 * the source's --bulk-ahead as stream ahead of a queued page. */
	if (!rc && chan == TLM_CHAN_BULK && j->cfg->bulk_rcvbuf &&
	    setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &j->cfg->bulk_rcvbuf,
		       sizeof(j->cfg->bulk_rcvbuf)) < 0)
		rc = -errno;
	return rc;
}

/* --tls psk: the fd from here on is the one TLS hands back (tlm_tls.h). */
static int job_tls(struct dst_connect_job *j, int *fd, uint8_t chan)
{
	char mode[96];
	int rc;

	if (!j->cfg->tls)
		return 0;
	rc = tlm_tls_wrap(j->cfg->tls, *fd, HANDSHAKE_TIMEOUT_MS, fd, mode, sizeof(mode),
			  j->err, sizeof(j->err));
	if (!rc)
		log_info("%s: %s channel: tls: %s", j->open.u.vm_open.vm_id,
			 chan == TLM_CHAN_URGENT ? "urgent" : "bulk", mode);
	return rc;
}

/* Thread side: connect and authenticate one channel. Returns the fd or -errno. */
static int job_channel(struct dst_connect_job *j, uint8_t chan)
{
	struct tlm_msg acc;
	int fd, rc;

	fd = tlm_tcp_connect(j->source, CONNECT_TIMEOUT_MS, j->err, sizeof(j->err));
	if (fd < 0)
		return fd;
	rc = job_tcp_opts(j, fd, chan);
	if (!rc)
		rc = job_tls(j, &fd, chan);
	if (!rc)
		rc = tlm_proto_client_handshake(fd, &j->cfg->key, chan, &j->open, &acc,
						HANDSHAKE_TIMEOUT_MS, j->err, sizeof(j->err));
	if (!rc && acc.u.vm_accept.page_count != j->npages) {
		snprintf(j->err, sizeof(j->err), "source has %llu pages for %s, the region has "
			 "%llu", (unsigned long long)acc.u.vm_accept.page_count,
			 j->open.u.vm_open.vm_id, (unsigned long long)j->npages);
		rc = -EPROTO;
	}
	if (!rc)
		rc = tlm_set_nonblock(fd, 1);
	if (rc) {
		if (!j->err[0])
			snprintf(j->err, sizeof(j->err), "%s", strerror(-rc));
		close(fd);
		return rc;
	}
	return fd;
}

static void *job_run(void *arg)
{
	static const uint8_t chans[2] = { TLM_CHAN_URGENT, TLM_CHAN_BULK };
	struct dst_connect_job *j = arg;
	uint64_t one = 1;

	for (int i = 0; i < 2 && !j->rc; i++) {
		int fd = job_channel(j, chans[i]);

		if (fd < 0) {
			j->rc = fd;
			j->chan = chans[i];
		} else {
			j->fd[i] = fd;
		}
	}
	if (write(j->efd, &one, sizeof(one)) < 0)
		abort();                 /* an eventfd write of 1 cannot fail */
	return NULL;
}

static void on_job(struct tlm_evsrc *src, uint32_t events);

static struct dst_connect_job *job_start(struct dst_peer *p)
{
	struct dst_region *r = p->r;
	struct dst_connect_job *j = calloc(1, sizeof(*j));
	struct tlm_msg *o;

	if (!j)
		return NULL;
	*j = (struct dst_connect_job){ .loop = r->loop, .cfg = p->cfg, .p = p,
				       .npages = r->npages, .fd = { -1, -1 } };
	snprintf(j->source, sizeof(j->source), "%s", r->source);
	o = &j->open;
	o->type = TLM_MSG_VM_OPEN;
	o->u.vm_open.ram_size = r->size;
	o->u.vm_open.page_size = TLM_PROTO_PAGE_SIZE;
	memcpy(o->u.vm_open.digest, r->digest, sizeof(r->digest));
	snprintf(o->u.vm_open.vm_id, sizeof(o->u.vm_open.vm_id), "%s", r->id);
	j->efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	j->src = (struct tlm_evsrc){ .fd = j->efd, .on_event = on_job, .prio = DST_PRIO_OTHER };
	if (j->efd >= 0 && tlm_evloop_add(j->loop, &j->src, EPOLLIN) == 0) {
		if (pthread_create(&j->thread, NULL, job_run, j) == 0)
			return j;
		tlm_evloop_del(j->loop, &j->src);
	}
	if (j->efd >= 0)
		close(j->efd);
	free(j);
	return NULL;
}

/* Bulk input through a ring of its own (--net-io): the loop watches its eventfd, and the
 * first RECV is armed now (bytes may be waiting already). read() if the ring fails. */
static void attach_uring(struct dst_conn *c)
{
	int rc = dst_rx_open(&c->rx);

	if (rc) {
		log_warn("%s: bulk session: io_uring: %s; reading it with read()", c->p->r->id,
			 strerror(-rc));
		return;
	}
	c->uring = true;
	c->src.fd = c->rx.efd;
}

/* A handshaken socket joins the event loop; closed on failure. */
static int attach_session(struct dst_conn *c, int fd)
{
	size_t wcap = c->chan == TLM_CHAN_URGENT ? URG_WCAP : BULK_WCAP;
	int rc = tlm_conn_init(&c->c, fd, wcap);

	if (rc) {
		close(fd);
		return rc;
	}
	c->src.fd = fd;
	if (c->chan == TLM_CHAN_BULK && c->p->cfg->net_io == DST_NET_IO_URING)
		attach_uring(c);
	rc = tlm_evloop_add(c->p->r->loop, &c->src, EPOLLIN);
	if (!rc && c->uring)
		rc = (int)dst_rx_fill(&c->rx, &c->c);
	if (rc && rc != -EAGAIN) {
		tlm_evloop_del(c->p->r->loop, &c->src);
		if (c->uring)
			dst_rx_close(&c->rx, &c->c);
		c->uring = false;
		tlm_conn_fini(&c->c);
		return rc;
	}
	c->up = true;
	return 0;
}

/* Errors no retry can cure: wrong key, protocol version, a broken source. */
static bool fatal_errno(int rc)
{
	return rc == -EACCES || rc == -EPROTONOSUPPORT || rc == -EPROTO || rc == -EBADMSG ||
	       rc == -EINVAL;
}

/* The outage lasted longer than the limit: stop trying, faults keep waiting. */
static void pause_peer(struct dst_peer *p, const char *why)
{
	struct dst_region *r = p->r;

	p->link.paused = true;
	p->retry_at = 0;
	log_error("%s: source %s unreachable for %llu s (%s): paused, guest faults wait; "
		  "`resume %s [HOST:PORT]` tries again", r->id, r->source,
		  (unsigned long long)((tlm_now_ns() - p->outage_since) / 1000000000ull), why,
		  r->id);
	snprintf(r->fail_reason, sizeof(r->fail_reason), "paused: source unreachable: %s", why);
}

static void schedule_retry(struct dst_peer *p, int rc, const char *why)
{
	struct dst_region *r = p->r;
	uint64_t now = tlm_now_ns(), ms;

	if (fatal_errno(rc)) {
		dst_region_fail(r, "source %s: %s", r->source, why);
		return;
	}
	if (!p->outage_since)
		p->outage_since = now;
	if (now - p->outage_since >= p->cfg->outage_limit_ms * 1000000ull) {
		pause_peer(p, why);
		return;
	}
	p->attempts++;
	ms = (uint64_t)RETRY_BASE_MS << (p->attempts < 6 ? p->attempts - 1 : 5);
	if (ms > DST_PEER_RETRY_MAX_MS)
		ms = DST_PEER_RETRY_MAX_MS;
	p->retry_at = now + ms * 1000000ull;
	log_warn("%s: source %s: %s; retrying in %llu ms (attempt %u)", r->id, r->source, why,
		 (unsigned long long)ms, p->attempts + 1);
}

int dst_peer_resume(struct dst_region *r, const char *source)
{
	struct dst_peer *p = r->link ? peer_of(r->link) : NULL;

	if (!p || !p->link.paused)
		return -EINVAL;
	if (source)
		snprintf(r->source, sizeof(r->source), "%s", source);
	p->link.paused = false;
	p->attempts = 0;
	p->outage_since = 0;
	p->retry_at = tlm_now_ns();
	r->fail_reason[0] = '\0';
	log_info("%s: resuming: connecting to the source %s", r->id, r->source);
	return 0;
}

static void flush_backlog(struct dst_peer *p);

static void peer_connect(struct dst_peer *p)
{
	p->retry_at = 0;
	if (p->job)
		return;
	p->job = job_start(p);
	if (!p->job)
		schedule_retry(p, -ENOMEM, "cannot start a connection attempt");
}

/* The attempt's sockets join the loop, or a retry is scheduled. */
static void job_finish(struct dst_peer *p, struct dst_connect_job *j)
{
	struct dst_region *r = p->r;
	int rc = j->rc, fd;

	if (!rc) {
		fd = j->fd[0];
		j->fd[0] = -1;
		rc = attach_session(&p->urg, fd);
	}
	if (!rc) {
		fd = j->fd[1];
		j->fd[1] = -1;
		rc = attach_session(&p->bulk, fd);
	}
	if (rc) {
		char why[320];

		snprintf(why, sizeof(why), "%s channel: %s", chan_str(j->rc ? j->chan : 0),
			 j->rc ? j->err : strerror(-rc));
		peer_close(p, true);
		schedule_retry(p, rc, why);
		return;
	}
	r->st.sessions++;
	p->last_input_ns = tlm_now_ns();
	log_info("%s: connected to the source %s (urgent + bulk)", r->id, r->source);
	dst_region_connected(r);
	flush_backlog(p);
}

/* The attempt's thread is done (its eventfd is readable). */
static void on_job(struct tlm_evsrc *src, uint32_t events)
{
	struct dst_connect_job *j = TLM_EVSRC_OWNER(src, struct dst_connect_job, src);

	pthread_join(j->thread, NULL);
	tlm_evloop_del(j->loop, &j->src);
	close(j->efd);
	if (j->p) {
		j->p->job = NULL;
		job_finish(j->p, j);
	}
	for (int i = 0; i < 2; i++)
		if (j->fd[i] >= 0)
			close(j->fd[i]);
	free(j);
}

/* Flag a broken session; it is closed at the next safe point. */
static void conn_broken(struct dst_conn *c, const char *why)
{
	struct dst_peer *p = c->p;

	if (p->lost)
		return;
	p->lost = true;
	snprintf(p->last_err, sizeof(p->last_err), "%s channel: %s", chan_name(c), why);
}

static void check_lost(struct dst_peer *p)
{
	struct dst_region *r = p->r;
	char why[sizeof(p->last_err)];

	if (!p->lost)
		return;
	memcpy(why, p->last_err, sizeof(why));
	peer_close(p, true);
	if (r->phase == DST_FAILED || r->phase == DST_COMPLETE || r->dead)
		return;
	r->st.reconnects++;
	log_warn("%s: lost the source session (%s); faults wait while we reconnect", r->id,
		 why);
	schedule_retry(p, -ECONNRESET, why);
}

/*
 * A source that keeps its connections open but answers nothing (hung, stopped) is a lost
 * session too, once a guest page has been waited for that long: demands are outstanding
 * and neither channel brought a byte for --stall-timeout.
 */
static void check_stall(struct dst_peer *p, uint64_t now_ns)
{
	struct dst_region *r = p->r;
	char why[96];

	if (!peer_up(p) || !r->n_requested ||
	    now_ns - p->last_input_ns < p->cfg->stall_ms * 1000000ull)
		return;
	snprintf(why, sizeof(why), "no reply to %llu demanded pages for %.1f s",
		 (unsigned long long)r->n_requested, (double)(now_ns - p->last_input_ns) / 1e9);
	conn_broken(&p->urg, why);
}

static void peer_tick(struct dst_peer *p, uint64_t now_ns)
{
	check_stall(p, now_ns);
	check_lost(p);
	if (!p->urg.up && !p->job && p->retry_at && now_ns >= p->retry_at)
		peer_connect(p);
}

/* ---- demand -------------------------------------------------------------------------------- */

static void flush_urgent(struct dst_peer *p)
{
	struct dst_conn *c = &p->urg;
	int rc;

	if (!c->up || p->lost)
		return;
	rc = tlm_conn_flush(&c->c);
	if (rc == 0) {
		set_events(c, EPOLLIN);
	} else if (rc == -EAGAIN) {
		set_events(c, EPOLLIN | EPOLLOUT);
	} else {
		char why[128];

		snprintf(why, sizeof(why), "send: %s", strerror(-rc));
		conn_broken(c, why);
	}
}

/* Queue DEMANDs for the backlog, consecutive pages merged, as far as urgent has room. */
/*
 * Before demands: how much of the bulk stream we have handled, so that the source leaves
 * a demand to a bulk copy only when little of the stream is really ahead of it (the
 * bytes in our receive queue and buffer included, which its socket cannot see).
 */
static int queue_credit(struct dst_peer *p)
{
	struct tlm_msg m = { .type = TLM_MSG_CREDIT };

	if (!p->bulk.up)
		return 0;
	m.u.credit.bulk_bytes = tlm_conn_handled(&p->bulk.c);
	return tlm_conn_queue(&p->urg.c, &m);
}

static void flush_backlog(struct dst_peer *p)
{
	struct dst_region *r = p->r;
	size_t i = 0;

	if (p->nbacklog && p->urg.up && !p->lost && queue_credit(p) < 0) {
		flush_urgent(p);         /* full: the demands wait for EPOLLOUT too */
		return;
	}
	while (i < p->nbacklog && p->urg.up && !p->lost) {
		struct tlm_msg m = { .type = TLM_MSG_DEMAND };
		size_t j = i + 1;

		while (j < p->nbacklog && j - i < TLM_PROTO_MAX_DEMAND &&
		       p->backlog[j] == p->backlog[j - 1] + 1)
			j++;
		m.u.demand.page = p->backlog[i];
		m.u.demand.count = (uint32_t)(j - i);
		if (tlm_conn_queue(&p->urg.c, &m) < 0)
			break;                   /* full: the rest waits for EPOLLOUT */
		r->st.demand_msgs++;
		r->st.demand_pages += j - i;
		i = j;
	}
	if (i) {
		memmove(p->backlog, p->backlog + i, (p->nbacklog - i) * sizeof(*p->backlog));
		p->nbacklog -= i;
	}
	flush_urgent(p);
}

/* Room for n more pages in the backlog: all or nothing. */
static int backlog_reserve(struct dst_peer *p, size_t n)
{
	size_t cap = p->backlog_cap ? p->backlog_cap : 256;
	uint64_t *b;

	while (cap < p->nbacklog + n)
		cap *= 2;
	if (cap == p->backlog_cap)
		return 0;
	b = realloc(p->backlog, cap * sizeof(*b));
	if (!b)
		return -ENOMEM;
	p->backlog = b;
	p->backlog_cap = cap;
	return 0;
}

/* ---- input ------------------------------------------------------------------------------------ */

static int on_bulk_only(struct dst_conn *c, const struct tlm_msg *m, char *err, size_t errlen)
{
	if (c->chan == TLM_CHAN_BULK)
		return 0;
	snprintf(err, errlen, "%s on the urgent channel", tlm_msg_name(m->type));
	return -EPROTO;
}

static int handle_msg(struct dst_conn *c, const struct tlm_msg *m, char *err, size_t errlen)
{
	struct dst_region *r = c->p->r;
	bool urgent = c->chan == TLM_CHAN_URGENT;
	int rc;

	switch (m->type) {
	case TLM_MSG_PAGE:
		return dst_region_page_msg(r, m, urgent, err, errlen);
	case TLM_MSG_PAGES:
		return dst_region_pages_msg(r, m, urgent, err, errlen);
	case TLM_MSG_ZERO:
		return dst_region_zero_msg(r, m, err, errlen);
	case TLM_MSG_REF:
		return dst_region_ref_msg(r, m, err, errlen);
	case TLM_MSG_CLASS_MAP:
		rc = on_bulk_only(c, m, err, errlen);
		return rc ? rc : dst_region_map_msg(r, m, err, errlen);
	case TLM_MSG_PROGRESS:
		r->st.source_sent = m->u.progress.pages_sent;
		r->st.source_total = m->u.progress.pages_total;
		return on_bulk_only(c, m, err, errlen);
	case TLM_MSG_DONE:
		rc = on_bulk_only(c, m, err, errlen);
		if (!rc)
			dst_region_done_msg(r, m);
		return rc;
	case TLM_MSG_ERROR:
		snprintf(err, errlen, "source sent ERROR %u: %s", m->u.error.code, m->u.error.msg);
		conn_broken(c, err);
		return -ECONNRESET;
	default:
		snprintf(err, errlen, "unexpected %s on the %s channel", tlm_msg_name(m->type),
			 chan_name(c));
		return -EPROTO;
	}
}

static bool can_take(const struct dst_conn *c)
{
	return c->up && !c->p->lost && dst_region_live(c->p->r);
}

/* Pages a frame carries (1 for the others). */
static unsigned msg_weight(const struct tlm_msg *m)
{
	return m->type == TLM_MSG_PAGES ? m->u.pages.count : 1;
}

/*
 * Handle buffered frames. Returns 0 when a partial frame remains (read more), 1 when it
 * stopped early (budget, yield to waiting events, region stopped), -1 when
 * the session or the region broke. A message the region refuses means the source said
 * something impossible: the region fails (nothing it sends can be trusted).
 */
static int handle_frames(struct dst_conn *c, unsigned budget)
{
	struct dst_peer *p = c->p;
	struct dst_region *r = p->r;
	unsigned since_check = 0;
	char err[320];
	struct tlm_msg m;
	int rc;

	/* Work is counted in pages, so a PAGES frame of 64 weighs 64: a demand reply
	 * waiting on urgent never waits for more than YIELD_PAGES pages of bulk. */
	for (unsigned done = 0; done < budget; done += msg_weight(&m)) {
		if (!can_take(c))
			return -1;
		if (c->chan == TLM_CHAN_BULK && since_check >= YIELD_PAGES) {
			since_check = 0;
			if (tlm_evloop_should_yield(r->loop))
				return 1;
		}
		err[0] = '\0';
		rc = tlm_conn_next(&c->c, &m, err, sizeof(err));
		if (rc == 0)
			return 0;
		if (rc < 0) {
			dst_region_fail(r, "source %s sent a malformed frame on %s: %s", r->source,
					chan_name(c), err);
			return -1;
		}
		rc = handle_msg(c, &m, err, sizeof(err));
		if (rc == -ECONNRESET)
			return -1;
		if (rc < 0) {
			dst_region_fail(r, "source %s: %s", r->source, err);
			return -1;
		}
		p->attempts = 0;          /* the session works */
		p->outage_since = 0;
		since_check += msg_weight(&m);
	}
	return 1;
}

/* Bulk stopped by its frame budget or to yield to waiting events: stop reading it until
 * the background slice (the pump) resumes it (TCP backpressure meanwhile). */
static void bulk_pause(struct dst_conn *c)
{
	c->p->bulk_more = true;
	set_events(c, 0);
}

/*
 * Read and handle input: every buffered frame is handled before the next read (a frame
 * left in the buffer would get no EPOLLIN), at most READS_PER_EVENT reads so one busy
 * session cannot starve the others (epoll is level-triggered: it comes back; a ring
 * only once a RECV is armed again, which the last read may have found no room for).
 */
static void conn_input(struct dst_conn *c)
{
	unsigned budget = c->chan == TLM_CHAN_URGENT ? UINT_MAX : PAGES_PER_CALL;
	int rc;

	for (int reads = 0;; reads++) {
		ssize_t n;

		rc = handle_frames(c, budget);
		if (rc < 0)
			return;
		if (rc > 0) {
			if (c->chan == TLM_CHAN_BULK)
				bulk_pause(c);
			return;
		}
		if (reads == READS_PER_EVENT)
			break;
		n = c->uring ? dst_rx_fill(&c->rx, &c->c) : tlm_conn_read(&c->c);
		if (n == -EAGAIN)
			return;
		if (n <= 0) {
			conn_broken(c, n == 0 ? "closed by the source" : strerror((int)-n));
			return;
		}
		c->p->last_input_ns = tlm_now_ns();
	}
	rc = c->uring ? dst_rx_arm(&c->rx, &c->c) : 0;
	if (rc)
		conn_broken(c, strerror(-rc));
}

static void on_conn(struct tlm_evsrc *src, uint32_t events)
{
	struct dst_conn *c = TLM_EVSRC_OWNER(src, struct dst_conn, src);

	if (!can_take(c))
		return;
	if (events & EPOLLOUT)
		flush_backlog(c->p);
	if (events & (EPOLLIN | EPOLLHUP | EPOLLERR))
		conn_input(c);
	check_lost(c->p);
}

/* ---- the region's link (struct dst_link_ops) ------------------------------------------------------ */

static void link_connect(struct dst_link *l)
{
	peer_connect(peer_of(l));
}

static bool link_up(const struct dst_link *l)
{
	return peer_up(peer_of(l));
}

/* Pages stay in the backlog, in order, until urgent has room for them. */
static int link_demand(struct dst_link *l, uint64_t page, uint32_t count)
{
	struct dst_peer *p = peer_of(l);

	if (backlog_reserve(p, count) < 0)
		return -ENOMEM;
	for (uint32_t i = 0; i < count; i++)
		p->backlog[p->nbacklog++] = page + i;
	flush_backlog(p);
	return 0;
}

static size_t link_demand_room(const struct dst_link *l)
{
	const struct dst_peer *p = peer_of(l);
	struct tlm_msg m = { .type = TLM_MSG_DEMAND };

	if (!peer_up(p) || p->nbacklog)
		return 0;
	return tlm_conn_space(&p->urg.c) / tlm_proto_frame_size(&m);
}

/*
 * A demanded page may already sit in the bulk input buffer, behind frames not handled
 * yet (paused by the budget, or just received): the frames after the last one handled
 * are looked through without being consumed. Only PAGES frames are decoded (a CLASS_MAP
 * decode would reuse the run storage the map being applied may point into).
 */
static const uint8_t *link_buffered(const struct dst_link *l, uint64_t page, uint64_t *sum)
{
	const struct tlm_conn *c = &peer_of(l)->bulk.c;
	struct tlm_msg m;

	if (!peer_of(l)->bulk.up)
		return NULL;
	for (size_t off = c->rconsumed; off < c->rlen;) {
		const uint8_t *f = c->rbuf + off;
		ssize_t flen = tlm_proto_frame_len(f, c->rlen - off, NULL, 0);

		if (flen <= 0 || (size_t)flen > c->rlen - off)
			return NULL;
		off += (size_t)flen;
		if (tlm_le16_get(f + 4) != TLM_MSG_PAGES ||
		    tlm_proto_decode(f, (size_t)flen, &m, NULL, 0, NULL, 0) ||
		    page < m.u.pages.page || page - m.u.pages.page >= m.u.pages.count)
			continue;
		*sum = tlm_proto_pages_sum(&m, (uint32_t)(page - m.u.pages.page));
		return m.u.pages.data + (page - m.u.pages.page) * TLM_PROTO_PAGE_SIZE;
	}
	return NULL;
}

/* Resume bulk input stopped by its budget (or a yield); handle what it buffered. */
static bool link_pump(struct dst_link *l)
{
	struct dst_peer *p = peer_of(l);
	struct dst_conn *c = &p->bulk;

	if (!c->up) {
		check_lost(p);
		return p->bulk_more && c->up;
	}
	if (p->bulk_more) {
		p->bulk_more = false;
		conn_input(c);
	}
	if (c->up && !p->bulk_more)
		set_events(c, EPOLLIN);
	check_lost(p);
	return p->bulk_more;
}

static void link_tick(struct dst_link *l, uint64_t now_ns)
{
	peer_tick(peer_of(l), now_ns);
}

static void link_wire(const struct dst_link *l, uint64_t *in, uint64_t *out)
{
	const struct dst_peer *p = peer_of(l);

	*in = (p->urg.up ? p->urg.c.bytes_in : 0) + (p->bulk.up ? p->bulk.c.bytes_in : 0);
	*out = (p->urg.up ? p->urg.c.bytes_out : 0) + (p->bulk.up ? p->bulk.c.bytes_out : 0);
}

static void link_release(struct dst_link *l)
{
	struct dst_peer *p = peer_of(l);

	peer_close(p, false);
	if (p->job)
		p->job->p = NULL;        /* its event frees it */
	free(p->backlog);
	free(p);
}

static const struct dst_link_ops peer_ops = {
	.connect = link_connect,
	.up = link_up,
	.demand = link_demand,
	.demand_room = link_demand_room,
	.buffered = link_buffered,
	.pump = link_pump,
	.tick = link_tick,
	.wire = link_wire,
	.release = link_release,
};

int dst_peer_attach(struct dst_region *r, const struct dst_peer_cfg *cfg)
{
	struct dst_peer *p = calloc(1, sizeof(*p));

	if (!p)
		return -ENOMEM;
	p->link.ops = &peer_ops;
	p->r = r;
	p->cfg = cfg;
	conn_init(&p->urg, p, TLM_CHAN_URGENT);
	conn_init(&p->bulk, p, TLM_CHAN_BULK);
	r->link = &p->link;
	return 0;
}
