/* io.c — whole-buffer reads and writes with a deadline (tlm_io.h). */
#include "tlm_io.h"

#include <errno.h>
#include <poll.h>
#include <stdbool.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static uint64_t now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

uint64_t tlm_io_deadline(int timeout_ms)
{
	return timeout_ms > 0 ? now_ns() + (uint64_t)timeout_ms * 1000000ull : 0;
}

int tlm_io_wait(int fd, short events, uint64_t deadline)
{
	struct pollfd pfd = { .fd = fd, .events = events };
	int ms = -1, r;

	if (deadline) {
		uint64_t now = now_ns();

		if (now >= deadline)
			return -ETIMEDOUT;
		ms = (int)((deadline - now + 999999) / 1000000);
	}
	r = poll(&pfd, 1, ms);
	if (r < 0)
		return errno == EINTR ? 0 : -errno;
	return r == 0 ? -ETIMEDOUT : 0;
}

/* One step of a transfer: >= 0 bytes moved, or -errno (EINTR/EAGAIN handled here). */
static ssize_t step(int fd, void *p, size_t len, bool rd, bool *sock, uint64_t deadline)
{
	for (;;) {
		ssize_t r;

		if (rd)
			r = read(fd, p, len);
		else if (*sock)
			r = send(fd, p, len, MSG_NOSIGNAL | MSG_DONTWAIT);
		else
			r = write(fd, p, len);
		if (r >= 0)
			return r;
		if (errno == ENOTSOCK && !rd && *sock) {
			*sock = false;
			continue;
		}
		if (errno == EINTR)
			continue;
		if (errno != EAGAIN)
			return -errno;
		r = tlm_io_wait(fd, rd ? POLLIN : POLLOUT, deadline);
		if (r < 0)
			return r;
	}
}

static int transfer(int fd, char *p, size_t len, bool rd, uint64_t deadline)
{
	bool sock = true;

	while (len) {
		ssize_t r;

		if (deadline) {
			int w = tlm_io_wait(fd, rd ? POLLIN : POLLOUT, deadline);

			if (w < 0)
				return w;
		}
		r = step(fd, p, len, rd, &sock, deadline);
		if (r < 0)
			return (int)r;
		if (r == 0 && rd)
			return -ECONNRESET;
		p += r;
		len -= (size_t)r;
	}
	return 0;
}

int tlm_io_read(int fd, void *buf, size_t len, uint64_t deadline)
{
	return transfer(fd, buf, len, true, deadline);
}

int tlm_io_write(int fd, const void *buf, size_t len, uint64_t deadline)
{
	return transfer(fd, (char *)buf, len, false, deadline);
}
