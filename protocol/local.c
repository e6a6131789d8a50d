/*
 * local.c — glue <-> tlm-uffd-server messages over AF_UNIX SOCK_SEQPACKET.
 *
 * One struct tlm_local_msg per packet, host byte order (same host, same build), with at
 * most one fd attached (SCM_RIGHTS). The packet boundary is the message boundary, so a
 * packet of any other size, or one the kernel had to cut (MSG_TRUNC / MSG_CTRUNC), is
 * refused as a whole. Received fds are close-on-exec; unexpected extra fds are closed so
 * a confused or hostile peer cannot make us leak descriptors.
 */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "tlm_proto.h"
#include "proto_int.h"

#define TLM_LOCAL_MAX_FDS 8     /* room to receive (and close) a few unexpected fds */


static bool has_nul(const char *s, size_t n)
{
	return memchr(s, '\0', n) != NULL;
}

static bool digest_zero(const uint8_t d[16])
{
	uint8_t acc = 0;

	for (int i = 0; i < 16; i++)
		acc |= d[i];
	return acc == 0;
}

static int check_region(const struct tlm_local_msg *m, char *err, size_t errlen)
{
	bool tmpl = m->flags & TLM_REGION_TEMPLATE;

	if (m->page_size != TLM_PROTO_PAGE_SIZE)
		return BAD("REGION: page size %u (only %u is supported)", m->page_size,
			   TLM_PROTO_PAGE_SIZE);
	if (!m->size || m->size % m->page_size)
		return BAD("REGION: size %llu is not a nonzero multiple of %u",
			   (unsigned long long)m->size, m->page_size);
	if (m->base % m->page_size || m->offset % m->page_size)
		return BAD("REGION: base 0x%llx / offset %llu not page aligned",
			   (unsigned long long)m->base, (unsigned long long)m->offset);
	if (m->base + m->size < m->base)
		return BAD("REGION: base + size overflows");
	if (!tlm_vmid_valid(m->vm_id))
		return BAD("REGION: invalid vm id \"%s\" (1..64 of [A-Za-z0-9._-])", m->vm_id);
	if (tmpl == digest_zero(m->digest))
		return BAD(tmpl ? "REGION: template flag set but digest is zero" :
			   "REGION: digest set but no template flag");
	return 0;
}

int tlm_local_check(const struct tlm_local_msg *m, size_t len, char *err, size_t errlen)
{
	if (len != sizeof(*m))
		return BAD("local message: %zu bytes, expected %zu", len, sizeof(*m));
	if (m->version != TLM_LOCAL_VERSION)
		return BAD("local message: version %u, expected %u", m->version,
			   TLM_LOCAL_VERSION);
	if (m->type < TLM_LOCAL_REGION || m->type > TLM_LOCAL_ERROR)
		return BAD("local message: unknown type %u", m->type);
	if (m->flags & ~(TLM_REGION_TEMPLATE | TLM_REGION_ARMED))
		return BAD("local message: unknown flags 0x%x", m->flags);
	if (!has_nul(m->vm_id, sizeof(m->vm_id)) || !has_nul(m->source, sizeof(m->source)) ||
	    !has_nul(m->text, sizeof(m->text)))
		return BAD("local message: string field not NUL-terminated");
	if (m->type == TLM_LOCAL_REGION)
		return check_region(m, err, errlen);
	return 0;
}

int tlm_local_send(int sock, const struct tlm_local_msg *m, int fd)
{
	union {
		struct cmsghdr h;
		char b[CMSG_SPACE(sizeof(int))];
	} cm;
	struct iovec iov = { .iov_base = (void *)m, .iov_len = sizeof(*m) };
	struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1 };
	ssize_t r;

	if (fd >= 0) {
		memset(&cm, 0, sizeof(cm));
		mh.msg_control = cm.b;
		mh.msg_controllen = sizeof(cm.b);
		cm.h.cmsg_level = SOL_SOCKET;
		cm.h.cmsg_type = SCM_RIGHTS;
		cm.h.cmsg_len = CMSG_LEN(sizeof(int));
		memcpy(CMSG_DATA(&cm.h), &fd, sizeof(int));
	}
	do
		r = sendmsg(sock, &mh, MSG_NOSIGNAL);
	while (r < 0 && errno == EINTR);
	if (r < 0)
		return -errno;
	return r == (ssize_t)sizeof(*m) ? 0 : -EIO;
}

/* Take the first received fd, close all others. */
static void collect_fds(struct msghdr *mh, int *fd)
{
	for (struct cmsghdr *c = CMSG_FIRSTHDR(mh); c; c = CMSG_NXTHDR(mh, c)) {
		size_t n;

		if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS)
			continue;
		n = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
		for (size_t i = 0; i < n; i++) {
			int f;

			memcpy(&f, CMSG_DATA(c) + i * sizeof(int), sizeof(int));
			if (*fd < 0)
				*fd = f;
			else
				close(f);
		}
	}
}

ssize_t tlm_local_recv(int sock, struct tlm_local_msg *m, int *fd)
{
	union {
		struct cmsghdr h;
		char b[CMSG_SPACE(TLM_LOCAL_MAX_FDS * sizeof(int))];
	} cm;
	struct iovec iov = { .iov_base = m, .iov_len = sizeof(*m) };
	struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1,
			     .msg_control = cm.b, .msg_controllen = sizeof(cm.b) };
	ssize_t r;

	*fd = -1;
	do
		r = recvmsg(sock, &mh, MSG_CMSG_CLOEXEC);
	while (r < 0 && errno == EINTR);
	if (r < 0)
		return -errno;
	collect_fds(&mh, fd);
	if (r == 0 && *fd < 0)
		return 0;
	if ((mh.msg_flags & (MSG_TRUNC | MSG_CTRUNC)) || r != (ssize_t)sizeof(*m)) {
		if (*fd >= 0)
			close(*fd);
		*fd = -1;
		return -EBADMSG;
	}
	return r;
}

int tlm_local_peer_ok(int sock, pid_t *pid, uid_t *uid)
{
	struct ucred cr;
	socklen_t len = sizeof(cr);

	if (getsockopt(sock, SOL_SOCKET, SO_PEERCRED, &cr, &len) < 0)
		return -errno;
	if (pid)
		*pid = cr.pid;
	if (uid)
		*uid = cr.uid;
	if (cr.uid != 0 && cr.uid != geteuid())
		return -EPERM;
	return 0;
}
