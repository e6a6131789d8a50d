/*
 * The destination region's page-state transitions, one at a time, against a fake uffd
 * and a fake link (dest_fake.h): a fault demands its page and the PAGE places it, a
 * discard makes pages REMOVED (zero page on a fault, late data dropped), checksum
 * mismatches, EEXIST, EAGAIN with a pending REMOVE, a guest whose memory is gone, faults
 * on pages already present, the region moved or unmapped.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <string.h>

#include "dest_fake.h"
#include "dst_fault.h"
#include "dst_fetch.h"
#include "tlm_test.h"

static void test_attach_starts_link(void **state)
{
	struct fx x;

	fx_init(&x, 16, FX_MINOR);
	assert_int_equal(x.r->phase, DST_CONNECTING);
	assert_true(x.r->minor);
	assert_int_equal(x.l.connects, 1);
	/* threads an earlier daemon left waiting are woken: the whole region */
	assert_int_equal(fk_count(&x.u, FK_WAKE), 1);
	assert_int_equal(fk_nth(&x.u, FK_WAKE, 0)->page, 0);
	assert_int_equal(fk_nth(&x.u, FK_WAKE, 0)->n, 16);
	fx_connect(&x);
	assert_int_equal(x.r->phase, DST_MAPPING);
	assert_string_equal(dst_region_phase_name(x.r), "mapping");
	fx_fini(&x);
}

static void test_template_region_needs_minor(void **state)
{
	struct fx x;

	fx_init(&x, 16, FX_NOMINOR);
	assert_int_equal(x.r->phase, DST_FAILED);
	assert_non_null(strstr(x.r->fail_reason, "MINOR_SHMEM"));
	assert_int_equal(x.l.connects, 0);
	assert_int_equal(x.u.ncalls, 0);
	fx_fini(&x);
}

/* MISSING -> REQUESTED (fault, demand) -> PRESENT (PAGE). */
static void test_fault_demand_page(void **state)
{
	struct fx x;

	fx_init(&x, 16, FX_NOTMPL);
	fx_connect(&x);
	fx_fault(&x, 5);
	assert_int_equal(x.r->st.faults, 1);
	assert_int_equal(x.r->st.faults_by_class[0], 1);    /* class not known yet */
	assert_true(x.r->pg[5] & DST_PG_FAULTED);
	assert_int_equal(x.l.ndem, 1);
	assert_int_equal(x.l.dem[0], 5);
	assert_int_equal(fx_state(&x, 5), DST_REQUESTED);
	assert_int_equal(x.r->n_requested, 1);
	assert_int_equal(x.r->nfaults, 1);

	fx_fault(&x, 5);                     /* a second thread: no second demand */
	assert_int_equal(x.l.ndem, 1);

	assert_int_equal(fx_page(&x, 5, FX_URGENT), 0);
	assert_int_equal(fk_count(&x.u, FK_COPY), 1);
	assert_int_equal(fk_nth(&x.u, FK_COPY, 0)->page, 5);
	assert_int_equal(fk_nth(&x.u, FK_COPY, 0)->n, 1);
	assert_memory_equal(fk_mem(&x.u, 5), fx_data(5), FX_PS);
	assert_int_equal(fx_state(&x, 5), DST_PRESENT);
	assert_int_equal(fx_cls(&x, 5), TLM_CLASS_DATA);
	assert_false(x.r->pg[5] & DST_PG_FAULTED);
	assert_int_equal(x.r->n_present, 1);
	assert_int_equal(x.r->n_requested, 0);
	assert_int_equal(x.r->nfaults, 0);
	assert_int_equal(x.r->st.lat_demand.count, 2);      /* both threads, round trip */
	assert_int_equal(x.r->st.lat_local.count, 0);
	assert_int_equal(x.r->st.placed_by_class[TLM_CLASS_DATA], 1);
	assert_int_equal(x.r->st.data_pages_in, 1);
	fx_fini(&x);
}

/* A DATA page whose copy sits in bulk input not handled yet is placed from there at once
 * (no demand); its frame, handled later, finds it present. A copy that fails its checksum
 * is not used: the page is demanded. */
