/*
 * evloop.c — the event-loop skeleton (evloop.h).
 *
 * The events of one epoll_wait are kept in the loop (not on the caller's stack) so that
 * tlm_evloop_del can forget the pending ones of a source whose owner is about to free it.
 */
#include "evloop.h"

#include <errno.h>
#include <sys/epoll.h>
#include <unistd.h>

int tlm_evloop_init(struct tlm_evloop *l)
{
	*l = (struct tlm_evloop){ .epfd = epoll_create1(EPOLL_CLOEXEC) };
	return l->epfd < 0 ? -errno : 0;
}

void tlm_evloop_fini(struct tlm_evloop *l)
{
	if (l->epfd >= 0)
		close(l->epfd);
	l->epfd = -1;
	l->nready = 0;
}

static int ctl(struct tlm_evloop *l, int op, struct tlm_evsrc *src, uint32_t events)
{
	struct epoll_event e = { .events = events, .data.ptr = src };

	return epoll_ctl(l->epfd, op, src->fd, &e) < 0 ? -errno : 0;
}

int tlm_evloop_add(struct tlm_evloop *l, struct tlm_evsrc *src, uint32_t events)
{
	int rc;

	if (src->prio >= TLM_EVLOOP_PRIOS)
		return -EINVAL;         /* it would never be dispatched */
	rc = ctl(l, EPOLL_CTL_ADD, src, events);
	if (rc)
		return rc;
	src->watched = true;
	src->events = events;
	return 0;
}

int tlm_evloop_mod(struct tlm_evloop *l, struct tlm_evsrc *src, uint32_t events)
{
	int rc;

	if (!src->watched)
		return -ENOENT;
	if (src->events == events)
		return 0;
	rc = ctl(l, EPOLL_CTL_MOD, src, events);
	if (!rc)
		src->events = events;
	return rc;
}

void tlm_evloop_del(struct tlm_evloop *l, struct tlm_evsrc *src)
{
	if (!src->watched)
		return;
	epoll_ctl(l->epfd, EPOLL_CTL_DEL, src->fd, NULL);
	src->watched = false;
	src->events = 0;
	for (int i = 0; i < l->nready; i++)
		if (l->ready[i] == src)
			l->ready[i] = NULL;
}

int tlm_evloop_run_once(struct tlm_evloop *l, int timeout_ms)
{
	struct epoll_event ev[TLM_EVLOOP_BATCH];
	int n = epoll_wait(l->epfd, ev, TLM_EVLOOP_BATCH, timeout_ms);

	if (n < 0)
		return errno == EINTR ? 0 : -errno;
	for (int i = 0; i < n; i++) {
		l->ready[i] = ev[i].data.ptr;
		l->ready_events[i] = ev[i].events;
	}
	l->nready = n;
	for (unsigned prio = 0; prio < TLM_EVLOOP_PRIOS; prio++)
		for (int i = 0; i < n; i++) {
			struct tlm_evsrc *src = l->ready[i];

			if (src && src->prio == prio) {
				l->ready[i] = NULL;      /* dispatched once */
				src->on_event(src, l->ready_events[i]);
			}
		}
	l->nready = 0;
	return n;
}

bool tlm_evloop_should_yield(struct tlm_evloop *l)
{
	struct epoll_event e;

	return epoll_wait(l->epfd, &e, 1, 0) > 0;
}
