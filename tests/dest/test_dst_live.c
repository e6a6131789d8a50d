/*
 * Version 3 at the destination (live and fix maps, pre-sent DATA) against a fake uffd
 * and link (dest_fake.h): nothing is placed before the final fix frame; a fix of KEEP
 * runs gives what the whole map gives; pre-sent pages under KEEP are placed from the
 * stage without a DEMAND, others (fix says another class or DATA again, a bad checksum,
 * no room) never are; a lost session or a whole map drops the live map and the copies;
 * frames out of place are refused with the reason; the stats say what happened.
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
#include "dst_report.h"
#include "json.h"
#include "tlm_test.h"

/* TEMPLATE 0..7, ZERO 8..15, REF 16..19 = template pages 40..43, DATA 20..63. */
static const struct tlm_run mixed[] = {
	{ TLM_CLASS_TEMPLATE, 8, 0 }, { TLM_CLASS_ZERO, 8, 0 }, { TLM_CLASS_REF, 4, 40 },
	{ TLM_CLASS_DATA, 44, 0 },
};
/* TEMPLATE 0..19, DATA 20..27, ZERO 28..63: eight DATA pages, all of them pre-sent. */
static const struct tlm_run live1[] = {
	{ TLM_CLASS_TEMPLATE, 20, 0 }, { TLM_CLASS_DATA, 8, 0 }, { TLM_CLASS_ZERO, 36, 0 },
};
static const struct tlm_run keep64 = { TLM_CLASS_KEEP, 64, 0 };

static void assert_nothing_placed(const struct fx *x)
{
	assert_int_equal(fk_count(&x->u, FK_COPY), 0);
	assert_int_equal(fk_count(&x->u, FK_ZERO), 0);
	assert_int_equal(fk_count(&x->u, FK_CONT), 0);
	assert_int_equal(x->r->n_present, 0);
}

/* Connected, the live map live1 in, DATA pages 20..27 pre-sent (version v). */
static void live1_presented(struct fx *x, unsigned v)
{
	fx_init(x, 64, FX_MINOR);
	fx_connect(x);
	assert_int_equal(fx_map_kind(x, TLM_MAP_LIVE, 0, true, live1, 3), 0);
	assert_int_equal(fx_pages(x, 20, 8, v, 0), 0);
	assert_int_equal(x->r->stage.held, 8);
}

static bool demanded(const struct fx *x, uint64_t page)
{
	for (size_t i = 0; i < x->l.ndem; i++)
		if (x->l.dem[i] == page)
			return true;
	return false;
}

/* Placement calls (not wakes) of two fixtures are the same, one by one. */
static void assert_same_calls(const struct fx *a, const struct fx *b)
{
	size_t i = 0, j = 0;

	for (;;) {
		while (i < a->u.ncalls && a->u.calls[i].op == FK_WAKE)
			i++;
		while (j < b->u.ncalls && b->u.calls[j].op == FK_WAKE)
			j++;
		if (i == a->u.ncalls || j == b->u.ncalls)
			break;
		assert_int_equal(a->u.calls[i].op, b->u.calls[j].op);
		assert_int_equal(a->u.calls[i].page, b->u.calls[j].page);
		assert_int_equal(a->u.calls[i].n, b->u.calls[j].n);
		i++;
		j++;
	}
	assert_int_equal(i, a->u.ncalls);
	assert_int_equal(j, b->u.ncalls);
}

/* A live map fixed by KEEP throughout: the same placements, classes and stats as the
 * whole map; a KEEP that cuts a REF run moves its template page with the cut. */
