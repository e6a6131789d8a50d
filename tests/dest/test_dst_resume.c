/*
 * The destination region across sessions and to the end, against a fake uffd and link
 * (dest_fake.h): pages requested on a session that broke are demanded again on the next,
 * a session after the whole class map came (`resumed`) demands everything missing at
 * once and completes without DONE, with a bounded number in flight; after DONE the
 * finish sweep demands what the stream skipped, as the link has room; completion.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <string.h>

#include "dest_fake.h"
#include "dst_fetch.h"
#include "dst_place.h"
#include "tlm_test.h"

static const struct tlm_run all_data64 = { TLM_CLASS_DATA, 64, 0 };

static void pages(struct fx *x, uint64_t first, uint64_t end, unsigned flags)
{
	for (uint64_t p = first; p < end; p++)
		assert_int_equal(fx_page(x, p, flags), 0);
}

static void assert_complete(const struct fx *x, uint64_t npages)
{
	assert_int_equal(x->r->phase, DST_COMPLETE);
	assert_string_equal(dst_region_phase_name(x->r), "complete");
	assert_int_equal(x->r->n_present + x->r->n_removed, npages);
	assert_int_equal(fk_count(&x->u, FK_UNREG), 1);
	assert_int_equal(fk_nth(&x->u, FK_UNREG, 0)->page, 0);
	assert_int_equal(fk_nth(&x->u, FK_UNREG, 0)->n, npages);
	assert_int_equal(x->l.releases, 1);
	assert_null(x->r->link);
	assert_null(x->r->pg);
	assert_true(x->r->t_end_ns >= x->r->t_start_ns);
}

/* REQUESTED -> MISSING when the session breaks; the waiting faults' pages are demanded
 * again as soon as the next session is up. */
static void test_reconnect_demands_again(void **state)
{
	struct fx x;

	fx_init(&x, 16, FX_NOTMPL);
	fx_connect(&x);
	fx_fault(&x, 5);
	fx_fault(&x, 6);
	assert_int_equal(x.r->n_requested, 2);
	fx_disconnect(&x);
	assert_int_equal(fx_state(&x, 5), DST_MISSING);
	assert_int_equal(fx_state(&x, 6), DST_MISSING);
	assert_int_equal(x.r->n_requested, 0);
	assert_int_equal(x.r->nfaults, 2);                   /* still waiting */
	fx_fault(&x, 7);                                     /* link down: waits */
	assert_int_equal(x.l.ndem, 2);
	fx_connect(&x);
	assert_int_equal(x.l.ndem, 5);
	assert_int_equal(x.l.dem[2], 5);
	assert_int_equal(x.l.dem[3], 6);
	assert_int_equal(x.l.dem[4], 7);
	assert_int_equal(x.r->n_requested, 3);
	assert_false(x.r->resumed);                          /* no class map yet */
	pages(&x, 5, 8, FX_URGENT);
	assert_int_equal(x.r->nfaults, 0);
	assert_int_equal(x.r->st.lat_demand.count, 3);
	fx_fini(&x);
}

/* The whole map came, then the session broke mid-stream: the next session demands every
 * page still missing (not twice the one a fault already asked for) and the region
 * completes when they are in, without DONE. */
static void test_resumed_sweep_completes(void **state)
{
	struct fx x;

	fx_init(&x, 64, FX_NOTMPL);
	fx_connect(&x);
	assert_int_equal(fx_map(&x, 0, true, &all_data64, 1), 0);
	fx_work(&x);
	assert_int_equal(x.r->phase, DST_FETCHING);
	pages(&x, 0, 10, 0);                                 /* the stream, until it broke */
	fx_fault(&x, 20);
	fx_disconnect(&x);
	fx_connect(&x);
	assert_true(x.r->resumed);
	assert_int_equal(x.l.ndem, 2);                       /* 20, then 20 again at once */
	fx_work(&x);
	assert_int_equal(x.l.ndem, 2 + 53);
	assert_int_equal(x.l.dem[2], 10);
	assert_int_equal(x.l.dem[2 + 9], 19);
	assert_int_equal(x.l.dem[2 + 10], 21);               /* 20 is requested already */
	assert_int_equal(x.l.dem[2 + 52], 63);
	assert_int_equal(x.r->st.finish_demanded, 53);
	assert_int_equal(x.r->n_requested, 54);
	pages(&x, 10, 64, FX_URGENT);
	assert_int_equal(x.r->n_present, 64);
	fx_work(&x);
	assert_false(x.r->done_rcvd);
	assert_complete(&x, 64);
	fx_fini(&x);
}

/* A resumed sweep keeps at most 1024 pages in flight: a guest fault's demand never
 * queues behind more than that. */
