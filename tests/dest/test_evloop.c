/* Unit tests for runtime/common/evloop: dispatch by priority, a source deleted while the
 * iteration runs gets no pending event, interest changes, should_yield. Eventfds stand
 * in for sockets: readable once written, until read. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include "tlm_test.h"
#include "evloop.h"

struct probe {
	struct tlm_evsrc src;
	struct tlm_evloop *l;
	int *log, *nlog;                 /* dispatch order, shared by the probes */
	int id;
	struct probe *victim;            /* deleted by this probe's callback */
	uint32_t got;
};

static void on_probe(struct tlm_evsrc *src, uint32_t events)
{
	struct probe *p = TLM_EVSRC_OWNER(src, struct probe, src);
	uint64_t v;

	p->got = events;
	p->log[(*p->nlog)++] = p->id;
	if (read(src->fd, &v, sizeof(v)) != sizeof(v))
		fail_msg("probe %d: eventfd not readable", p->id);
	if (p->victim)
		tlm_evloop_del(p->l, &p->victim->src);
}

static void probe_init(struct probe *p, struct tlm_evloop *l, int id, unsigned prio,
		       int *log, int *nlog)
{
	*p = (struct probe){ .l = l, .log = log, .nlog = nlog, .id = id };
	p->src = (struct tlm_evsrc){ .fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC),
				     .on_event = on_probe, .prio = prio };
	assert_true(p->src.fd >= 0);
	assert_int_equal(tlm_evloop_add(l, &p->src, EPOLLIN), 0);
}

static void kick(struct probe *p)
{
	uint64_t one = 1;

	assert_int_equal(write(p->src.fd, &one, sizeof(one)), sizeof(one));
}

static void test_priority_order(void **state)
{
	struct tlm_evloop l;
	struct probe p[4];
	int log[8], nlog = 0;

	assert_int_equal(tlm_evloop_init(&l), 0);
	for (int i = 0; i < 4; i++)       /* ids 0..3 get priorities 3..0 */
		probe_init(&p[i], &l, i, 3 - (unsigned)i, log, &nlog);
	assert_false(tlm_evloop_should_yield(&l));
	for (int i = 0; i < 4; i++)
		kick(&p[i]);
	assert_true(tlm_evloop_should_yield(&l));
	assert_int_equal(tlm_evloop_run_once(&l, 0), 4);
	assert_int_equal(nlog, 4);
	for (int i = 0; i < 4; i++)
		assert_int_equal(log[i], 3 - i);
	assert_int_equal(p[0].got, EPOLLIN);
	assert_false(tlm_evloop_should_yield(&l));
	assert_int_equal(tlm_evloop_run_once(&l, 0), 0);   /* nothing ready: timeout */
	for (int i = 0; i < 4; i++) {
		tlm_evloop_del(&l, &p[i].src);
		close(p[i].src.fd);
	}
	tlm_evloop_fini(&l);
}

static void test_del_drops_pending(void **state)
{
	struct tlm_evloop l;
	struct probe a, b;
	int log[4], nlog = 0;

	assert_int_equal(tlm_evloop_init(&l), 0);
	probe_init(&a, &l, 1, 0, log, &nlog);
	probe_init(&b, &l, 2, 1, log, &nlog);
	a.victim = &b;                   /* a runs first and deletes b */
	kick(&a);
	kick(&b);
	assert_int_equal(tlm_evloop_run_once(&l, 0), 2);
	assert_int_equal(nlog, 1);
	assert_int_equal(log[0], 1);
	assert_false(b.src.watched);
	tlm_evloop_del(&l, &b.src);      /* twice: no-op */
	tlm_evloop_del(&l, &a.src);
	close(a.src.fd);
	close(b.src.fd);
	tlm_evloop_fini(&l);
}

static void test_mod_and_bad_prio(void **state)
{
	struct tlm_evloop l;
	struct probe a;
	int log[4], nlog = 0;
	struct tlm_evsrc bad = { .fd = 0, .on_event = on_probe, .prio = TLM_EVLOOP_PRIOS };

	assert_int_equal(tlm_evloop_init(&l), 0);
	assert_int_equal(tlm_evloop_add(&l, &bad, EPOLLIN), -EINVAL);
	probe_init(&a, &l, 1, 0, log, &nlog);
	kick(&a);
	assert_int_equal(tlm_evloop_mod(&l, &a.src, 0), 0);     /* paused: not reported */
	assert_int_equal(a.src.events, 0);
	assert_false(tlm_evloop_should_yield(&l));
	assert_int_equal(tlm_evloop_run_once(&l, 0), 0);
	assert_int_equal(tlm_evloop_mod(&l, &a.src, EPOLLIN), 0);
	assert_int_equal(tlm_evloop_mod(&l, &a.src, EPOLLIN), 0);  /* unchanged */
	assert_int_equal(tlm_evloop_run_once(&l, -1), 1);
	assert_int_equal(nlog, 1);
	tlm_evloop_del(&l, &a.src);
	assert_int_equal(tlm_evloop_mod(&l, &a.src, EPOLLIN), -ENOENT);
	close(a.src.fd);
	tlm_evloop_fini(&l);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_priority_order),
		cmocka_unit_test(test_del_drops_pending),
		cmocka_unit_test(test_mod_and_bad_prio),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