static void test_keep_all_like_whole(void **state)
{
	const struct tlm_run keep18 = { TLM_CLASS_KEEP, 18, 0 }, keep46 = { TLM_CLASS_KEEP, 46, 0 };
	struct fx w, l, c;

	fx_init(&w, 64, FX_MINOR);
	fx_connect(&w);
	assert_int_equal(fx_map(&w, 0, true, mixed, 4), 0);
	fx_work(&w);
	assert_string_equal(w.r->map_kind, "whole");

	fx_init(&l, 64, FX_MINOR);
	fx_connect(&l);
	assert_int_equal(fx_map_kind(&l, TLM_MAP_LIVE, 0, false, mixed, 2), 0);
	assert_int_equal(fx_map_kind(&l, TLM_MAP_LIVE, 16, true, mixed + 2, 2), 0);
	assert_int_equal(fx_map_kind(&l, TLM_MAP_FIX, 0, true, &keep64, 1), 0);
	fx_work(&l);
	assert_same_calls(&w, &l);
	assert_memory_equal(w.u.mem, l.u.mem, 64 * FX_PS);
	assert_memory_equal(w.r->st.pages_by_class, l.r->st.pages_by_class,
			    sizeof(w.r->st.pages_by_class));
	assert_memory_equal(w.r->st.placed_by_class, l.r->st.placed_by_class,
			    sizeof(w.r->st.placed_by_class));
	assert_int_equal(l.r->phase, DST_FETCHING);
	assert_int_equal(l.r->map.n, 4);
	assert_string_equal(l.r->map_kind, "live+fix");
	assert_true(l.r->t_fix_ns > 0 && l.r->t_map_rcvd_ns == l.r->t_fix_ns);
	assert_null(l.r->lv.live.run);                     /* freed with the fix */
	fx_fini(&l);

	fx_init(&c, 64, FX_MINOR);                         /* KEEP cuts REF 16..19 at 18 */
	fx_connect(&c);
	assert_int_equal(fx_map_kind(&c, TLM_MAP_LIVE, 0, true, mixed, 4), 0);
	assert_int_equal(fx_map_kind(&c, TLM_MAP_FIX, 0, false, &keep18, 1), 0);
	assert_int_equal(fx_map_kind(&c, TLM_MAP_FIX, 18, true, &keep46, 1), 0);
	fx_work(&c);
	assert_int_equal(c.r->map.n, 5);
	assert_int_equal(c.r->map.start[3], 18);
	assert_int_equal(c.r->map.run[3].arg, 42);
	assert_memory_equal(w.u.mem, c.u.mem, 64 * FX_PS);
	fx_fini(&c);
	fx_fini(&w);
}

/* Until the final fix frame nothing is placed, not even what the live map or a fix
 * frame says is template or zero, and faults are demanded as before any map. */
static void test_nothing_placed_before_final_fix(void **state)
{
	const struct tlm_run keep32 = { TLM_CLASS_KEEP, 32, 0 };
	struct fx x;

	fx_init(&x, 64, FX_MINOR);
	fx_connect(&x);
	fx_fault(&x, 3);
	assert_int_equal(fx_map_kind(&x, TLM_MAP_LIVE, 0, true, mixed, 4), 0);
	assert_int_equal(fx_pages(&x, 20, 8, 0, 0), 0);
	fx_fault(&x, 9);                                   /* ZERO in the live map */
	fx_fault(&x, 21);                                  /* pre-sent */
	fx_work(&x);
	assert_nothing_placed(&x);
	assert_true(demanded(&x, 3) && demanded(&x, 9) && demanded(&x, 21));
	assert_int_equal(x.l.ndem, 3);
	assert_int_equal(fx_map_kind(&x, TLM_MAP_FIX, 0, false, &keep32, 1), 0);
	fx_work(&x);
	assert_nothing_placed(&x);
	assert_int_equal(x.r->phase, DST_MAPPING);
	assert_int_equal(fx_cls(&x, 0), 0);                /* no class known yet */
	assert_int_equal(x.r->map.n, 0);
	assert_int_equal(x.r->nfaults, 3);

	assert_int_equal(fx_map_kind(&x, TLM_MAP_FIX, 32, true, &keep32, 1), 0);
	fx_work(&x);
	assert_int_equal(x.r->nfaults, 0);                 /* all three served locally */
	assert_memory_equal(fk_mem(&x.u, 3), fx_tmpl_page(&x, 3), FX_PS);
	assert_true(fx_is_zero(fk_mem(&x.u, 9)));
	assert_memory_equal(fk_mem(&x.u, 21), fx_data(21), FX_PS);
	assert_int_equal(x.r->n_present, 21);              /* 3, 8..27 */
	assert_int_equal(x.r->n_tmpl_left, 7);             /* 0..7 but 3: the kernel's */
	assert_int_equal(x.l.ndem, 3);
	fx_fini(&x);
}

/* Pre-sent pages under KEEP are placed from the stage, consecutive copies in one COPY; a
 * fault on one is served at once; a newer copy replaced the older; nothing is demanded
 * and the region completes after DONE; the stage's memory is back in the pool. */
