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
 * Output: wbuf[woff, wlen) is pending; frames are encoded straight into wbuf and
 * tlm_conn_queue refuses (-ENOBUFS) what does not fit, so memory stays bounded and the
 * caller decides what to drop or postpone (e.g. stop reading bulk pages).
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "tlm_proto.h"

#define TLM_CONN_RCAP (TLM_PROTO_HDR_SIZE + TLM_PROTO_MAX_PAYLOAD)
#define TLM_CONN_WCAP_DEFAULT (2 * TLM_CONN_RCAP)

/* wcap 0 picks a default that fits two maximal frames. */
int tlm_conn_init(struct tlm_conn *c, int fd, size_t wcap)
{
	memset(c, 0, sizeof(*c));
	c->fd = fd;
	c->rcap = TLM_CONN_RCAP;
	c->wcap = wcap ? wcap : TLM_CONN_WCAP_DEFAULT;
	c->max_runs = TLM_PROTO_MAX_RUNS;
	c->rbuf = malloc(c->rcap);
	c->wbuf = malloc(c->wcap);
	c->runs = calloc(c->max_runs, sizeof(*c->runs));
	if (!c->rbuf || !c->wbuf || !c->runs) {
		free(c->rbuf);
		free(c->wbuf);
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
	return c->wlen - c->woff;
}

size_t tlm_conn_space(const struct tlm_conn *c)
{
	return c->wcap - tlm_conn_pending(c);
}

int tlm_conn_queue(struct tlm_conn *c, const struct tlm_msg *m)
{
	size_t need = tlm_proto_frame_size(m);
	ssize_t n;

	if (need > tlm_conn_space(c))
		return -ENOBUFS;
	if (need > c->wcap - c->wlen) {
		memmove(c->wbuf, c->wbuf + c->woff, c->wlen - c->woff);
		c->wlen -= c->woff;
		c->woff = 0;
	}
	n = tlm_proto_encode(m, c->wbuf + c->wlen, c->wcap - c->wlen);
	if (n < 0)
		return (int)n;
	c->wlen += n;
	return 0;
}

int tlm_conn_flush(struct tlm_conn *c)
{
	while (c->woff < c->wlen) {
		ssize_t r = send(c->fd, c->wbuf + c->woff, c->wlen - c->woff, MSG_NOSIGNAL);

		if (r < 0 && errno == ENOTSOCK)
			r = write(c->fd, c->wbuf + c->woff, c->wlen - c->woff);
		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0)
			return errno == EWOULDBLOCK ? -EAGAIN : -errno;
		c->woff += r;
		c->bytes_out += r;
	}
	c->woff = c->wlen = 0;
	return 0;
}
