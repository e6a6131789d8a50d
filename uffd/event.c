/*
 * event.c — reading and decoding userfaultfd events (struct uffd_msg).
 */
#include "tlm_uffd.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <string.h>
#include <unistd.h>

static void decode_pagefault(const struct uffd_msg *m, struct tlm_uffd_event *ev)
{
	uint64_t flags = m->arg.pagefault.flags;
	uint64_t ps = (uint64_t)sysconf(_SC_PAGESIZE);

	ev->type = TLM_UFFD_EV_PAGEFAULT;
	if (flags & UFFD_PAGEFAULT_FLAG_WRITE)
		ev->pf_flags |= TLM_UFFD_PF_WRITE;
	if (flags & UFFD_PAGEFAULT_FLAG_MINOR)
		ev->pf_flags |= TLM_UFFD_PF_MINOR;
	if (flags & UFFD_PAGEFAULT_FLAG_WP)
		ev->pf_flags |= TLM_UFFD_PF_WP;
	ev->ptid = m->arg.pagefault.feat.ptid;
	/* With UFFD_FEATURE_EXACT_ADDRESS the kernel leaves the low bits in. */
	ev->addr = m->arg.pagefault.address & ~(ps - 1);
}

int tlm_uffd_decode(const struct uffd_msg *m, struct tlm_uffd_event *ev)
{
	memset(ev, 0, sizeof(*ev));
	ev->fork_fd = -1;
	switch (m->event) {
	case UFFD_EVENT_PAGEFAULT:
		decode_pagefault(m, ev);
		return 0;
	case UFFD_EVENT_FORK:
		ev->type = TLM_UFFD_EV_FORK;
		ev->fork_fd = (int)m->arg.fork.ufd;
		return 0;
	case UFFD_EVENT_REMAP:
		ev->type = TLM_UFFD_EV_REMAP;
		ev->addr = m->arg.remap.from;
		ev->new_addr = m->arg.remap.to;
		ev->len = m->arg.remap.len;
		return 0;
	case UFFD_EVENT_REMOVE:
	case UFFD_EVENT_UNMAP:
		ev->type = m->event == UFFD_EVENT_REMOVE ? TLM_UFFD_EV_REMOVE : TLM_UFFD_EV_UNMAP;
		ev->addr = m->arg.remove.start;
		ev->end = m->arg.remove.end;
		return 0;
	}
	return -EPROTO;
}

/*
 * The kernel gives a blocking uffd no usable poll (always POLLERR) and its read sleeps,
 * so a uffd opened without O_NONBLOCK (or handed over by someone who did) is switched
 * to O_NONBLOCK the first time it is read here: reading must never sleep.
 */
static int ensure_nonblock(int fd)
{
	int fl = fcntl(fd, F_GETFL);

	if (fl < 0)
		return -errno;
	if (!(fl & O_NONBLOCK) && fcntl(fd, F_SETFL, fl | O_NONBLOCK) < 0)
		return -errno;
	return 0;
}

/* 0 when there is something to read, -EAGAIN when not, -errno on error. */
static int events_ready(int fd)
{
	struct pollfd pfd = { .fd = fd, .events = POLLIN };
	int rc = poll(&pfd, 1, 0);

	if (rc < 0)
		return -errno;
	if (rc == 0)
		return -EAGAIN;
	if (pfd.revents & POLLNVAL)
		return -EBADF;
	if (pfd.revents & POLLERR)
		return ensure_nonblock(fd);
	return 0;
}

int tlm_uffd_read_events(struct tlm_uffd *u, struct tlm_uffd_event *ev, int max)
{
	struct uffd_msg msg[32];
	ssize_t got;
	int n, i, rc;

	if (max <= 0 || !ev)
		return -EINVAL;
	if (u->fd < 0)
		return -EBADF;	/* poll() would silently skip a negative fd */
	if (max > (int)(sizeof(msg) / sizeof(msg[0])))
		max = (int)(sizeof(msg) / sizeof(msg[0]));
	rc = events_ready(u->fd);
	if (rc < 0)
		return rc;
	got = read(u->fd, msg, (size_t)max * sizeof(msg[0]));
	if (got < 0)
		return -errno;
	if (got == 0 || got % (ssize_t)sizeof(msg[0]))
		return -EPROTO;		/* the kernel only hands out whole messages */
	/* An event we do not know is skipped, never the whole batch: a page fault read in
	 * the same batch would otherwise be lost and its thread would wait forever. */
	n = 0;
	for (i = 0; i < (int)(got / (ssize_t)sizeof(msg[0])); i++)
		if (tlm_uffd_decode(&msg[i], &ev[n]) == 0)
			n++;
	return n ? n : -EPROTO;
}

const char *tlm_uffd_event_name(enum tlm_uffd_event_type t)
{
	switch (t) {
	case TLM_UFFD_EV_PAGEFAULT:	return "PAGEFAULT";
	case TLM_UFFD_EV_FORK:		return "FORK";
	case TLM_UFFD_EV_REMAP:		return "REMAP";
	case TLM_UFFD_EV_REMOVE:	return "REMOVE";
	case TLM_UFFD_EV_UNMAP:		return "UNMAP";
	}
	return "UNKNOWN";
}