static void test_keep_placed_from_stage(void **state)
{
	struct fx x;

	live1_presented(&x, 1);
	assert_int_equal(fx_pages(&x, 24, 1, 2, 0), 0);    /* written again, pre-sent again */
	assert_int_equal(x.r->stage.held, 8);
	assert_int_equal(x.r->st.stage.received, 9);
	assert_int_equal(fx_map_kind(&x, TLM_MAP_FIX, 0, true, &keep64, 1), 0);
	assert_nothing_placed(&x);
	fx_fault(&x, 22);
	assert_int_equal(fk_count(&x.u, FK_COPY), 1);
	assert_int_equal(fx_state(&x, 22), DST_PRESENT);
	assert_memory_equal(fk_mem(&x.u, 22), fx_data_v(22, 1), FX_PS);
	assert_int_equal(x.r->st.lat_local.count, 1);
	fx_work(&x);
	assert_int_equal(fk_count(&x.u, FK_COPY), 3);      /* 20..21, 23..27 */
	assert_int_equal(fk_nth(&x.u, FK_COPY, 2)->page, 23);
	assert_int_equal(fk_nth(&x.u, FK_COPY, 2)->n, 5);
	for (uint64_t p = 20; p < 28; p++)
		assert_memory_equal(fk_mem(&x.u, p), fx_data_v(p, p == 24 ? 2 : 1), FX_PS);
	assert_int_equal(x.l.ndem, 0);
	assert_int_equal(x.r->st.stage.placed, 8);
	assert_int_equal(x.r->st.stage.invalidated, 1);
	assert_int_equal(x.r->stage.held, 0);
	assert_int_equal(x.pool.used, 0);
	assert_int_equal(x.r->st.placed_by_class[TLM_CLASS_DATA], 8);
	fx_done(&x);
	fx_work(&x);
	assert_int_equal(x.r->phase, DST_COMPLETE);
	assert_int_equal(x.l.ndem, 0);
	fx_fini(&x);
}

/* The fix says DATA again for a pre-sent page (written after it was sent): its copy is
 * dropped at once, never placed; the page waits for a new PAGE and gets that content. */
static void test_fix_data_again_waits(void **state)
{
	const struct tlm_run fix[] = {
		{ TLM_CLASS_KEEP, 22, 0 }, { TLM_CLASS_DATA, 1, 0 }, { TLM_CLASS_KEEP, 41, 0 },
	};
	struct fx x;

	live1_presented(&x, 0);
	assert_int_equal(fx_map_kind(&x, TLM_MAP_FIX, 0, true, fix, 3), 0);
	assert_int_equal(x.r->stage.held, 7);
	assert_false(dst_stage_has(&x.r->stage, 22));
	assert_int_equal(x.r->st.stage.invalidated, 1);
	fx_work(&x);
	assert_int_equal(fx_state(&x, 22), DST_MISSING);
	assert_int_equal(fx_state(&x, 23), DST_PRESENT);
	fx_fault(&x, 22);
	assert_int_equal(x.l.ndem, 1);
	assert_int_equal(x.l.dem[0], 22);
	assert_int_equal(fx_pages(&x, 22, 1, 1, 0), 0);    /* the bulk stream's copy */
	assert_int_equal(fx_state(&x, 22), DST_PRESENT);
	assert_memory_equal(fk_mem(&x.u, 22), fx_data_v(22, 1), FX_PS);
	assert_int_equal(x.r->st.stage.placed, 7);
	assert_int_equal(x.r->nfaults, 0);
	fx_fini(&x);
}

/* The fix turns pre-sent DATA pages into ZERO, TEMPLATE and REF: placed as such (the
 * TEMPLATE one left to the kernel, which maps the template's page at completion), their
 * copies dropped. */
