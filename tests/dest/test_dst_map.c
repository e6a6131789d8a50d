/*
 * The destination region's class map against a fake uffd and link (dest_fake.h): the
 * sweep leaves TEMPLATE runs of a MINOR region to the kernel (a fault on one: CONTINUE,
 * COPY for a hole in the template's page cache) and COPYs them without MINOR, places
 * ZERO runs by ZEROPAGE, REF runs by COPY of template page k;
 * faults before the map wait and are answered from it; frames that contradict the region
 * are refused; the sweep yields to a waiting event.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include "dest_fake.h"
#include "dst_fault.h"
#include "dst_fetch.h"
#include "tlm_test.h"

/* TEMPLATE 0..7, ZERO 8..15, REF 16..19 = template pages 40..43, DATA 20..63. */
static const struct tlm_run mixed[] = {
	{ TLM_CLASS_TEMPLATE, 8, 0 }, { TLM_CLASS_ZERO, 8, 0 }, { TLM_CLASS_REF, 4, 40 },
	{ TLM_CLASS_DATA, 44, 0 },
};

/* After the sweep of mixed: ZERO and REF placed; TEMPLATE pages placed (all of them, or
 * in a MINOR region only those whose bit is in faulted: the others are left to the
 * kernel); DATA not. */
static void assert_mixed_swept(const struct fx *x, uint64_t offset, bool minor,
			       unsigned faulted)
{
	uint64_t tp = minor ? (uint64_t)__builtin_popcount(faulted) : 8;

	for (uint64_t p = 0; p < 8; p++) {
		bool placed = !minor || (faulted >> p & 1);

		assert_int_equal(fx_state(x, p), placed ? DST_PRESENT : DST_MISSING);
		if (placed)
			assert_memory_equal(fk_mem(&x->u, p), fx_tmpl_page(x, offset + p), FX_PS);
	}
	for (uint64_t p = 8; p < 16; p++)
		assert_true(fx_is_zero(fk_mem(&x->u, p)));
	for (uint64_t p = 16; p < 20; p++)
		assert_memory_equal(fk_mem(&x->u, p), fx_tmpl_page(x, 40 + p - 16), FX_PS);
	for (uint64_t p = 8; p < 64; p++)         /* DATA: MISSING, or REQUESTED by a fault */
		assert_int_equal(fx_state(x, p) == DST_PRESENT, p < 20);
	assert_int_equal(x->r->st.pages_by_class[TLM_CLASS_TEMPLATE], 8);
	assert_int_equal(x->r->st.pages_by_class[TLM_CLASS_ZERO], 8);
	assert_int_equal(x->r->st.pages_by_class[TLM_CLASS_REF], 4);
	assert_int_equal(x->r->st.pages_by_class[TLM_CLASS_DATA], 44);
	assert_int_equal(x->r->st.pages_by_class[0], 0);
	assert_int_equal(x->r->st.placed_by_class[TLM_CLASS_TEMPLATE], tp);
	assert_int_equal(x->r->st.placed_by_class[TLM_CLASS_ZERO], 8);
	assert_int_equal(x->r->st.placed_by_class[TLM_CLASS_REF], 4);
	assert_int_equal(x->r->n_present, 12 + tp);
	assert_int_equal(x->r->n_tmpl_left, 8 - tp);
}

/* MISSING -> PRESENT by the sweep, each class its own way (TEMPLATE of a MINOR region:
 * left to the kernel); DATA waits for PAGEs. */
static void test_sweep_by_class(void **state)
{
	struct fx x;

	fx_init(&x, 64, FX_MINOR);
	fx_connect(&x);
	assert_int_equal(fx_map(&x, 0, true, mixed, 4), 0);
	assert_int_equal(x.r->phase, DST_MAPPING);           /* recorded, not swept yet */
	assert_int_equal(x.u.ncalls, 1);                     /* only the attach wake */
	fx_work(&x);
	assert_int_equal(x.r->phase, DST_FETCHING);
	assert_int_equal(fk_count(&x.u, FK_CONT), 0);
	assert_int_equal(fk_count(&x.u, FK_ZERO), 1);
	assert_int_equal(fk_nth(&x.u, FK_ZERO, 0)->page, 8);
	assert_int_equal(fk_nth(&x.u, FK_ZERO, 0)->n, 8);
	assert_int_equal(fk_count(&x.u, FK_COPY), 1);
	assert_int_equal(fk_nth(&x.u, FK_COPY, 0)->page, 16);
	assert_int_equal(fk_nth(&x.u, FK_COPY, 0)->n, 4);
	assert_mixed_swept(&x, 0, true, 0);
	assert_int_equal(x.l.ndem, 0);                       /* nothing asked for */
	assert_true(x.r->t_map_ns > 0);
	fx_fini(&x);
}

