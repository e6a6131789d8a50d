/*
 * conn.c — buffered non-blocking connection for the daemons' event loops.
 *
 * Input: rbuf[0, rlen) holds received bytes; rbuf[0, rconsumed) are frames already
 * returned by tlm_conn_next. The bytes of the last returned frame stay where they are until
 * the next tlm_conn_next / tlm_conn_read call, so a PAGE's data pointer can be used
 * directly (no copy). Compaction is lazy: only a partial frame at the end of the buffer is
 * moved to the front, when tlm_conn_next runs out of whole frames, unless the free tail
 * is pinned: lent to an asynchronous receiver (io_uring) that writes it in place.
 *
 * Output: a ring of segments in stream order. A buffered segment is the next len bytes
 * of wbuf[woff, wlen), where frames are encoded (consecutive ones share a segment); a
 * referenced segment is a PAGES frame's page data in the caller's memory (its header and
 * sums are buffered just before it). Flush hands up to IOV_MAX segments to one sendmsg
 * and trims what was written off the head segments, so a partial write resumes exactly.
 * wcap bounds buffered plus referenced bytes, and tlm_conn_queue* refuse (-ENOBUFS) what
 * does not fit, so memory stays bounded and the caller decides what to drop or postpone
 * (e.g. stop reading bulk pages). The ring has room for every frame that fits in wcap.
 */
#include <errno.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#include "tlm_proto.h"

#define TLM_CONN_RCAP (TLM_PROTO_HDR_SIZE + TLM_PROTO_MAX_PAYLOAD)
#define TLM_CONN_WCAP_DEFAULT (2 * TLM_CONN_RCAP)
/* The smallest frame with referenced data (PAGES of one page): it takes 2 segments. */
#define TLM_CONN_REF_MIN (TLM_PROTO_HDR_SIZE + 16 + 8 + TLM_PROTO_PAGE_SIZE)

/* wcap 0 picks a default that fits two maximal frames. */
int tlm_conn_init(struct tlm_conn *c, int fd, size_t wcap)
{
	memset(c, 0, sizeof(*c));
	c->fd = fd;
	c->rcap = TLM_CONN_RCAP;
	c->wcap = wcap ? wcap : TLM_CONN_WCAP_DEFAULT;
	c->max_runs = TLM_PROTO_MAX_RUNS;
	/* Every referenced frame wcap holds, a buffered tail and a partly written head. */
	c->seg_cap = 2 * (unsigned)(c->wcap / TLM_CONN_REF_MIN) + 4;
	c->rbuf = malloc(c->rcap);
	c->wbuf = malloc(c->wcap);
	c->segs = calloc(c->seg_cap, sizeof(*c->segs));
	c->runs = calloc(c->max_runs, sizeof(*c->runs));
	if (!c->rbuf || !c->wbuf || !c->segs || !c->runs) {
		free(c->rbuf);
		free(c->wbuf);
		free(c->segs);
		free(c->runs);
		memset(c, 0, sizeof(*c));
		c->fd = -1;
		return -ENOMEM;
	}
	return 0;
}

void tlm_conn_fini(struct tlm_conn *c)
{
	free(c->rbuf);
	free(c->wbuf);
	free(c->segs);
	free(c->runs);
	if (c->fd >= 0)
		close(c->fd);
	memset(c, 0, sizeof(*c));
	c->fd = -1;
}

/* Drop consumed frames: move the unconsumed tail to the front (never under a pinned
 * tail: the kernel may be writing it at its place). */
static void conn_compact(struct tlm_conn *c)
{
	if (!c->rconsumed || c->rpinned)
		return;
	if (c->rconsumed < c->rlen)
		memmove(c->rbuf, c->rbuf + c->rconsumed, c->rlen - c->rconsumed);
	c->rlen -= c->rconsumed;
	c->rconsumed = 0;
}

int tlm_conn_rtail(struct tlm_conn *c, bool pin, uint8_t **tail, size_t *len)
{
	conn_compact(c);
	/* Full of unconsumed whole frames: the caller must drain tlm_conn_next first. */
	if (c->rlen == c->rcap)
		return -ENOBUFS;
	*tail = c->rbuf + c->rlen;
	*len = c->rcap - c->rlen;
	c->rpinned = pin;
	return 0;
}

void tlm_conn_received(struct tlm_conn *c, size_t n)
{
	c->rlen += n;
	c->bytes_in += n;
	c->rpinned = false;
}

ssize_t tlm_conn_read(struct tlm_conn *c)
{
	uint8_t *tail;
	size_t len;
	ssize_t r;
	int rc = tlm_conn_rtail(c, false, &tail, &len);

	if (rc)
		return rc;
	do
		r = read(c->fd, tail, len);
	while (r < 0 && errno == EINTR);
	if (r < 0)
		return errno == EWOULDBLOCK ? -EAGAIN : -errno;
	tlm_conn_received(c, (size_t)r);
	return r;
}

