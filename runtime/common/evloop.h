/*
 * evloop.h — the daemons' event-loop skeleton: one epoll instance, level-triggered, and
 * event sources that carry their own callback (CRIU's epoll_rfd is the model), so the
 * loop needs no switch over kinds and knows nothing of what it dispatches.
 *
 *     struct tlm_evloop l;
 *     struct tlm_evsrc timer = { .fd = tfd, .on_event = on_timer, .prio = 3 };
 *     tlm_evloop_init(&l);
 *     tlm_evloop_add(&l, &timer, EPOLLIN);
 *     while (!stop)
 *             tlm_evloop_run_once(&l, busy ? 0 : -1);
 *
 * Order: the events read by one epoll_wait are dispatched by priority (prio 0 first,
 * e.g. guest faults before network input before housekeeping), in kernel order within a
 * priority. A source deleted while the iteration runs gets none of its events that are
 * still pending (its owner may free it right after tlm_evloop_del).
 *
 * Owners embed struct tlm_evsrc and get back to themselves in the callback with
 * container_of-style arithmetic (TLM_EVSRC_OWNER).
 */
#ifndef TLM_EVLOOP_H
#define TLM_EVLOOP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define TLM_EVLOOP_PRIOS 4               /* priorities 0 (first) .. 3 */
#define TLM_EVLOOP_BATCH 64              /* events read per iteration at most */

struct tlm_evsrc;
typedef void (*tlm_evsrc_fn)(struct tlm_evsrc *src, uint32_t events);

struct tlm_evsrc {
	int fd;
	tlm_evsrc_fn on_event;           /* called with the EPOLL* bits that are ready */
	unsigned prio;                   /* < TLM_EVLOOP_PRIOS */
	uint32_t events;                 /* current interest; 0 while not watched */
	bool watched;
};

/* The struct embedding src as its member `field`. */
#define TLM_EVSRC_OWNER(src, type, field) \
	((type *)(void *)((char *)(src) - offsetof(type, field)))

struct tlm_evloop {
	int epfd;                        /* -1 before init / after fini */
	int nready;                      /* events of the running iteration */
	struct tlm_evsrc *ready[TLM_EVLOOP_BATCH];
	uint32_t ready_events[TLM_EVLOOP_BATCH];
};

int tlm_evloop_init(struct tlm_evloop *l);                 /* 0 or -errno */
void tlm_evloop_fini(struct tlm_evloop *l);

/* Watch src->fd for events (EPOLLIN, EPOLLOUT...). 0 or -errno (-EINVAL: bad prio). */
int tlm_evloop_add(struct tlm_evloop *l, struct tlm_evsrc *src, uint32_t events);
/* Change the interest (0: keep the fd but report nothing). No syscall when unchanged. */
int tlm_evloop_mod(struct tlm_evloop *l, struct tlm_evsrc *src, uint32_t events);
/* Stop watching; always before closing the fd (another process may hold the same file,
 * and the epoll entry would outlive our fd). No-op when not watched. */
void tlm_evloop_del(struct tlm_evloop *l, struct tlm_evsrc *src);

/* Wait up to timeout_ms (-1: no limit, 0: poll) and dispatch what is ready. Returns the
 * number of events read (0 on timeout or EINTR) or -errno. */
int tlm_evloop_run_once(struct tlm_evloop *l, int timeout_ms);

/* An event is ready: long background work should return to the loop. */
bool tlm_evloop_should_yield(struct tlm_evloop *l);

#endif /* TLM_EVLOOP_H */