static void test_fault_from_bulk_buffer(void **state)
{
	const struct tlm_run data16 = { TLM_CLASS_DATA, 16, 0 };
	struct fx x;

	fx_init(&x, 16, FX_NOTMPL);
	fx_connect(&x);
	assert_int_equal(fx_map(&x, 0, true, &data16, 1), 0);
	x.l.buf_page = 5;
	x.l.buf_data = fx_data(5);
	x.l.buf_sum = tlm_proto_page_sum(fx_data(5));
	fx_fault(&x, 5);
	assert_int_equal(x.l.ndem, 0);
	assert_int_equal(fx_state(&x, 5), DST_PRESENT);
	assert_memory_equal(fk_mem(&x.u, 5), fx_data(5), FX_PS);
	assert_int_equal(x.r->st.data_from_buffer, 1);
	assert_int_equal(x.r->nfaults, 0);

	assert_int_equal(fx_pages(&x, 4, 4, 0, 0), 0);       /* its frame comes in */
	assert_int_equal(x.r->st.data_pages_dropped, 1);
	assert_int_equal(fk_pages(&x.u, FK_COPY), 4);

	x.l.buf_page = 9;
	x.l.buf_data = fx_data(9);
	x.l.buf_sum = tlm_proto_page_sum(fx_data(9)) ^ 1;
	fx_fault(&x, 9);
	assert_int_equal(x.l.ndem, 1);
	assert_int_equal(x.l.dem[0], 9);
	assert_int_equal(fx_state(&x, 9), DST_REQUESTED);
	assert_int_equal(x.r->st.data_from_buffer, 1);
	fx_fini(&x);
}

/* A fault while the link is down waits (nothing placed, nothing demanded) until the link
 * connects; a link that cannot queue the demand leaves the page MISSING. */
static void test_fault_waits_for_link(void **state)
{
	struct fx x;

	fx_init(&x, 16, FX_NOTMPL);
	fx_fault(&x, 3);
	assert_int_equal(fx_state(&x, 3), DST_MISSING);
	assert_int_equal(x.l.ndem, 0);
	assert_int_equal(fk_count(&x.u, FK_COPY) + fk_count(&x.u, FK_ZERO), 0);
	x.l.demand_rc = -ENOMEM;
	fx_connect(&x);
	assert_int_equal(fx_state(&x, 3), DST_MISSING);
	x.l.demand_rc = 0;
	fx_disconnect(&x);
	fx_connect(&x);
	assert_int_equal(x.l.ndem, 1);
	assert_int_equal(x.l.dem[0], 3);
	assert_int_equal(fx_state(&x, 3), DST_REQUESTED);
	fx_fini(&x);
}

/* REMOVED on discard; a fault on a REMOVED page gets a zero page (ZEROFILL, class still
 * unknown: the zero page says nothing about the source's content). */
static void test_remove_then_fault_zero(void **state)
{
	struct fx x;

	fx_init(&x, 16, FX_NOTMPL);
	fx_connect(&x);
	fx_remove(&x, 10, 2);
	assert_int_equal(fx_state(&x, 10), DST_REMOVED);
	assert_int_equal(fx_state(&x, 11), DST_REMOVED);
	assert_int_equal(x.r->n_removed, 2);
	fx_fault(&x, 10);
	assert_int_equal(x.l.ndem, 0);                       /* never asked for */
	assert_int_equal(fk_count(&x.u, FK_ZERO), 1);
	assert_int_equal(fk_nth(&x.u, FK_ZERO, 0)->page, 10);
	assert_int_equal(fk_nth(&x.u, FK_ZERO, 0)->n, 1);
	assert_true(fx_is_zero(fk_mem(&x.u, 10)));
	assert_int_equal(fx_state(&x, 10), DST_PRESENT);
	assert_true(x.r->pg[10] & DST_PG_ZEROFILL);
	assert_int_equal(fx_cls(&x, 10), 0);
	assert_int_equal(x.r->st.faults_removed, 1);
	assert_int_equal(x.r->st.placed_by_class[TLM_CLASS_ZERO], 1);
	assert_int_equal(x.r->n_removed, 1);
	assert_int_equal(x.r->nfaults, 0);
	fx_fini(&x);
}

/* A fault waiting for DATA whose page the guest then discards gets its zero page; the
 * PAGE that comes late is dropped, as is one for a page discarded without a fault. */