static void test_fix_changes_class(void **state)
{
	const struct tlm_run fix[] = {
		{ TLM_CLASS_KEEP, 20, 0 }, { TLM_CLASS_ZERO, 1, 0 }, { TLM_CLASS_TEMPLATE, 1, 0 },
		{ TLM_CLASS_REF, 1, 50 }, { TLM_CLASS_KEEP, 41, 0 },
	};
	struct fx x;

	live1_presented(&x, 0);
	assert_int_equal(fx_map_kind(&x, TLM_MAP_FIX, 0, true, fix, 5), 0);
	assert_int_equal(x.r->stage.held, 5);
	assert_int_equal(x.r->st.stage.invalidated, 3);
	fx_work(&x);
	assert_true(fx_is_zero(fk_mem(&x.u, 20)));
	assert_int_equal(fx_state(&x, 21), DST_MISSING);
	assert_memory_equal(fk_mem(&x.u, 22), fx_tmpl_page(&x, 50), FX_PS);
	assert_memory_equal(fk_mem(&x.u, 23), fx_data(23), FX_PS);
	assert_int_equal(fx_cls(&x, 20), TLM_CLASS_ZERO);
	assert_int_equal(fx_cls(&x, 21), TLM_CLASS_TEMPLATE);
	assert_int_equal(fx_cls(&x, 22), TLM_CLASS_REF);
	assert_int_equal(x.r->st.pages_by_class[TLM_CLASS_DATA], 5);
	assert_int_equal(x.r->st.stage.placed, 5);
	assert_int_equal(x.r->n_present, 43);
	assert_int_equal(x.r->n_tmpl_left, 21);             /* 0..19, 21 */
	fx_done(&x);
	fx_work(&x);
	assert_int_equal(x.r->phase, DST_COMPLETE);
	assert_int_equal(fk_count(&x.u, FK_CONT), 0);
	assert_memory_equal(fk_mem(&x.u, 21), fx_tmpl_page(&x, 21), FX_PS);
	fx_fini(&x);
}

/* The live map says TEMPLATE, the fix says DATA (the guest wrote the page after the
 * live map): until the final fix frame the page is nothing (a fault on it is demanded,
 * never CONTINUEd); after it, it is DATA: never counted as left to the kernel, demanded
 * after DONE, and the region completes only once its PAGE is placed. */
static void test_fix_template_to_data(void **state)
{
	const struct tlm_run fix[] = {
		{ TLM_CLASS_KEEP, 5, 0 }, { TLM_CLASS_DATA, 1, 0 }, { TLM_CLASS_KEEP, 58, 0 },
	};
	struct fx x;

	live1_presented(&x, 0);
	fx_fault(&x, 5);
	fx_work(&x);
	assert_int_equal(fk_count(&x.u, FK_CONT), 0);
	assert_true(demanded(&x, 5));
	assert_int_equal(x.r->n_tmpl_left, 0);             /* no class known before the fix */
	assert_int_equal(fx_map_kind(&x, TLM_MAP_FIX, 0, true, fix, 3), 0);
	fx_work(&x);
	assert_int_equal(fx_cls(&x, 5), TLM_CLASS_DATA);
	assert_int_equal(x.r->n_tmpl_left, 19);            /* 0..19 but 5 */
	assert_int_equal(fk_count(&x.u, FK_CONT), 0);
	fx_done(&x);
	fx_work(&x);
	assert_int_equal(x.r->phase, DST_FETCHING);        /* 5 still to come */
	assert_int_equal(fx_state(&x, 5), DST_REQUESTED);
	assert_int_equal(fx_page(&x, 5, FX_URGENT), 0);
	fx_work(&x);
	assert_int_equal(x.r->phase, DST_COMPLETE);
	assert_memory_equal(fk_mem(&x.u, 5), fx_data(5), FX_PS);
	assert_int_equal(x.r->nfaults, 0);
	for (uint64_t p = 0; p < 20; p++)
		if (p != 5)
			assert_memory_equal(fk_mem(&x.u, p), fx_tmpl_page(&x, p), FX_PS);
	assert_int_equal(fk_count(&x.u, FK_CONT), 0);
	fx_fini(&x);
}

/* A pre-sent page with a bad checksum is never held, and the older copy it was meant to
 * replace goes with it; after DONE the page is demanded. */
