/*
 * tlm_io.h — whole-buffer reads and writes with an optional deadline: the one copy of
 * these loops (handshakes, control sockets, key and template files, tests).
 *
 *     uint64_t dl = tlm_io_deadline(3000);           // 3 s from now; 0 = no deadline
 *     rc = tlm_io_write(fd, buf, len, dl);            // 0, -ETIMEDOUT or -errno
 *     rc = tlm_io_read(fd, buf, len, dl);             // -ECONNRESET: EOF before len
 *
 * The fd may be blocking or not, a socket or not: with a deadline every step polls
 * first; EINTR is retried, EAGAIN waits. Sockets are written with MSG_NOSIGNAL (a
 * closed peer is -EPIPE, never SIGPIPE).
 */
#ifndef TLM_IO_H
#define TLM_IO_H

#include <stddef.h>
#include <stdint.h>

/* CLOCK_MONOTONIC ns timeout_ms from now; 0 (no deadline) when timeout_ms <= 0. */
uint64_t tlm_io_deadline(int timeout_ms);
/* Wait until fd is ready for events (POLLIN/POLLOUT) or the deadline passes. */
int tlm_io_wait(int fd, short events, uint64_t deadline);
int tlm_io_read(int fd, void *buf, size_t len, uint64_t deadline);
int tlm_io_write(int fd, const void *buf, size_t len, uint64_t deadline);

/* Without a deadline. */
static inline int tlm_read_full(int fd, void *buf, size_t len)
{
	return tlm_io_read(fd, buf, len, 0);
}

static inline int tlm_write_full(int fd, const void *buf, size_t len)
{
	return tlm_io_write(fd, buf, len, 0);
}

#endif
