/*
 * dst_rx.c — bulk input through io_uring or read() (dst_rx.h).
 */
#include "dst_rx.h"

#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

#define RX_ENTRIES 4                     /* one RECV, one cancel */
#define RX_RECV    1                     /* user_data of the RECV */
#define RX_CANCEL  2

static const char *const mode_name[] = { "auto", "uring", "syscall" };

const char *dst_net_io_name(enum dst_net_io m)
{
	return mode_name[m];
}

int dst_net_io_parse(const char *s, enum dst_net_io *m)
{
	for (unsigned i = 0; i < sizeof(mode_name) / sizeof(mode_name[0]); i++)
		if (strcmp(s, mode_name[i]) == 0) {
			*m = (enum dst_net_io)i;
			return 0;
		}
	return -EINVAL;
}

/* What a bulk session will need: a ring with an eventfd, and IORING_OP_RECV. */
static int probe(char *why, size_t len)
{
	struct io_uring_probe *p;
	struct dst_rx rx;
	int rc = dst_rx_open(&rx);

	if (rc) {
		snprintf(why, len, "io_uring setup: %s", strerror(-rc));
		return rc;
	}
	p = io_uring_get_probe_ring(&rx.ring);
	if (!p || !io_uring_opcode_supported(p, IORING_OP_RECV)) {
		snprintf(why, len, "%s", p ? "IORING_OP_RECV not supported" :
			 "io_uring opcode probe failed");
		rc = -ENOTSUP;
	}
	io_uring_free_probe(p);
	dst_rx_close(&rx, NULL);
	return rc;
}

int dst_net_io_choose(enum dst_net_io want, enum dst_net_io *got, char *why, size_t len)
{
	why[0] = '\0';
	*got = DST_NET_IO_SYSCALL;
	if (want == DST_NET_IO_SYSCALL)
		return 0;
	if (probe(why, len) == 0)
		*got = DST_NET_IO_URING;
	else if (want == DST_NET_IO_URING)
		return -ENOTSUP;
	return 0;
}

int dst_rx_open(struct dst_rx *rx)
{
	int rc;

	*rx = (struct dst_rx){ .efd = -1 };
	rc = io_uring_queue_init(RX_ENTRIES, &rx->ring, 0);
	if (rc < 0)
		return rc;
	rx->efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	rc = rx->efd < 0 ? -errno : io_uring_register_eventfd(&rx->ring, rx->efd);
	if (rc < 0) {
		if (rx->efd >= 0)
			close(rx->efd);
		io_uring_queue_exit(&rx->ring);
		rx->efd = -1;
	}
	return rc;
}

/* The RECV writes into the input buffer: it must be over before the buffer goes. */
static void rx_cancel(struct dst_rx *rx)
{
	struct io_uring_sqe *sqe = io_uring_get_sqe(&rx->ring);
	struct io_uring_cqe *cqe;
	int rc;

	if (sqe) {
		io_uring_prep_cancel64(sqe, RX_RECV, 0);
		io_uring_sqe_set_data64(sqe, RX_CANCEL);
		io_uring_submit(&rx->ring);
	}
	while (rx->armed) {
		rc = io_uring_wait_cqe(&rx->ring, &cqe);
		if (rc == -EINTR)
			continue;
		if (rc)
			break;
		if (cqe->user_data == RX_RECV)
			rx->armed = false;
		io_uring_cqe_seen(&rx->ring, cqe);
	}
}

void dst_rx_close(struct dst_rx *rx, struct tlm_conn *c)
{
	if (rx->efd < 0)
		return;
	if (rx->armed)
		rx_cancel(rx);
	if (c)
		tlm_conn_received(c, 0);
	io_uring_queue_exit(&rx->ring);
	close(rx->efd);
	rx->efd = -1;
}

/* A RECV into c's free tail; -ENOBUFS when whole frames fill the buffer. */
static int rx_arm(struct dst_rx *rx, struct tlm_conn *c)
{
	struct io_uring_sqe *sqe;
	uint8_t *tail;
	size_t len;
	int rc = tlm_conn_rtail(c, true, &tail, &len);

	if (rc)
		return rc;
	/* Only now: an SQE taken is submitted by the next submit, prepared or not. */
	sqe = io_uring_get_sqe(&rx->ring);
	if (!sqe) {
		tlm_conn_received(c, 0);
		return -EBUSY;           /* cannot be: one RECV at a time */
	}
	io_uring_prep_recv(sqe, c->fd, tail, len, 0);
	io_uring_sqe_set_data64(sqe, RX_RECV);
	rc = io_uring_submit(&rx->ring);
	if (rc < 0) {
		tlm_conn_received(c, 0);
		return rc;
	}
	rx->armed = true;
	return 0;
}

int dst_rx_arm(struct dst_rx *rx, struct tlm_conn *c)
{
	return rx->armed ? 0 : rx_arm(rx, c);
}

/* The armed RECV's result, if it completed: bytes, 0 on EOF, -errno; else -EAGAIN. */
static ssize_t rx_reap(struct dst_rx *rx, struct tlm_conn *c)
{
	struct io_uring_cqe *cqe;
	uint64_t count;
	int res;

	if (read(rx->efd, &count, sizeof(count)) < 0 && errno != EAGAIN)
		return -errno;
	if (io_uring_peek_cqe(&rx->ring, &cqe) != 0)
		return -EAGAIN;
	res = cqe->res;
	io_uring_cqe_seen(&rx->ring, cqe);
	rx->armed = false;
	tlm_conn_received(c, res > 0 ? (size_t)res : 0);
	return res;
}

ssize_t dst_rx_fill(struct dst_rx *rx, struct tlm_conn *c)
{
	ssize_t n = -EAGAIN;
	int rc;

	if (rx->armed) {
		n = rx_reap(rx, c);
		if (n == -EINTR)
			n = -EAGAIN;     /* the RECV gave up: armed again below */
		if (n == 0 || (n < 0 && n != -EAGAIN))
			return n;
	}
	/* Armed again at once: the next bytes arrive while the caller handles these. */
	rc = dst_rx_arm(rx, c);
	if (rc < 0 && rc != -ENOBUFS)
		return rc;
	return n;
}