static void test_presend_bad_checksum(void **state)
{
	struct fx x;

	live1_presented(&x, 0);
	assert_int_equal(fx_pages(&x, 24, 2, 1, FX_BADSUM), 0);   /* 24 bad, 25 good */
	assert_int_equal(x.r->st.stage.dropped_badsum, 1);
	assert_int_equal(x.r->stage.held, 7);
	assert_false(dst_stage_has(&x.r->stage, 24));
	assert_int_equal(x.r->st.stage.invalidated, 2);           /* 24 dropped, 25 replaced */
	assert_int_equal(fx_map_kind(&x, TLM_MAP_FIX, 0, true, &keep64, 1), 0);
	fx_work(&x);
	assert_int_equal(fx_state(&x, 24), DST_MISSING);
	for (size_t i = 0; i < x.u.ncalls; i++)
		assert_false(x.u.calls[i].op == FK_COPY && x.u.calls[i].page <= 24 &&
			     x.u.calls[i].page + x.u.calls[i].n > 24);
	assert_memory_equal(fk_mem(&x.u, 25), fx_data_v(25, 1), FX_PS);
	assert_int_equal(x.r->phase, DST_FETCHING);        /* not the source's PAGE error */
	assert_int_equal(x.r->st.checksum_errors, 0);
	fx_done(&x);
	fx_work(&x);
	assert_int_equal(x.l.ndem, 1);
	assert_int_equal(x.l.dem[0], 24);
	assert_int_equal(fx_page(&x, 24, FX_URGENT), 0);
	fx_work(&x);
	assert_int_equal(x.r->phase, DST_COMPLETE);
	fx_fini(&x);
}

/* --stage-max is shared by the regions: what does not fit is dropped (counted) and,
 * after DONE, demanded; placed copies give their memory back; 0 holds nothing. */
static void test_stage_full(void **state)
{
	const struct tlm_run live = { TLM_CLASS_DATA, 128, 0 }, keep = { TLM_CLASS_KEEP, 128, 0 };
	const struct tlm_run live16 = { TLM_CLASS_DATA, 16, 0 };
	struct fx x, y;

	fx_init(&x, 128, FX_NOTMPL);
	x.pool.max = DST_STAGE_CHUNK * FX_PS;              /* one chunk: 64 pages */
	fx_init(&y, 16, FX_NOTMPL);
	y.r->stage.pool = &x.pool;                         /* the same daemon */
	fx_connect(&x);
	fx_connect(&y);
	assert_int_equal(fx_map_kind(&x, TLM_MAP_LIVE, 0, true, &live, 1), 0);
	assert_int_equal(fx_map_kind(&y, TLM_MAP_LIVE, 0, true, &live16, 1), 0);
	assert_int_equal(fx_pages(&x, 0, 64, 0, 0), 0);
	assert_int_equal(fx_pages(&x, 64, 64, 0, 0), 0);
	assert_int_equal(fx_pages(&y, 0, 16, 0, 0), 0);
	assert_int_equal(x.r->stage.held, 64);
	assert_int_equal(x.r->st.stage.dropped_full, 64);
	assert_int_equal(y.r->st.stage.dropped_full, 16);
	assert_int_equal(x.pool.used, x.pool.max);
	assert_int_equal(fx_map_kind(&x, TLM_MAP_FIX, 0, true, &keep, 1), 0);
	fx_work(&x);
	assert_int_equal(x.r->st.stage.placed, 64);
	assert_int_equal(x.pool.used, 0);
	assert_int_equal(fx_pages(&y, 0, 16, 0, 0), 0);    /* room again */
	assert_int_equal(y.r->stage.held, 16);
	fx_done(&x);
	fx_work(&x);
	assert_int_equal(x.l.ndem, 64);
	assert_int_equal(x.l.dem[0], 64);
	for (uint64_t p = 64; p < 128; p++)
		assert_int_equal(fx_page(&x, p, FX_URGENT), 0);
	fx_work(&x);
	assert_int_equal(x.r->phase, DST_COMPLETE);
	fx_fini(&y);                                       /* its copies go back too */
	assert_int_equal(x.pool.used, 0);
	fx_fini(&x);

	fx_init(&x, 16, FX_NOTMPL);
	x.pool.max = 0;
	fx_connect(&x);
	assert_int_equal(fx_map_kind(&x, TLM_MAP_LIVE, 0, true, &live16, 1), 0);
	assert_int_equal(fx_pages(&x, 0, 16, 0, 0), 0);
	assert_int_equal(x.r->stage.held, 0);
	assert_int_equal(x.r->st.stage.dropped_full, 16);
	assert_null(x.r->stage.idx);
	fx_fini(&x);
}

/* The bulk session lost before the final fix frame: live map and copies gone, a fix
 * frame on the next session is refused; a whole map after a live map drops them too;
 * after the final fix frame the copies outlive the session. */