/* Without MINOR the TEMPLATE pages are copied from the template at the region's
 * offset (the sweep places them: the kernel has no template behind the region); a
 * fault on a hole in the template's page cache (CONTINUE: EFAULT) is copied too. */
static void test_template_copy_and_hole(void **state)
{
	struct fx x;

	fx_init_at(&x, 64, 128, 32, 0);      /* template, not template-backed */
	fx_connect(&x);
	assert_int_equal(fx_map(&x, 0, true, mixed, 4), 0);
	fx_work(&x);
	assert_int_equal(fk_count(&x.u, FK_CONT), 0);
	assert_int_equal(fk_nth(&x.u, FK_COPY, 0)->page, 0);
	assert_int_equal(fk_nth(&x.u, FK_COPY, 0)->n, 8);
	assert_mixed_swept(&x, 32, false, 0);
	assert_int_equal(x.r->n_tmpl_left, 0);
	fx_fini(&x);

	fx_init(&x, 64, FX_MINOR);
	x.r->fault_around = 1;               /* each fault its page alone (see test_fault_around) */
	fx_connect(&x);
	fk_inject(&x.u, FK_CONT, 5, -EFAULT, 1);
	assert_int_equal(fx_map(&x, 0, true, mixed, 4), 0);
	fx_work(&x);
	fx_fault(&x, 5);
	fx_fault(&x, 6);
	assert_int_equal(x.r->st.continue_fallbacks, 1);
	assert_int_equal(fk_nth(&x.u, FK_CONT, 0)->page, 5);
	assert_int_equal(fk_nth(&x.u, FK_CONT, 0)->done, 0);
	assert_int_equal(fk_nth(&x.u, FK_COPY, 1)->page, 5);     /* the hole, copied */
	assert_int_equal(fk_nth(&x.u, FK_CONT, 1)->page, 6);
	assert_mixed_swept(&x, 0, true, 1u << 5 | 1u << 6);
	fx_fini(&x);
}

/* Faults before the map wait (demanded: class unknown) and are answered from the map
 * as soon as it says what the page is, before the sweep; the reply that comes later
 * finds the page present. */
static void test_faults_before_map_wait(void **state)
{
	struct fx x;

	fx_init(&x, 64, FX_MINOR);
	fx_fault(&x, 3);                     /* link still down: nothing at all */
	fx_fault(&x, 17);
	fx_fault(&x, 30);
	assert_int_equal(x.u.ncalls, 1);
	fx_connect(&x);
	assert_int_equal(x.l.ndem, 3);
	assert_int_equal(fx_state(&x, 3), DST_REQUESTED);
	assert_int_equal(fx_map(&x, 0, true, mixed, 4), 0);
	assert_int_equal(x.r->nredo, 3);                     /* their class is known now */
	dst_region_work(x.r);                                /* faults first, then the sweep */
	assert_int_equal(fk_nth(&x.u, FK_CONT, 0)->page, 3);
	assert_int_equal(fk_nth(&x.u, FK_CONT, 0)->n, 1);
	assert_int_equal(fk_nth(&x.u, FK_COPY, 0)->page, 17);
	assert_memory_equal(fk_mem(&x.u, 17), fx_tmpl_page(&x, 41), FX_PS);
	assert_int_equal(x.r->nfaults, 1);                   /* 30 is DATA: still waits */
	assert_int_equal(x.r->st.lat_demand.count, 2);
	assert_int_equal(x.l.ndem, 3);                       /* 30 is not asked twice */
	assert_mixed_swept(&x, 0, true, 1u << 3);
	assert_int_equal(fx_ref(&x, 3, 1, 3), 0);            /* the late replies */
	assert_int_equal(fx_ref(&x, 17, 1, 41), 0);
	assert_int_equal(fk_pages(&x.u, FK_CONT), 1);        /* 3 by its fault, nothing more */
	assert_int_equal(fk_pages(&x.u, FK_COPY), 4);
	assert_int_equal(fx_page(&x, 30, FX_URGENT), 0);
	assert_int_equal(x.r->nfaults, 0);
	fx_fini(&x);
}