static void test_late_data_for_removed_dropped(void **state)
{
	struct fx x;

	fx_init(&x, 16, FX_NOTMPL);
	fx_connect(&x);
	fx_fault(&x, 12);
	assert_int_equal(fx_state(&x, 12), DST_REQUESTED);
	fx_remove(&x, 12, 1);
	assert_int_equal(fx_state(&x, 12), DST_PRESENT);     /* zero page for the waiter */
	assert_true(x.r->pg[12] & DST_PG_ZEROFILL);
	assert_int_equal(fk_count(&x.u, FK_ZERO), 1);
	assert_int_equal(x.r->nfaults, 0);
	assert_int_equal(fx_page(&x, 12, FX_URGENT), 0);
	fx_remove(&x, 13, 1);
	assert_int_equal(fx_page(&x, 13, 0), 0);
	assert_int_equal(fk_count(&x.u, FK_COPY), 0);
	assert_int_equal(x.r->st.data_pages_in, 2);
	assert_int_equal(x.r->st.data_pages_dropped, 2);
	assert_int_equal(fx_state(&x, 13), DST_REMOVED);
	assert_true(fx_is_zero(fk_mem(&x.u, 12)));
	fx_fini(&x);
}

/* A bad checksum: not placed, BADSUM, asked for again; the good copy is placed. On bulk
 * for a page whose demand reply is on its way, no second demand. */
static void test_badsum_then_rerequest(void **state)
{
	struct fx x;

	fx_init(&x, 16, FX_NOTMPL);
	fx_connect(&x);
	assert_int_equal(fx_page(&x, 7, 0 | FX_BADSUM), 0);
	assert_int_equal(x.r->st.checksum_errors, 1);
	assert_true(x.r->pg[7] & DST_PG_BADSUM);
	assert_int_equal(fk_count(&x.u, FK_COPY), 0);
	assert_int_equal(fx_state(&x, 7), DST_REQUESTED);
	assert_int_equal(x.l.ndem, 1);
	assert_int_equal(x.l.dem[0], 7);
	assert_int_equal(fx_page(&x, 7, FX_URGENT), 0);
	assert_int_equal(fx_state(&x, 7), DST_PRESENT);
	assert_memory_equal(fk_mem(&x.u, 7), fx_data(7), FX_PS);
	assert_int_equal(x.r->phase, DST_MAPPING);

	fx_fault(&x, 8);                                     /* demanded: REQUESTED */
	assert_int_equal(fx_page(&x, 8, FX_BADSUM), 0);      /* bulk copy was bad */
	assert_int_equal(x.l.ndem, 2);                       /* the reply is on its way */
	assert_int_equal(fx_state(&x, 8), DST_REQUESTED);
	fx_fini(&x);
}

static void test_badsum_twice_fails(void **state)
{
	struct fx x;

	fx_init(&x, 16, FX_NOTMPL);
	fx_connect(&x);
	fx_fault(&x, 7);
	assert_int_equal(fx_page(&x, 7, FX_URGENT | FX_BADSUM), 0);
	assert_int_equal(x.r->phase, DST_MAPPING);
	assert_int_equal(fx_page(&x, 7, FX_URGENT | FX_BADSUM), 0);
	assert_int_equal(x.r->phase, DST_FAILED);
	assert_string_equal(x.r->fail_reason, "page 7 failed its checksum twice");
	assert_int_equal(x.r->st.checksum_errors, 2);
	assert_int_equal(fx_page(&x, 7, FX_URGENT), 0);      /* nothing more is placed */
	assert_int_equal(fk_count(&x.u, FK_COPY), 0);
	assert_int_equal(x.r->nfaults, 1);                   /* the fault stays waiting */
	assert_false(dst_region_work(x.r));                  /* released at the safe point */
	assert_int_equal(x.l.releases, 1);
	assert_null(x.r->link);
	assert_null(x.r->uops);
	assert_int_equal(fk_count(&x.u, FK_UNREG), 0);       /* faults keep waiting */
	fx_fini(&x);
}

/* EEXIST: the page was there; PRESENT, counted, its waiter woken; in a range the pages
 * after it are placed by another call. */