static void test_session_lost_before_fix(void **state)
{
	const struct tlm_run keep10 = { TLM_CLASS_KEEP, 10, 0 };
	struct fx x;

	live1_presented(&x, 0);
	assert_int_equal(fx_map_kind(&x, TLM_MAP_FIX, 0, false, &keep10, 1), 0);
	fx_disconnect(&x);
	assert_int_equal(x.r->stage.held, 0);
	assert_int_equal(x.r->st.stage.invalidated, 8);
	assert_int_equal(x.pool.used, 0);
	assert_int_equal(x.r->lv.state, DST_LIVE_NONE);
	assert_null(x.r->lv.live.run);
	assert_null(x.r->lv.fix.run);
	fx_connect(&x);
	assert_int_equal(fx_map_kind(&x, TLM_MAP_FIX, 0, true, &keep64, 1), -EPROTO);
	assert_string_equal(x.err, "CLASS_MAP: fix map without a live map");

	assert_int_equal(fx_map_kind(&x, TLM_MAP_LIVE, 0, true, live1, 3), 0);
	assert_int_equal(fx_pages(&x, 20, 1, 0, 0), 0);
	assert_int_equal(fx_map(&x, 0, true, live1, 3), 0);
	assert_int_equal(x.r->stage.held, 0);
	assert_int_equal(x.r->st.stage.invalidated, 9);
	assert_string_equal(x.r->map_kind, "whole");
	assert_int_equal(fx_pages(&x, 20, 1, 3, 0), 0);    /* placed, not staged */
	assert_int_equal(fx_state(&x, 20), DST_PRESENT);
	assert_memory_equal(fk_mem(&x.u, 20), fx_data_v(20, 3), FX_PS);
	fx_fini(&x);

	live1_presented(&x, 0);
	assert_int_equal(fx_map_kind(&x, TLM_MAP_FIX, 0, true, &keep64, 1), 0);
	fx_disconnect(&x);
	assert_int_equal(x.r->stage.held, 8);
	fx_connect(&x);                                    /* resumed: the rest at once */
	fx_work(&x);
	assert_int_equal(x.r->st.stage.placed, 8);
	assert_int_equal(x.l.ndem, 0);
	assert_int_equal(x.r->phase, DST_COMPLETE);
	fx_fini(&x);
}

/* A copy whose page the guest discards, that a demand reply placed, or that turns out to
 * be mapped already (EEXIST), is freed and counted invalidated, not placed. */
static void test_copy_freed_otherwise(void **state)
{
	struct fx x;

	live1_presented(&x, 0);
	fx_fault(&x, 21);                                  /* before the fix: demanded */
	assert_int_equal(fx_page(&x, 21, FX_URGENT), 0);   /* and placed from the reply */
	assert_false(dst_stage_has(&x.r->stage, 21));
	fx_remove(&x, 26, 2);
	assert_int_equal(x.r->stage.held, 5);
	assert_int_equal(x.r->st.stage.invalidated, 3);
	assert_int_equal(fx_map_kind(&x, TLM_MAP_FIX, 0, true, &keep64, 1), 0);
	x.u.mapped[24] = 1;                                /* EEXIST: never placed */
	fx_work(&x);
	assert_int_equal(x.r->st.stage.placed, 4);
	assert_int_equal(x.r->st.stage.invalidated, 4);
	assert_int_equal(x.r->st.eexist, 1);
	assert_int_equal(x.r->stage.held, 0);
	assert_int_equal(fx_state(&x, 26), DST_REMOVED);
	assert_true(fx_is_zero(fk_mem(&x.u, 26)));
	assert_int_equal(fk_pages(&x.u, FK_COPY), 5);      /* 21 by the reply, 4 staged */
	fx_fini(&x);
}

/* Part of a whole map came on a session that broke (pages 20..27 known DATA, swept
 * past); the next session brings a live map and copies: a fault on one is still
 * demanded and the sweep leaves them until the final fix frame; the fault is then
 * served from its copy, and after DONE the finish sweep places the others. */