/* After the map, a fault on a page of a class known locally is answered at once (no
 * demand), on a DATA page demanded. */
static void test_fault_after_map(void **state)
{
	struct fx x;

	fx_init(&x, 64, FX_MINOR);
	fx_connect(&x);
	assert_int_equal(fx_map(&x, 0, true, mixed, 4), 0);
	fx_fault(&x, 9);
	fx_fault(&x, 18);
	fx_fault(&x, 21);
	assert_int_equal(fk_nth(&x.u, FK_ZERO, 0)->page, 9);
	assert_int_equal(fk_nth(&x.u, FK_COPY, 0)->page, 18);
	assert_memory_equal(fk_mem(&x.u, 18), fx_tmpl_page(&x, 42), FX_PS);
	assert_int_equal(x.l.ndem, 1);
	assert_int_equal(x.l.dem[0], 21);
	assert_int_equal(x.r->st.lat_local.count, 2);
	assert_int_equal(x.r->st.faults_by_class[TLM_CLASS_ZERO], 1);
	assert_int_equal(x.r->st.faults_by_class[TLM_CLASS_DATA], 1);
	fx_fini(&x);
}

/* A map in several frames; a frame resent after a reconnect only checks what is known. */
static void test_map_frames_and_resend(void **state)
{
	struct fx x;
	const struct tlm_run a[] = { { TLM_CLASS_ZERO, 10, 0 } };
	const struct tlm_run b[] = { { TLM_CLASS_ZERO, 4, 0 }, { TLM_CLASS_DATA, 18, 0 } };

	fx_init(&x, 30, FX_NOTMPL);
	fx_connect(&x);
	assert_int_equal(fx_map(&x, 0, false, a, 1), 0);
	assert_int_equal(fx_map(&x, 8, true, b, 2), 0);      /* 8..9 again, agreeing */
	assert_int_equal(x.r->map.n, 3);
	assert_int_equal(x.r->map.end, 30);
	assert_int_equal(x.r->st.pages_by_class[TLM_CLASS_ZERO], 12);
	fx_work(&x);
	assert_int_equal(x.r->phase, DST_FETCHING);
	assert_int_equal(fk_pages(&x.u, FK_ZERO), 12);
	fx_disconnect(&x);
	fx_connect(&x);
	assert_int_equal(fx_map(&x, 0, false, a, 1), 0);     /* resent: nothing new */
	assert_int_equal(x.r->map.n, 3);
	assert_int_equal(fk_pages(&x.u, FK_ZERO), 12);
	fx_fini(&x);
}

static void expect_refused(const struct tlm_run *runs, uint32_t n, uint64_t first,
			   const char *why, unsigned flags)
{
	struct fx x;
	const struct tlm_run zero = { TLM_CLASS_ZERO, 10, 0 };

	fx_init(&x, 32, flags);
	fx_connect(&x);
	assert_int_equal(fx_map(&x, 0, false, &zero, 1), 0);
	assert_int_equal(fx_map(&x, first, true, runs, n), -EPROTO);
	if (!strstr(x.err, why))
		fail_msg("refused for '%s', expected '%s'", x.err, why);
	assert_false(x.r->map_final);
	fx_fini(&x);
}

/* Overlap that contradicts, a gap, runs beyond the region or the template, a bad run,
 * template classes without a template: refused, with the reason. */
static void test_map_refused(void **state)
{
	const struct tlm_run tmpl5 = { TLM_CLASS_TEMPLATE, 5, 0 };
	const struct tlm_run data30 = { TLM_CLASS_DATA, 30, 0 };
	const struct tlm_run ref_far = { TLM_CLASS_REF, 4, 30 };
	const struct tlm_run zero_len = { TLM_CLASS_ZERO, 0, 0 };
	const struct tlm_run bad_cls = { 7, 1, 0 };
	const struct tlm_run data2 = { TLM_CLASS_DATA, 2, 0 };

	expect_refused(&tmpl5, 1, 8, "CLASS_MAP says page 8 is template, earlier it was zero",
		       FX_MINOR);
	expect_refused(&data2, 1, 12, "after a gap", FX_MINOR);
	expect_refused(&data30, 1, 10, "beyond the region's 32 pages", FX_MINOR);
	expect_refused(&ref_far, 1, 10, "beyond the template's 32", FX_MINOR);
	expect_refused(&zero_len, 1, 10, "bad run", FX_MINOR);
	expect_refused(&bad_cls, 1, 10, "bad run", FX_MINOR);
	expect_refused(&tmpl5, 1, 10, "the region has no template", FX_NOTMPL);
}