int tlm_conn_next(struct tlm_conn *c, struct tlm_msg *m, char *err, size_t errlen)
{
	const uint8_t *p = c->rbuf + c->rconsumed;
	size_t avail = c->rlen - c->rconsumed;
	ssize_t flen;
	int ret;

	flen = tlm_proto_frame_len(p, avail, err, errlen);
	if (flen < 0)
		return (int)flen;
	if (flen == 0 || (size_t)flen > avail) {
		conn_compact(c);        /* nothing is held any more: make room */
		return 0;
	}
	ret = tlm_proto_decode(p, flen, m, c->runs, c->max_runs, err, errlen);
	if (ret)
		return ret;
	c->rconsumed += flen;
	return 1;
}

size_t tlm_conn_pending(const struct tlm_conn *c)
{
	return c->wlen - c->woff + c->wref;
}

size_t tlm_conn_space(const struct tlm_conn *c)
{
	return c->wcap - tlm_conn_pending(c);
}

static struct tlm_conn_seg *conn_seg(const struct tlm_conn *c, unsigned i)
{
	return &c->segs[(c->seg_head + i) % c->seg_cap];
}

/* Free ring slots for buffered bytes and, with ref, a referenced segment after them. */
static bool conn_slots(const struct tlm_conn *c, bool ref)
{
	bool merge = c->seg_n && !conn_seg(c, c->seg_n - 1)->ref;

	return c->seg_cap - c->seg_n >= (merge ? 0u : 1u) + (ref ? 1u : 0u);
}

static void conn_push(struct tlm_conn *c, const uint8_t *ref, size_t len)
{
	struct tlm_conn_seg *last = c->seg_n ? conn_seg(c, c->seg_n - 1) : NULL;

	if (!ref && last && !last->ref) {
		last->len += len;
		return;
	}
	*conn_seg(c, c->seg_n++) = (struct tlm_conn_seg){ ref, len };
	if (ref)
		c->wref += len;
}

/* Encode m (head only if ref) into wbuf and queue it. */
static int conn_enqueue(struct tlm_conn *c, const struct tlm_msg *m, bool ref)
{
	size_t need = ref ? tlm_proto_head_size(m) : tlm_proto_frame_size(m);
	ssize_t n;

	if (tlm_proto_frame_size(m) > tlm_conn_space(c) || !conn_slots(c, ref))
		return -ENOBUFS;
	if (need > c->wcap - c->wlen) {
		memmove(c->wbuf, c->wbuf + c->woff, c->wlen - c->woff);
		c->wlen -= c->woff;
		c->woff = 0;
	}
	n = ref ? tlm_proto_encode_head(m, c->wbuf + c->wlen, c->wcap - c->wlen) :
		  tlm_proto_encode(m, c->wbuf + c->wlen, c->wcap - c->wlen);
	if (n < 0)
		return (int)n;
	c->wlen += n;
	conn_push(c, NULL, n);
	if (ref)
		conn_push(c, m->u.pages.data, tlm_proto_frame_size(m) - n);
	return 0;
}

int tlm_conn_queue(struct tlm_conn *c, const struct tlm_msg *m)
{
	return conn_enqueue(c, m, false);
}

int tlm_conn_queue_ref(struct tlm_conn *c, const struct tlm_msg *m)
{
	return m->type == TLM_MSG_PAGES ? conn_enqueue(c, m, true) : -EINVAL;
}

/* The pending segments from the head, at most max, as iovecs. */
static int conn_iov(const struct tlm_conn *c, struct iovec *iov, int max)
{
	size_t off = c->woff;
	int n = 0;

	for (; (unsigned)n < c->seg_n && n < max; n++) {
		const struct tlm_conn_seg *g = conn_seg(c, n);

		iov[n].iov_base = (void *)(g->ref ? g->ref : c->wbuf + off);
		iov[n].iov_len = g->len;
		if (!g->ref)
			off += g->len;
	}
	return n;
}

/* r bytes were written: trim them off the head segments. */
static void conn_advance(struct tlm_conn *c, size_t r)
{
	c->bytes_out += r;
	while (r) {
		struct tlm_conn_seg *g = conn_seg(c, 0);
		size_t k = r < g->len ? r : g->len;

		if (g->ref) {
			g->ref += k;
			c->wref -= k;
		} else {
			c->woff += k;
		}
		g->len -= k;
		r -= k;
		if (!g->len) {
			c->seg_head = (c->seg_head + 1) % c->seg_cap;
			c->seg_n--;
		}
	}
}

int tlm_conn_flush(struct tlm_conn *c)
{
	struct iovec iov[IOV_MAX];

	while (c->seg_n) {
		struct msghdr mh = { .msg_iov = iov, .msg_iovlen = conn_iov(c, iov, IOV_MAX) };
		ssize_t r = sendmsg(c->fd, &mh, MSG_NOSIGNAL);

		if (r < 0 && errno == ENOTSOCK)
			r = writev(c->fd, iov, (int)mh.msg_iovlen);
		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0)
			return errno == EWOULDBLOCK ? -EAGAIN : -errno;
		conn_advance(c, (size_t)r);
	}
	c->woff = c->wlen = 0;
	return 0;
}