static void test_resumed_sweep_bounded(void **state)
{
	struct fx x;
	const struct tlm_run all = { TLM_CLASS_DATA, 4096, 0 };

	fx_init(&x, 4096, FX_NOTMPL);
	fx_connect(&x);
	assert_int_equal(fx_map(&x, 0, true, &all, 1), 0);
	fx_work(&x);
	fx_disconnect(&x);
	fx_connect(&x);
	fx_work(&x);
	assert_int_equal(x.l.ndem, 1024);
	assert_int_equal(x.r->n_requested, 1024);
	pages(&x, 0, 256, FX_URGENT);
	fx_work(&x);
	assert_int_equal(x.l.ndem, 1280);
	assert_int_equal(x.l.dem[1024], 1024);
	assert_int_equal(x.r->n_requested, 1024);
	fx_fini(&x);
}

/* After DONE, what the stream skipped is demanded as the link has room (none: the sweep
 * waits, and the loop may sleep); discarded pages count as done; then COMPLETE. */
static void test_done_finish_sweep(void **state)
{
	struct fx x;
	const struct tlm_run map[] = { { TLM_CLASS_ZERO, 32, 0 }, { TLM_CLASS_DATA, 32, 0 } };

	fx_init(&x, 64, FX_NOTMPL);
	fx_connect(&x);
	assert_int_equal(fx_map(&x, 0, true, map, 2), 0);
	fx_work(&x);
	assert_int_equal(fk_pages(&x.u, FK_ZERO), 32);
	fx_remove(&x, 40, 1);
	pages(&x, 32, 62, 0);
	assert_int_equal(x.r->st.data_pages_dropped, 1);     /* 40, discarded */
	assert_int_equal(x.r->n_present, 61);
	x.l.room = 0;
	fx_done(&x);
	assert_true(x.r->done_rcvd);
	assert_false(dst_region_work(x.r));                  /* blocked: nothing to do */
	assert_int_equal(x.l.ndem, 0);
	x.l.room = 64;
	fx_work(&x);
	assert_int_equal(x.l.ndem, 2);
	assert_int_equal(x.l.dem[0], 62);
	assert_int_equal(x.l.dem[1], 63);
	assert_int_equal(x.r->st.finish_demanded, 2);
	assert_int_equal(x.r->phase, DST_FETCHING);
	pages(&x, 62, 64, FX_URGENT);
	fx_work(&x);
	assert_complete(&x, 64);
	assert_int_equal(x.r->n_removed, 1);
	fx_fini(&x);
}

/* After DONE the finish sweep has passed every page; the pages it demanded (class
 * unknown: the map ended early) come back as ZERO, but placing them meets EAGAIN (a
 * REMOVE pending elsewhere): they are MISSING again behind the sweep's cursor, and the
 * sweep must look at them again (now placed from their known class), or the region
 * never completes. */
static void test_deferred_after_sweep(void **state)
{
	struct fx x;
	const struct tlm_run map[] = { { TLM_CLASS_DATA, 32, 0 } };

	fx_init(&x, 64, FX_NOTMPL);
	fx_connect(&x);
	if (fx_map(&x, 0, true, map, 1) != 0)
		fail_msg("a final map that ends before the region: %s", x.err);
	fx_work(&x);
	pages(&x, 0, 32, 0);
	fx_done(&x);
	fx_work(&x);
	assert_int_equal(x.r->finish_cursor, 64);            /* the sweep went past the end */
	assert_int_equal(fx_state(&x, 50), DST_REQUESTED);
	fk_inject(&x.u, FK_ZERO, 50, -EAGAIN, DST_AGAIN_TRIES + 1);   /* then deferred */
	assert_int_equal(fx_zero(&x, 32, 32), 0);
	assert_int_equal(fx_state(&x, 49), DST_PRESENT);
	assert_int_equal(fx_state(&x, 50), DST_MISSING);
	fx_work(&x);          /* the sweep looks again: their class is known, ZERO */
	assert_complete(&x, 64);
	fx_fini(&x);
}

/* Nothing completes while a fault is queued, the map is being swept, or DONE has not
 * come on the first session. */
static void test_no_early_completion(void **state)
{
	struct fx x;

	fx_init(&x, 64, FX_NOTMPL);
	fx_connect(&x);
	assert_int_equal(fx_map(&x, 0, true, &all_data64, 1), 0);
	pages(&x, 0, 64, 0);
	fx_work(&x);
	assert_int_equal(x.r->phase, DST_FETCHING);          /* every page, but no DONE */
	assert_int_equal(fk_count(&x.u, FK_UNREG), 0);
	fx_done(&x);
	fx_work(&x);
	assert_complete(&x, 64);
	fx_fini(&x);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_reconnect_demands_again),
		cmocka_unit_test(test_resumed_sweep_completes),
		cmocka_unit_test(test_resumed_sweep_bounded),
		cmocka_unit_test(test_done_finish_sweep),
		cmocka_unit_test(test_deferred_after_sweep),
		cmocka_unit_test(test_no_early_completion),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