/* The sweep stops after 64 pages (SWEEP_YIELD) when an event waits (a guest fault must
 * not wait behind it), counted in pages however short the runs are, and goes on once the
 * loop has served it; the TEMPLATE runs between cost nothing (left to the kernel). */
static void test_sweep_yields_to_events(void **state)
{
	struct fx x;
	struct tlm_run runs[64];
	struct tlm_evsrc ev = { .fd = eventfd(1, EFD_CLOEXEC) };

	for (unsigned i = 0; i < 64; i++)
		runs[i] = (struct tlm_run){ i % 2 ? TLM_CLASS_ZERO : TLM_CLASS_TEMPLATE, 8, 0 };
	fx_init(&x, 512, FX_MINOR);
	fx_connect(&x);
	assert_int_equal(fx_map(&x, 0, true, runs, 64), 0);
	assert_true(ev.fd >= 0);
	assert_int_equal(tlm_evloop_add(&x.loop, &ev, EPOLLIN), 0);   /* ready */
	assert_true(dst_region_work(x.r));                   /* more pending */
	assert_int_equal(fk_pages(&x.u, FK_CONT) + fk_pages(&x.u, FK_ZERO), 64);
	tlm_evloop_del(&x.loop, &ev);
	close(ev.fd);
	fx_work(&x);
	assert_int_equal(fk_pages(&x.u, FK_CONT), 0);
	assert_int_equal(fk_pages(&x.u, FK_ZERO), 256);
	assert_int_equal(x.r->n_tmpl_left, 256);
	assert_int_equal(x.r->phase, DST_FETCHING);
	fx_fini(&x);
}

/* Completion of a MINOR region leaves its unfaulted TEMPLATE pages to the kernel: no
 * CONTINUE for them, the region unregistered (then woken: a fault read too late faults
 * again), and each reads as its template page (the fake's model of the page cache). */
static void test_template_left_at_completion(void **state)
{
	struct fx x;
	size_t unreg;

	fx_init(&x, 64, FX_MINOR);
	x.r->fault_around = 1;
	fx_connect(&x);
	assert_int_equal(fx_map(&x, 0, true, mixed, 4), 0);
	fx_work(&x);
	fx_fault(&x, 2);
	assert_int_equal(fx_pages(&x, 20, 44, 0, 0), 0);
	fx_done(&x);
	fx_work(&x);
	assert_int_equal(x.r->phase, DST_COMPLETE);
	assert_int_equal(fk_pages(&x.u, FK_CONT), 1);        /* the fault's */
	assert_int_equal(x.r->n_present, 57);
	assert_int_equal(x.r->n_tmpl_left, 7);
	assert_int_equal(fk_count(&x.u, FK_UNREG), 1);
	unreg = (size_t)(fk_nth(&x.u, FK_UNREG, 0) - x.u.calls);
	assert_true(unreg + 1 < x.u.ncalls);
	assert_int_equal(x.u.calls[unreg + 1].op, FK_WAKE);
	assert_int_equal(x.u.calls[unreg + 1].n, 64);
	for (uint64_t p = 0; p < 8; p++)
		assert_memory_equal(fk_mem(&x.u, p), fx_tmpl_page(&x, p), FX_PS);
	for (uint64_t p = 20; p < 64; p++)
		assert_memory_equal(fk_mem(&x.u, p), fx_data(p), FX_PS);
	fx_fini(&x);
}

/* Without a final class map the TEMPLATE pages are not settled: a source that says DONE
 * before the map's last frame gets them placed by the finish sweep, as before. */
static void test_template_placed_without_final_map(void **state)
{
	struct fx x;

	fx_init(&x, 64, FX_MINOR);
	fx_connect(&x);
	assert_int_equal(fx_map(&x, 0, false, mixed, 2), 0);          /* 0..15, not final */
	fx_work(&x);
	assert_int_equal(fk_pages(&x.u, FK_CONT), 0);
	assert_int_equal(x.r->n_tmpl_left, 8);
	fx_done(&x);
	fx_work(&x);
	assert_int_equal(fk_pages(&x.u, FK_CONT), 8);
	assert_int_equal(x.r->n_tmpl_left, 0);
	assert_int_equal(x.r->phase, DST_MAPPING);
	for (uint64_t p = 0; p < 8; p++)
		assert_memory_equal(fk_mem(&x.u, p), fx_tmpl_page(&x, p), FX_PS);
	fx_fini(&x);
}