static void test_known_data_waits_for_fix(void **state)
{
	struct fx x;

	fx_init(&x, 64, FX_MINOR);
	fx_connect(&x);
	assert_int_equal(fx_map(&x, 0, false, live1, 2), 0);
	fx_work(&x);
	assert_int_equal(x.r->n_present, 0);               /* TEMPLATE 0..19: the kernel's */
	assert_int_equal(x.r->n_tmpl_left, 20);
	fx_disconnect(&x);
	fx_connect(&x);
	assert_int_equal(fx_map_kind(&x, TLM_MAP_LIVE, 0, true, live1, 3), 0);
	assert_int_equal(fx_pages(&x, 20, 8, 1, 0), 0);
	fx_fault(&x, 22);
	fx_work(&x);
	assert_int_equal(x.l.ndem, 1);
	assert_int_equal(fx_state(&x, 22), DST_REQUESTED);
	assert_int_equal(fk_count(&x.u, FK_COPY), 0);
	assert_int_equal(fx_map_kind(&x, TLM_MAP_FIX, 0, true, &keep64, 1), 0);
	fx_work(&x);
	assert_memory_equal(fk_mem(&x.u, 22), fx_data_v(22, 1), FX_PS);
	assert_int_equal(x.r->nfaults, 0);
	assert_int_equal(fx_state(&x, 23), DST_MISSING);   /* the sweep was past them */
	fx_done(&x);
	fx_work(&x);
	assert_int_equal(x.r->st.stage.placed, 8);
	assert_int_equal(x.l.ndem, 1);
	assert_int_equal(x.r->phase, DST_COMPLETE);
	fx_fini(&x);
}

static void expect_refused(const char *why, int (*steps)(struct fx *x))
{
	struct fx x;

	fx_init(&x, 64, FX_MINOR);
	fx_connect(&x);
	assert_int_equal(steps(&x), -EPROTO);
	if (!strstr(x.err, why))
		fail_msg("refused for '%s', expected '%s'", x.err, why);
	assert_nothing_placed(&x);
	fx_fini(&x);
}

static int fix_first(struct fx *x)
{
	return fx_map_kind(x, TLM_MAP_FIX, 0, true, &keep64, 1);
}

static int fix_early(struct fx *x)
{
	assert_int_equal(fx_map_kind(x, TLM_MAP_LIVE, 0, false, live1, 1), 0);
	return fix_first(x);
}

static int live_twice(struct fx *x)
{
	assert_int_equal(fx_map_kind(x, TLM_MAP_LIVE, 0, true, live1, 3), 0);
	return fx_map_kind(x, TLM_MAP_LIVE, 0, true, live1, 3);
}

static int live_restart(struct fx *x)
{
	assert_int_equal(fx_map_kind(x, TLM_MAP_LIVE, 0, false, live1, 1), 0);
	return fx_map_kind(x, TLM_MAP_LIVE, 0, true, live1, 3);
}

static int live_not_at_0(struct fx *x)
{
	return fx_map_kind(x, TLM_MAP_LIVE, 20, true, live1 + 1, 2);
}

static int live_after_whole(struct fx *x)
{
	assert_int_equal(fx_map(x, 0, false, live1, 1), 0);
	return fx_map_kind(x, TLM_MAP_LIVE, 0, true, live1, 3);
}

static int live_short(struct fx *x)
{
	return fx_map_kind(x, TLM_MAP_LIVE, 0, true, live1, 2);
}

static int live_keep(struct fx *x)
{
	return fx_map_kind(x, TLM_MAP_LIVE, 0, true, &keep64, 1);
}

static int fix_gap(struct fx *x)
{
	const struct tlm_run keep10 = { TLM_CLASS_KEEP, 10, 0 };

	assert_int_equal(fx_map_kind(x, TLM_MAP_LIVE, 0, true, live1, 3), 0);
	assert_int_equal(fx_map_kind(x, TLM_MAP_FIX, 0, false, &keep10, 1), 0);
	return fx_map_kind(x, TLM_MAP_FIX, 12, true, &keep10, 1);
}

static int fix_short(struct fx *x)
{
	const struct tlm_run keep10 = { TLM_CLASS_KEEP, 10, 0 };

	assert_int_equal(fx_map_kind(x, TLM_MAP_LIVE, 0, true, live1, 3), 0);
	return fx_map_kind(x, TLM_MAP_FIX, 0, true, &keep10, 1);
}

/* A page a demand reply said was DATA, which the fix makes ZERO: caught at the final
 * fix frame, like any map that contradicts the region. */
