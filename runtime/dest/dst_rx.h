/*
 * dst_rx.h — how tlm-uffd-server receives a bulk session's input: read() when the event
 * loop says the socket is readable, or an io_uring IORING_OP_RECV kept armed into the free
 * tail of the session's input buffer (tlm_conn_rtail), so that the stream lands in the
 * buffer while the loop places pages and no read() is issued per batch.
 *
 * The mode is chosen once at start (--net-io): auto probes io_uring (a ring can be set up,
 * IORING_OP_RECV is known, an eventfd takes its completions) and falls back to read()
 * with the reason logged; kernel.io_uring_disabled or a seccomp filter make it fail.
 * read() is the default: on bench-runtime.sh the ring was not faster (the RECV's copy
 * runs as task work on the loop's own thread, like read()'s), and it cost more CPU.
 *
 * One small ring per bulk session (its own struct dst_rx). Its completions signal an
 * eventfd, which the event loop watches in place of the socket. While a RECV is armed the
 * input buffer's tail is pinned (never compacted); closing cancels the RECV and waits for
 * it before the buffer may be freed.
 */
#ifndef TLM_DST_RX_H
#define TLM_DST_RX_H

#include <liburing.h>
#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>

#include "tlm_proto.h"

enum dst_net_io { DST_NET_IO_AUTO, DST_NET_IO_URING, DST_NET_IO_SYSCALL };

/* "auto", "uring", "syscall"; parse returns -EINVAL for anything else. */
const char *dst_net_io_name(enum dst_net_io m);
int dst_net_io_parse(const char *s, enum dst_net_io *m);

/* The mode to run with: want, or for auto the probe's result. -ENOTSUP when uring is
 * wanted and unavailable; why says what the probe found (empty when it passed). */
int dst_net_io_choose(enum dst_net_io want, enum dst_net_io *got, char *why, size_t len);

struct dst_rx {
	struct io_uring ring;
	int efd;                         /* the ring's completions (-1: closed) */
	bool armed;                      /* a RECV into the input buffer's tail is in flight */
};

/* 0 or -errno. */
int dst_rx_open(struct dst_rx *rx);
/* Cancel an armed RECV (waiting for it), then free the ring. c may be freed after. */
void dst_rx_close(struct dst_rx *rx, struct tlm_conn *c);
/* tlm_conn_read's contract through the ring: take a completed RECV (>0 bytes, 0 on EOF,
 * -errno), else -EAGAIN; then arm the next one into c's free tail if it has room. */
ssize_t dst_rx_fill(struct dst_rx *rx, struct tlm_conn *c);
/* Arm a RECV unless one is: a ring signals nothing without one, so input must not be left
 * without one once its frames are handled. 0, -ENOBUFS (no room: whole frames fill the
 * buffer), or -errno. */
int dst_rx_arm(struct dst_rx *rx, struct tlm_conn *c);

#endif /* TLM_DST_RX_H */