static void test_eexist_is_present(void **state)
{
	struct fx x;

	fx_init(&x, 32, FX_NOTMPL);
	fx_connect(&x);
	x.u.mapped[3] = 1;                   /* content from before arming */
	memset(x.u.mem + 3 * FX_PS, 0xab, FX_PS);
	fx_fault(&x, 3);
	assert_int_equal(fx_page(&x, 3, FX_URGENT), 0);
	assert_int_equal(fk_nth(&x.u, FK_COPY, 0)->rc, -EEXIST);
	assert_int_equal(x.r->st.eexist, 1);
	assert_int_equal(fx_state(&x, 3), DST_PRESENT);
	assert_int_equal(x.r->nfaults, 0);
	assert_int_equal(fk_nth(&x.u, FK_WAKE, 1)->page, 3); /* [0] is the attach wake */
	assert_int_equal(fk_mem(&x.u, 3)[0], 0xab);          /* never overwritten */

	x.u.mapped[23] = 1;
	assert_int_equal(fx_zero(&x, 20, 8), 0);
	assert_int_equal(fk_count(&x.u, FK_ZERO), 2);
	assert_int_equal(fk_nth(&x.u, FK_ZERO, 0)->rc, -EEXIST);
	assert_int_equal(fk_nth(&x.u, FK_ZERO, 0)->done, 3);
	assert_int_equal(fk_nth(&x.u, FK_ZERO, 1)->page, 24);
	assert_int_equal(fk_nth(&x.u, FK_ZERO, 1)->n, 4);
	for (uint64_t p = 20; p < 28; p++)
		assert_int_equal(fx_state(&x, p), DST_PRESENT);
	assert_int_equal(x.r->st.eexist, 2);
	assert_int_equal(x.r->st.placed_by_class[TLM_CLASS_ZERO], 7);
	fx_fini(&x);
}

/* EAGAIN: the REMOVE the kernel had pending is read, the discarded page is skipped and
 * the rest placed. An EAGAIN that persists defers the placement: a ZERO reply's pages
 * are MISSING again, a PAGE is asked for again. */
static void test_eagain_reads_pending_remove(void **state)
{
	struct fx x;

	fx_init(&x, 64, FX_NOTMPL);
	fx_connect(&x);
	fk_inject(&x.u, FK_ZERO, 42, -EAGAIN, 1);
	fx_queue_remove(&x, 42, 1);
	assert_int_equal(fx_zero(&x, 40, 4), 0);
	assert_int_equal(fx_state(&x, 40), DST_PRESENT);
	assert_int_equal(fx_state(&x, 41), DST_PRESENT);
	assert_int_equal(fx_state(&x, 42), DST_REMOVED);
	assert_int_equal(fx_state(&x, 43), DST_PRESENT);
	assert_int_equal(fk_nth(&x.u, FK_ZERO, 1)->page, 43);

	fk_inject(&x.u, FK_ZERO, 46, -EAGAIN, 100);
	fx_fault(&x, 47);                                    /* waits for DATA... */
	assert_int_equal(fx_zero(&x, 45, 3), 0);             /* ...but it is ZERO */
	assert_int_equal(fx_state(&x, 45), DST_PRESENT);
	assert_int_equal(fx_state(&x, 46), DST_MISSING);
	assert_int_equal(fx_state(&x, 47), DST_MISSING);
	assert_int_equal(x.r->nredo, 1);                     /* the fault is queued again */
	assert_int_equal(x.r->redo[0], 47);

	fx_fault(&x, 50);
	fk_inject(&x.u, FK_COPY, 50, -EAGAIN, 100);
	assert_int_equal(fx_page(&x, 50, FX_URGENT), 0);
	assert_int_equal(x.l.ndem, 3);                       /* 47, 50, 50 again */
	assert_int_equal(x.l.dem[2], 50);
	assert_int_equal(fx_state(&x, 50), DST_REQUESTED);
	fx_fini(&x);
}

/* The guest's memory is gone (ENOENT): the region is dropped, released at the safe
 * point. */
static void test_enoent_drops_region(void **state)
{
	struct fx x;

	fx_init(&x, 16, FX_NOTMPL);
	fx_connect(&x);
	fk_inject(&x.u, FK_ZERO, 5, -ENOENT, 1);
	assert_int_equal(fx_zero(&x, 4, 4), 0);
	assert_true(x.r->dead);
	assert_int_equal(fk_count(&x.u, FK_ZERO), 1);        /* stopped there */
	assert_false(dst_region_work(x.r));
	assert_int_equal(x.l.releases, 1);
	fx_fini(&x);
}

/* A fault on a page we placed: where its content is certain it is placed again (EEXIST:
 * it really is there) and woken; a DATA page is only woken. */