static int fix_contradicts(struct fx *x)
{
	const struct tlm_run fix[] = { { TLM_CLASS_KEEP, 21, 0 }, { TLM_CLASS_ZERO, 43, 0 } };

	assert_int_equal(fx_map_kind(x, TLM_MAP_LIVE, 0, true, live1, 3), 0);
	fx_fault(x, 21);
	assert_int_equal(fx_page(x, 21, FX_URGENT), 0);
	x->u.ncalls = 0;                                   /* that placement was right */
	x->r->n_present = 0;
	return fx_map_kind(x, TLM_MAP_FIX, 0, true, fix, 2);
}

static void test_frames_refused(void **state)
{
	expect_refused("CLASS_MAP: fix map without a live map", fix_first);
	expect_refused("CLASS_MAP: fix map without a complete live map", fix_early);
	expect_refused("CLASS_MAP: a second live map in this bulk session", live_twice);
	expect_refused("CLASS_MAP: a second live map in this bulk session", live_restart);
	expect_refused("live map frame starts at page 20, expected 0", live_not_at_0);
	expect_refused("live map after the class map in this bulk session", live_after_whole);
	expect_refused("live map ends at page 28, the region has 64", live_short);
	expect_refused("CLASS_MAP: bad run (class 0, 64 pages) at page 0", live_keep);
	expect_refused("fix map frame starts at page 12, expected 10", fix_gap);
	expect_refused("fix map ends at page 10, the region has 64", fix_short);
	expect_refused("CLASS_MAP says page 21 is zero, earlier it was data", fix_contradicts);
}

/* The stats say how the map came, when the fix map was complete, and what the stage did
 * (received = placed + invalidated + held). */
static void test_stage_stats(void **state)
{
	struct tlm_sbuf b;
	struct tlm_json j;
	char kind[32];
	uint64_t v;
	struct fx x;

	live1_presented(&x, 0);
	assert_int_equal(fx_pages(&x, 20, 1, 1, FX_BADSUM), 0);
	assert_int_equal(fx_map_kind(&x, TLM_MAP_FIX, 0, true, &keep64, 1), 0);
	fx_fault(&x, 23);
	tlm_sbuf_init(&b);
	tlm_json_init(&j, &b);
	dst_region_stats_json(x.r, &j);
	assert_int_equal(tt_json_str(b.p, NULL, "map", kind, sizeof(kind)), 0);
	assert_string_equal(kind, "live+fix");
	assert_int_equal(tt_json_u64(b.p, "stage", "held", &v), 0);
	assert_int_equal(v, 6);
	assert_int_equal(tt_json_u64(b.p, "stage", "held_bytes", &v), 0);
	assert_int_equal(v, 6 * FX_PS);
	assert_int_equal(tt_json_u64(b.p, "stage", "received", &v), 0);
	assert_int_equal(v, 8);
	assert_int_equal(tt_json_u64(b.p, "stage", "placed", &v), 0);
	assert_int_equal(v, 1);
	assert_int_equal(tt_json_u64(b.p, "stage", "invalidated", &v), 0);
	assert_int_equal(v, 1);
	assert_int_equal(tt_json_u64(b.p, "stage", "dropped_full", &v), 0);
	assert_int_equal(v, 0);
	assert_int_equal(tt_json_u64(b.p, "stage", "dropped_badsum", &v), 0);
	assert_int_equal(v, 1);
	assert_non_null(strstr(b.p, "\"fix_map_received_ms\":"));
	tlm_sbuf_fini(&b);
	fx_fini(&x);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_keep_all_like_whole),
		cmocka_unit_test(test_nothing_placed_before_final_fix),
		cmocka_unit_test(test_keep_placed_from_stage),
		cmocka_unit_test(test_fix_data_again_waits),
		cmocka_unit_test(test_fix_changes_class),
		cmocka_unit_test(test_fix_template_to_data),
		cmocka_unit_test(test_presend_bad_checksum),
		cmocka_unit_test(test_stage_full),
		cmocka_unit_test(test_session_lost_before_fix),
		cmocka_unit_test(test_copy_freed_otherwise),
		cmocka_unit_test(test_known_data_waits_for_fix),
		cmocka_unit_test(test_frames_refused),
		cmocka_unit_test(test_stage_stats),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
