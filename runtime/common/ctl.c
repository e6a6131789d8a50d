#include "ctl.h"
#include "tlm_io.h"
#include "json.h"
#include "log.h"
#include "util.h"
#include "tlm_proto.h"

#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#define CTL_LINE_MAX 4096

int tlm_ctl_listen(const char *path, char *err, size_t errlen)
{
	int fd = tlm_unix_listen(path, SOCK_STREAM, err, errlen);

	if (fd >= 0)
		tlm_set_nonblock(fd, 1);
	return fd;
}

static void set_timeouts(int fd, int ms)
{
	struct timeval tv = { .tv_sec = ms / 1000, .tv_usec = (ms % 1000) * 1000 };

	setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
	setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
}

/* Read one newline-terminated line (bounded). Returns its length or -errno. */
static ssize_t read_line(int fd, char *line, size_t cap)
{
	size_t len = 0;

	while (len + 1 < cap) {
		ssize_t n = read(fd, line + len, cap - 1 - len);

		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			return -errno;
		if (n == 0)
			break;
		len += (size_t)n;
		if (memchr(line, '\n', len))
			break;
	}
	line[len] = '\0';
	line[strcspn(line, "\r\n")] = '\0';
	return (ssize_t)strlen(line);
}

void tlm_ctl_serve_one(int lfd, tlm_ctl_fn fn, void *ctx)
{
	char line[CTL_LINE_MAX];
	struct tlm_sbuf reply;
	pid_t pid = 0;
	uid_t uid = 0;
	int fd = accept4(lfd, NULL, NULL, SOCK_CLOEXEC);

	if (fd < 0)
		return;
	/* The socket is 0600 in a private directory; SO_PEERCRED checks it again, so a
	 * socket reached some other way (a wider directory, an inherited fd) still only
	 * serves root and our own uid. */
	if (tlm_local_peer_ok(fd, &pid, &uid) < 0) {
		log_warn("ctl: connection from pid %d uid %u refused: not root or our uid",
			 (int)pid, (unsigned)uid);
		close(fd);
		return;
	}
	/* Bound the time a slow client can hold the daemon's loop. */
	set_timeouts(fd, 1000);
	if (read_line(fd, line, sizeof(line)) <= 0) {
		close(fd);
		return;
	}
	tlm_sbuf_init(&reply);
	if (fn(ctx, line, &reply) < 0)
		log_debug("ctl: '%s' failed", line);
	if (reply.len == 0 || reply.p[reply.len - 1] != '\n')
		tlm_sbuf_putc(&reply, '\n');
	if (reply.oom)
		tlm_write_full(fd, "error: out of memory\n", 21);
	else
		tlm_write_full(fd, reply.p, reply.len);
	tlm_sbuf_fini(&reply);
	close(fd);
}

int tlm_ctl_request(const char *path, const char *cmd, struct tlm_sbuf *reply, int timeout_ms)
{
	char err[256], buf[4096];
	int fd, rc;

	fd = tlm_unix_connect(path, SOCK_STREAM, err, sizeof(err));
	if (fd < 0)
		return fd;
	/* Commands may carry paths and addresses: only a daemon run by root or by us. */
	rc = tlm_local_peer_ok(fd, NULL, NULL);
	if (rc < 0) {
		close(fd);
		return rc;
	}
	set_timeouts(fd, timeout_ms);
	rc = tlm_write_full(fd, cmd, strlen(cmd));
	if (rc == 0)
		rc = tlm_write_full(fd, "\n", 1);
	shutdown(fd, SHUT_WR);
	while (rc == 0) {
		ssize_t n = read(fd, buf, sizeof(buf));

		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			rc = -errno;
		if (n <= 0)
			break;
		tlm_sbuf_printf(reply, "%.*s", (int)n, buf);
	}
	close(fd);
	return rc;
}