/* TEMPLATE 0..5, DATA 6, TEMPLATE 7..9, ZERO 10, TEMPLATE 11..20, DATA 21..63. */
static const struct tlm_run around[] = {
	{ TLM_CLASS_TEMPLATE, 6, 0 }, { TLM_CLASS_DATA, 1, 0 }, { TLM_CLASS_TEMPLATE, 3, 0 },
	{ TLM_CLASS_ZERO, 1, 0 }, { TLM_CLASS_TEMPLATE, 10, 0 }, { TLM_CLASS_DATA, 43, 0 },
};

/* A TEMPLATE fault of a MINOR region CONTINUEs the unplaced TEMPLATE pages of its aligned
 * 16-page window: its own run first (that wakes the guest), then the others; a hole
 * (EFAULT) in one is copied; nothing of another class, nothing outside the window, no
 * page already present; each window's pages are placed once. */
static void test_fault_around(void **state)
{
	struct fx x;

	fx_init(&x, 64, FX_MINOR);
	fx_connect(&x);
	assert_int_equal(fx_map(&x, 0, true, around, 6), 0);
	fx_work(&x);                                         /* ZERO 10 by the sweep */
	assert_int_equal(fk_count(&x.u, FK_CONT), 0);
	fk_inject(&x.u, FK_CONT, 2, -EFAULT, 1);
	fx_fault(&x, 8);
	assert_int_equal(fk_nth(&x.u, FK_CONT, 0)->page, 7);
	assert_int_equal(fk_nth(&x.u, FK_CONT, 0)->n, 3);
	assert_int_equal(fk_nth(&x.u, FK_CONT, 1)->page, 0);   /* stops at the hole */
	assert_int_equal(fk_nth(&x.u, FK_CONT, 1)->done, 2);
	assert_int_equal(fk_nth(&x.u, FK_COPY, 0)->page, 2);
	assert_int_equal(fk_nth(&x.u, FK_CONT, 2)->page, 3);
	assert_int_equal(fk_nth(&x.u, FK_CONT, 2)->n, 3);
	assert_int_equal(fk_nth(&x.u, FK_CONT, 3)->page, 11);
	assert_int_equal(fk_nth(&x.u, FK_CONT, 3)->n, 5);      /* 11..15: the window ends */
	assert_int_equal(fk_count(&x.u, FK_CONT), 4);
	assert_int_equal(x.r->st.continue_fallbacks, 1);
	assert_int_equal(x.r->st.fault_around, 13);
	for (uint64_t p = 0; p < 16; p++) {
		bool tmpl = p != 6 && p != 10;

		assert_int_equal(fx_state(&x, p), tmpl || p == 10 ? DST_PRESENT : DST_MISSING);
		if (tmpl)
			assert_memory_equal(fk_mem(&x.u, p), fx_tmpl_page(&x, p), FX_PS);
	}
	for (uint64_t p = 16; p < 21; p++)
		assert_int_equal(fx_state(&x, p), DST_MISSING);
	assert_int_equal(x.r->n_tmpl_left, 5);
	assert_int_equal(x.r->nfaults, 0);

	fx_fault(&x, 20);                         /* window 16..31: 16..20, one run */
	assert_int_equal(fk_nth(&x.u, FK_CONT, 4)->page, 16);
	assert_int_equal(fk_nth(&x.u, FK_CONT, 4)->n, 5);
	assert_int_equal(fk_count(&x.u, FK_CONT), 5);
	assert_int_equal(x.r->n_tmpl_left, 0);
	assert_int_equal(x.r->st.placed_by_class[TLM_CLASS_TEMPLATE], 19);
	fx_fault(&x, 6);                          /* DATA: demanded, no CONTINUE */
	assert_int_equal(fk_count(&x.u, FK_CONT), 5);
	assert_int_equal(fx_state(&x, 6), DST_REQUESTED);
	fx_fini(&x);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_sweep_by_class),
		cmocka_unit_test(test_template_copy_and_hole),
		cmocka_unit_test(test_faults_before_map_wait),
		cmocka_unit_test(test_fault_after_map),
		cmocka_unit_test(test_map_frames_and_resend),
		cmocka_unit_test(test_map_refused),
		cmocka_unit_test(test_sweep_yields_to_events),
		cmocka_unit_test(test_template_left_at_completion),
		cmocka_unit_test(test_template_placed_without_final_map),
		cmocka_unit_test(test_fault_around),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