static void test_fault_on_present(void **state)
{
	struct fx x;
	size_t wakes;

	fx_init(&x, 16, FX_NOTMPL);
	fx_connect(&x);
	assert_int_equal(fx_zero(&x, 2, 1), 0);
	assert_int_equal(fx_page(&x, 3, 0), 0);
	wakes = fk_count(&x.u, FK_WAKE);
	fx_fault(&x, 2);
	assert_int_equal(fk_count(&x.u, FK_ZERO), 2);
	assert_int_equal(fk_nth(&x.u, FK_ZERO, 1)->rc, -EEXIST);
	fx_fault(&x, 3);
	assert_int_equal(fk_count(&x.u, FK_COPY), 1);
	assert_int_equal(fk_count(&x.u, FK_WAKE), wakes + 2);
	assert_int_equal(x.r->st.faults_present, 2);
	assert_int_equal(x.r->nfaults, 0);
	assert_int_equal(x.r->st.lat_local.count, 2);

	fx_remove(&x, 2, 1);                 /* the zap took the zero page: placed again */
	fx_fault(&x, 2);
	assert_int_equal(fk_nth(&x.u, FK_ZERO, 2)->rc, 0);
	assert_int_equal(fx_state(&x, 2), DST_PRESENT);
	fx_fini(&x);
}

/* REMAP of the whole region moves it; of a part fails it. UNMAP drops it. */
static void test_remap_and_unmap(void **state)
{
	struct fx x;
	struct tlm_uffd_event mv = { .type = TLM_UFFD_EV_REMAP, .addr = FX_BASE,
				     .new_addr = FX_BASE + (1ull << 30), .len = 16 * FX_PS };
	struct tlm_uffd_event part = { .type = TLM_UFFD_EV_REMAP, .addr = FX_BASE + FX_PS,
				       .new_addr = FX_BASE, .len = FX_PS };
	struct tlm_uffd_event unmap = { .type = TLM_UFFD_EV_UNMAP, .addr = FX_BASE,
					.end = FX_BASE + FX_PS };

	fx_init(&x, 16, FX_NOTMPL);
	fx_connect(&x);
	fk_event(&x.u, &mv);
	dst_region_uffd_event(x.r);
	assert_int_equal((uint64_t)(uintptr_t)x.r->base, FX_BASE + (1ull << 30));
	x.u.base = FX_BASE + (1ull << 30);
	assert_int_equal(fx_zero(&x, 1, 1), 0);
	assert_int_equal(fk_nth(&x.u, FK_ZERO, 0)->page, 1);
	fx_fini(&x);

	fx_init(&x, 16, FX_NOTMPL);
	fk_event(&x.u, &part);
	dst_region_uffd_event(x.r);
	assert_int_equal(x.r->phase, DST_FAILED);
	fx_fini(&x);

	fx_init(&x, 16, FX_NOTMPL);
	fk_event(&x.u, &unmap);
	dst_region_uffd_event(x.r);
	assert_true(x.r->dead);
	fx_fini(&x);
}

/* Replies that contradict the region: pages beyond it, a class the map did not say. */
static void test_replies_checked(void **state)
{
	struct fx x;
	struct tlm_run zero = { TLM_CLASS_ZERO, 4, 0 };

	fx_init(&x, 16, FX_NOTMPL);
	fx_connect(&x);
	assert_int_equal(fx_page(&x, 16, 0), -EPROTO);
	assert_non_null(strstr(x.err, "beyond the region's 16 pages"));
	assert_int_equal(fx_zero(&x, 14, 3), -EPROTO);
	assert_int_equal(fx_ref(&x, 0, 1, 0), -EPROTO);      /* no template */
	assert_int_equal(fx_map(&x, 0, false, &zero, 1), 0);
	assert_int_equal(fx_page(&x, 2, 0), -EPROTO);
	assert_string_equal(x.err, "PAGE for page 2, which the class map says is zero");
	assert_int_equal(fk_count(&x.u, FK_COPY), 0);
	assert_int_equal(x.r->st.data_pages_in, 0);
	fx_fini(&x);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_attach_starts_link),
		cmocka_unit_test(test_template_region_needs_minor),
		cmocka_unit_test(test_fault_demand_page),
		cmocka_unit_test(test_fault_from_bulk_buffer),
		cmocka_unit_test(test_fault_waits_for_link),
		cmocka_unit_test(test_remove_then_fault_zero),
		cmocka_unit_test(test_late_data_for_removed_dropped),
		cmocka_unit_test(test_badsum_then_rerequest),
		cmocka_unit_test(test_badsum_twice_fails),
		cmocka_unit_test(test_eexist_is_present),
		cmocka_unit_test(test_eagain_reads_pending_remove),
		cmocka_unit_test(test_enoent_drops_region),
		cmocka_unit_test(test_fault_on_present),
		cmocka_unit_test(test_remap_and_unmap),
		cmocka_unit_test(test_replies_checked),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
