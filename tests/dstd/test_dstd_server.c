/*
 * test_dstd_server.c — tlm-uffd-server against a fake source and a fake glue played by
 * this process (real daemon binary, real userfaultfd, real TCP and unix sockets).
 *
 * Page layout of the 64-page region (template page k = h_tmpl_page(k)):
 *   0..15   TEMPLATE   (page 5 faults before the class map: answered by REF(k=5))
 *   16..23  ZERO
 *   24..31  REF(40..47)
 *   32..47  DATA       (33 faults before the map; 40 arrives first with a bad checksum;
 *                       45 is discarded with MADV_DONTNEED and must read as zero)
 *   48..63  TEMPLATE
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "dstd_harness.h"
#include "tlm_test.h"

#define NP 64

struct fixture {
	struct h_env env;
	struct tlm_key key;
	struct h_src src;
	struct h_guest guest;
	struct h_page *pages;
	uint64_t npages;
	char source[64];
	struct h_touch touch[4];       /* owned here: a failed test must not leave a thread
					  writing into its dead stack frame */
	unsigned ntouch;
};

static uint8_t small_data[NP][H_PS];

static void layout_small(struct h_page *pg)
{
	for (uint64_t i = 0; i < NP; i++) {
		struct h_page *p = &pg[i];

		memset(p, 0, sizeof(*p));
		p->data = small_data[i];
		memset(p->data, 0, H_PS);
		if (i < 16 || i >= 48) {
			p->cls = TLM_CLASS_TEMPLATE;
			p->k = i;
			h_tmpl_page(i, p->data);
		} else if (i < 24) {
			p->cls = TLM_CLASS_ZERO;
		} else if (i < 32) {
			p->cls = TLM_CLASS_REF;
			p->k = 40 + (i - 24);
			h_tmpl_page(p->k, p->data);
		} else {
			uint64_t x = i * 7919 + 1;

			p->cls = TLM_CLASS_DATA;
			for (unsigned b = 0; b < H_PS; b += 8) {
				x = x * 6364136223846793005ull + 1442695040888963407ull;
				memcpy(p->data + b, &x, 8);
			}
		}
	}
}

static int fx_alloc(void **state)
{
	struct fixture *f = calloc(1, sizeof(*f));

	if (!f)
		return -1;
	h_guest_init(&f->guest);
	*state = f;
	return 0;
}

/* Template, key, fake source, daemon; the guest mapped and registered (not sent). */
static int fx_setup(struct fixture *f, uint64_t npages, bool with_template,
		    const char *const *extra)
{
	f->npages = npages;
	f->pages = calloc(npages, sizeof(*f->pages));
	if (!f->pages || h_env_init(&f->env) || h_make_template(&f->env, npages) ||
	    h_load_key(&f->env, &f->key))
		return -1;
	h_watchdog(&f->env, 90);
	if (h_src_start(&f->src, &f->key, f->pages, npages))
		return -1;
	snprintf(f->source, sizeof(f->source), "127.0.0.1:%d", f->src.port);
	if (h_daemon_start(&f->env, f->source, with_template, extra)) {
		h_dump_log(&f->env);
		return -1;
	}
	return h_guest_map(&f->guest, &f->env, npages);
}

/* Runs after every test, passed or failed: daemon, source, then our uffd copy (which
 * lets any thread still paused on a fault go), the threads, the mapping, the files. */
static int fx_free(void **state)
{
	struct fixture *f = *state;

	if (f->env.daemon > 0)
		h_daemon_stop(&f->env, SIGTERM, 3000);
	h_src_stop(&f->src);
	tlm_uffd_close(&f->guest.uffd);
	for (unsigned i = 0; i < f->ntouch; i++)
		if (!h_touch_wait(&f->touch[i], 5000))
			fprintf(stderr, "a touch thread is still blocked\n");
	h_guest_unmap(&f->guest);
	h_env_fini(&f->env);
	alarm(0);
	free(f->pages);
	free(f);
	return 0;
}

static struct h_touch *fx_touch(struct fixture *f, const void *addr)
{
	struct h_touch *t;

	if (f->ntouch == sizeof(f->touch) / sizeof(f->touch[0]))
		fail_msg("too many touch threads");
	t = &f->touch[f->ntouch++];
	h_touch_start(t, addr);
	return t;
}

static bool src_ready(struct h_src *s) { return s->ready; }
static bool src_held(struct h_src *s) { return s->held; }
static bool src_two_sessions(struct h_src *s) { return s->ready && s->sessions >= 2; }

static uint8_t *ram_page(struct fixture *f, uint64_t i)
{
	return f->guest.ram + i * H_PS;
}

/* Touch page i in a thread; assert it completes and equals what the source holds. */
static void touch_expect(struct fixture *f, uint64_t i, const uint8_t *want)
{
	struct h_touch *t = fx_touch(f, ram_page(f, i));

	if (!h_touch_wait(t, 5000)) {
		h_dump_log(&f->env);
		fail_msg("touching page %llu did not complete", (unsigned long long)i);
	}
	assert_memory_equal(t->data, want, H_PS);
}

static void expect_glue_done(struct fixture *f)
{
	struct tlm_local_msg m;
	int fd = -1, rc = h_guest_recv(&f->guest, &m, &fd, 10000);

	if (rc || m.type != TLM_LOCAL_DONE) {
		h_dump_log(&f->env);
		fail_msg("no DONE from the daemon (rc %d, type %u, text '%s')", rc,
			 rc ? 0 : m.type, rc ? "" : m.text);
	}
	assert_int_equal(fd, -1);
}

/* After DONE: every page has the right bytes; TEMPLATE pages on the template's own
 * page-cache frame, REF/DATA pages private copies. Every page is present but TEMPLATE
 * ones nothing faulted on: the daemon left those to the kernel, which maps the frame
 * when this reads them (a read that would hang if the region were still registered).
 * Returns how many TEMPLATE pages were found not mapped (all looked at before the first
 * read: the kernel's fault-around maps a read page's neighbours too). */
static uint64_t verify_region(struct fixture *f, const uint64_t *zeroed, size_t nzeroed)
{
	uint8_t *shared = mmap(NULL, f->npages * H_PS, PROT_READ, MAP_SHARED,
			       f->guest.tmpl_fd, 0);
	static const uint8_t zero[H_PS];
	uint64_t left = 0;

	assert_true(shared != MAP_FAILED);
	for (uint64_t i = 0; i < f->npages; i++) {
		bool z = false;

		for (size_t k = 0; k < nzeroed; k++)
			z |= zeroed[k] == i;
		if (h_pagemap(ram_page(f, i)) & H_PM_PRESENT)
			continue;
		if (z || f->pages[i].cls != TLM_CLASS_TEMPLATE)
			fail_msg("page %llu not present after DONE", (unsigned long long)i);
		left++;
	}
	for (uint64_t i = 0; i < f->npages; i++) {
		const struct h_page *p = &f->pages[i];
		uint64_t pm;
		bool z = false;

		for (size_t k = 0; k < nzeroed; k++)
			z |= zeroed[k] == i;
		assert_memory_equal(ram_page(f, i), z ? zero : p->data, H_PS);
		pm = h_pagemap(ram_page(f, i));
		if (z || p->cls == TLM_CLASS_ZERO)
			continue;
		if (p->cls == TLM_CLASS_TEMPLATE) {
			volatile uint8_t touch = shared[i * H_PS];
			uint64_t spm = h_pagemap(shared + i * H_PS);

			(void)touch;
			if (!(pm & H_PM_FILE) || H_PM_PFN(pm) != H_PM_PFN(spm))
				fail_msg("TEMPLATE page %llu is not the template's frame (pm %llx "
					 "template %llx)", (unsigned long long)i,
					 (unsigned long long)pm, (unsigned long long)spm);
		} else if (pm & H_PM_FILE) {
			fail_msg("%s page %llu is a file page", tlm_class_name(p->cls),
				 (unsigned long long)i);
		}
	}
	munmap(shared, f->npages * H_PS);
	return left;
}

static uint64_t stat_u64(struct fixture *f, const char *after, const char *key)
{
	char *json = NULL;
	uint64_t v = UINT64_MAX;

	assert_int_equal(h_ctl(&f->env, "stats vm1", &json), 0);
	if (tt_json_u64(json, after, key, &v))
		fail_msg("stats: no %s%s%s in %s", after ? after : "", after ? " " : "", key, json);
	free(json);
	return v;
}

static int lines(const char *s)
{
	int n = 0;

	for (; *s; s++)
		n += *s == '\n';
	return n;
}

/* ---- tests --------------------------------------------------------------------------------- */

static void test_bad_options(void **state)
{
	const char *dir = getenv("TLM_BIN_DIR");
	char bin[512], err[2048];
	const char *bogus[] = { bin, "--bogus", NULL };
	const char *nosock[] = { bin, "--ctl", "/tmp/x", "--key", "/tmp/k", NULL };
	const char *level[] = { bin, "--sock", "/tmp/a", "--ctl", "/tmp/b", "--key", "/tmp/k",
				"--log-level", "loud", NULL };
	const char *src[] = { bin, "--sock", "/tmp/a", "--ctl", "/tmp/b", "--key", "/tmp/k",
			      "--source", "nohostport", NULL };
	const char *outage[] = { bin, "--sock", "/tmp/a", "--ctl", "/tmp/b", "--key", "/tmp/k",
				 "--outage-limit", "0", NULL };
	const char *stage[] = { bin, "--sock", "/tmp/a", "--ctl", "/tmp/b", "--key", "/tmp/k",
				"--stage-max", "lots", NULL };
	const char *netio[] = { bin, "--sock", "/tmp/a", "--ctl", "/tmp/b", "--key", "/tmp/k",
				"--net-io", "epoll", NULL };
	const char *rcvbuf[] = { bin, "--sock", "/tmp/a", "--ctl", "/tmp/b", "--key", "/tmp/k",
				 "--bulk-rcvbuf", "-1", NULL };
	const char *around[] = { bin, "--sock", "/tmp/a", "--ctl", "/tmp/b", "--key", "/tmp/k",
				 "--fault-around", "24", NULL };
	const char *help[] = { bin, "--help", NULL };

	snprintf(bin, sizeof(bin), "%s/tlm-uffd-server", dir);
	assert_int_equal(h_run_daemon_args(bogus, err, sizeof(err)), 2);
	assert_non_null(strstr(err, "--bogus"));
	assert_int_equal(lines(err), 1);
	assert_int_equal(h_run_daemon_args(nosock, err, sizeof(err)), 2);
	assert_non_null(strstr(err, "--sock is required"));
	assert_int_equal(h_run_daemon_args(level, err, sizeof(err)), 2);
	assert_non_null(strstr(err, "loud"));
	assert_int_equal(h_run_daemon_args(src, err, sizeof(err)), 2);
	assert_non_null(strstr(err, "HOST:PORT"));
	assert_int_equal(h_run_daemon_args(outage, err, sizeof(err)), 2);
	assert_non_null(strstr(err, "--outage-limit '0'"));
	assert_int_equal(h_run_daemon_args(stage, err, sizeof(err)), 2);
	assert_non_null(strstr(err, "--stage-max 'lots'"));
	assert_int_equal(h_run_daemon_args(netio, err, sizeof(err)), 2);
	assert_non_null(strstr(err, "--net-io 'epoll': expected uring, syscall or auto"));
	assert_int_equal(lines(err), 1);
	assert_int_equal(h_run_daemon_args(rcvbuf, err, sizeof(err)), 2);
	assert_non_null(strstr(err, "--bulk-rcvbuf '-1'"));
	assert_int_equal(lines(err), 1);
	assert_int_equal(h_run_daemon_args(around, err, sizeof(err)), 2);
	assert_non_null(strstr(err, "--fault-around '24': expected a power of 2, 1..512"));
	assert_int_equal(lines(err), 1);
	assert_int_equal(h_run_daemon_args(help, err, sizeof(err)), 0);
	assert_non_null(strstr(err, "usage: tlm-uffd-server"));
	assert_non_null(strstr(err, "--stage-max MIB"));
}

/* The main scenario: see the top of the file. */
static void test_migration(void **state)
{
	struct fixture *f = *state;
	struct h_touch *t40;
	uint64_t zeroed[] = { 45 };
	static const uint8_t zero[H_PS];

	if (fx_setup(f, NP, true, NULL))
		fail_msg("setup failed");
	layout_small(f->pages);
	f->src.frames_per_map = 2;
	assert_int_equal(h_guest_send_region(&f->guest, &f->env, "vm1", true), 0);
	assert_true(h_src_wait(&f->src, src_ready, 5000));

	/* Before the class map: a DATA page and a TEMPLATE page are demanded. */
	touch_expect(f, 33, f->pages[33].data);
	touch_expect(f, 5, f->pages[5].data);
	assert_true(h_pagemap(ram_page(f, 5)) & H_PM_FILE);
	assert_int_equal(f->src.demands[33], 1);

	/* A discarded page reads as zero, and the DATA that comes later is dropped. */
	assert_int_equal(madvise(ram_page(f, 45), H_PS, MADV_DONTNEED), 0);
	touch_expect(f, 45, zero);

	/* The map and the stream; page 40 comes with a bad checksum and is re-requested. */
	pthread_mutex_lock(&f->src.mu);
	f->src.bad_page_set = true;
	f->src.bad_page = 40;
	f->src.hold_page = 40;
	pthread_mutex_unlock(&f->src.mu);
	h_src_cmd(&f->src, 'G');
	if (!h_src_wait(&f->src, src_held, 5000)) {
		h_dump_log(&f->env);
		fail_msg("page 40 was not re-requested after its checksum mismatch");
	}
	assert_false(h_pagemap(ram_page(f, 40)) & H_PM_PRESENT);
	t40 = fx_touch(f, ram_page(f, 40));
	assert_false(h_touch_wait(t40, 300));       /* waits for a correct copy */
	assert_false(h_pagemap(ram_page(f, 40)) & H_PM_PRESENT);
	h_src_cmd(&f->src, 'R');
	assert_true(h_touch_wait(t40, 5000));
	assert_memory_equal(t40->data, f->pages[40].data, H_PS);

	expect_glue_done(f);
	/* TEMPLATE pages but 5 (faulted before the map): left to the kernel, unmapped. */
	assert_false(h_pagemap(ram_page(f, 10)) & H_PM_PRESENT);
	assert_int_equal(stat_u64(f, "pages", "template_left"), 31);
	assert_int_equal(stat_u64(f, "placed", "template"), 1);
	assert_int_equal(verify_region(f, zeroed, 1), 31);
	assert_int_equal(f->src.demands[40], 1);
	assert_int_equal(stat_u64(f, NULL, "checksum_errors"), 1);
	assert_int_equal(stat_u64(f, "faults", "template"), 0);
	assert_int_equal(stat_u64(f, "classes", "template"), 32);
	assert_int_equal(stat_u64(f, "classes", "data"), 16);
	{
		char *json = NULL;

		assert_int_equal(h_ctl(&f->env, "stats vm1", &json), 0);
		assert_non_null(strstr(json, "\"phase\":\"complete\""));
		free(json);
	}
	assert_int_equal(h_daemon_stop(&f->env, SIGTERM, 3000), 0);
}

/* A region whose template this host does not have is refused with a clear reason. */
static void test_template_missing(void **state)
{
	struct fixture *f = *state;
	struct tlm_local_msg m;
	int fd = -1;

	if (fx_setup(f, NP, false, NULL))
		fail_msg("setup failed");
	layout_small(f->pages);
	assert_int_equal(h_guest_send_region(&f->guest, &f->env, "vm1", true), 0);
	assert_int_equal(h_guest_recv(&f->guest, &m, &fd, 5000), 0);
	assert_int_equal(m.type, TLM_LOCAL_ERROR);
	assert_non_null(strstr(m.text, "not available on this host"));
}

/* Deferred arming: REGION without uffd, `arm vm1`, ARM to the glue, UFFD back. */
static void test_deferred_arm(void **state)
{
	struct fixture *f = *state;
	struct tlm_local_msg m;
	char *reply = NULL;
	int fd = -1;

	if (fx_setup(f, NP, true, NULL))
		fail_msg("setup failed");
	layout_small(f->pages);
	assert_int_equal(h_guest_send_region(&f->guest, &f->env, "vm1", false), 0);
	/* `arm` is refused until the daemon has read the REGION: retry until it is taken. */
	for (uint64_t end = tt_now_ms() + 20000;; tt_sleep_ms(5)) {
		assert_int_equal(h_ctl(&f->env, "arm vm1", &reply), 0);
		if (strstr(reply, "ok arm sent"))
			break;
		if (!strstr(reply, "no region") && !strstr(reply, "not waiting"))
			fail_msg("arm vm1: %s", reply);
		if (tt_now_ms() > end)
			fail_msg("the daemon never took REGION vm1: %s", reply);
		free(reply);
	}
	free(reply);
	assert_int_equal(h_guest_recv(&f->guest, &m, &fd, 5000), 0);
	assert_int_equal(m.type, TLM_LOCAL_ARM);
	m.type = TLM_LOCAL_UFFD;
	m.flags = TLM_REGION_TEMPLATE;
	m.uffd_features = f->guest.uffd.features;
	assert_int_equal(tlm_local_send(f->guest.sock, &m, f->guest.uffd.fd), 0);
	assert_true(h_src_wait(&f->src, src_ready, 5000));
	h_src_cmd(&f->src, 'G');
	expect_glue_done(f);
	verify_region(f, NULL, 0);
	assert_int_equal(h_ctl(&f->env, "arm vm1", &reply), 0);
	assert_non_null(strstr(reply, "error:"));
	free(reply);
}

/* The source drops both sessions: faults wait, the daemon reconnects, all completes. */
static void test_reconnect(void **state)
{
	struct fixture *f = *state;
	struct h_touch *t;

	if (fx_setup(f, NP, true, NULL))
		fail_msg("setup failed");
	layout_small(f->pages);
	assert_int_equal(h_guest_send_region(&f->guest, &f->env, "vm1", true), 0);
	assert_true(h_src_wait(&f->src, src_ready, 5000));
	touch_expect(f, 33, f->pages[33].data);
	h_src_cmd(&f->src, 'X');
	t = fx_touch(f, ram_page(f, 34));
	if (!h_src_wait(&f->src, src_two_sessions, 8000)) {
		h_dump_log(&f->env);
		fail_msg("the daemon did not reconnect");
	}
	assert_true(h_touch_wait(t, 5000));
	assert_memory_equal(t->data, f->pages[34].data, H_PS);
	h_src_cmd(&f->src, 'G');
	expect_glue_done(f);
	verify_region(f, NULL, 0);
	assert_true(stat_u64(f, NULL, "reconnects") >= 1);
}

/*
 * A thread waits on a DATA page whose reply is held back; another thread discards the
 * page meanwhile: the waiter gets a zero page at once, the late DATA is dropped, and
 * with --exit-when-done the daemon exits 0 after completing.
 */
static void test_discard_while_waiting(void **state)
{
	const char *extra[] = { "--exit-when-done", NULL };
	static const uint8_t zero[H_PS];
	uint64_t zeroed[] = { 46 };
	struct fixture *f = *state;
	struct h_touch *t;

	if (fx_setup(f, NP, true, extra))
		fail_msg("setup failed");
	layout_small(f->pages);
	pthread_mutex_lock(&f->src.mu);
	f->src.hold_page = 46;
	pthread_mutex_unlock(&f->src.mu);
	assert_int_equal(h_guest_send_region(&f->guest, &f->env, "vm1", true), 0);
	assert_true(h_src_wait(&f->src, src_ready, 5000));
	t = fx_touch(f, ram_page(f, 46));
	assert_true(h_src_wait(&f->src, src_held, 5000));
	assert_int_equal(madvise(ram_page(f, 46), H_PS, MADV_DONTNEED), 0);
	if (!h_touch_wait(t, 5000)) {
		h_dump_log(&f->env);
		fail_msg("the waiting fault on a discarded page was not answered");
	}
	assert_memory_equal(t->data, zero, H_PS);
	h_src_cmd(&f->src, 'R');
	h_src_cmd(&f->src, 'G');
	expect_glue_done(f);
	verify_region(f, zeroed, 1);
	assert_int_equal(h_daemon_wait(&f->env, 5000), 0);
}

/* The re-sent copy of a corrupt page is corrupt too: the region fails, the glue is told,
 * the page is never placed and the thread touching it stays paused. */
static void test_checksum_twice_fails(void **state)
{
	struct fixture *f = *state;
	struct tlm_local_msg m;
	struct h_touch *t;
	char *json = NULL;
	int fd = -1;

	if (fx_setup(f, NP, true, NULL))
		fail_msg("setup failed");
	layout_small(f->pages);
	f->src.bad_page_set = true;
	f->src.bad_page = 40;
	f->src.bad_always = true;
	assert_int_equal(h_guest_send_region(&f->guest, &f->env, "vm1", true), 0);
	assert_true(h_src_wait(&f->src, src_ready, 5000));
	t = fx_touch(f, ram_page(f, 40));
	assert_int_equal(h_guest_recv(&f->guest, &m, &fd, 5000), 0);
	assert_int_equal(m.type, TLM_LOCAL_ERROR);
	assert_non_null(strstr(m.text, "checksum twice"));
	assert_false(h_touch_wait(t, 500));
	assert_false(h_pagemap(ram_page(f, 40)) & H_PM_PRESENT);
	assert_int_equal(h_ctl(&f->env, "stats vm1", &json), 0);
	assert_non_null(strstr(json, "\"phase\":\"failed\""));
	free(json);
	assert_int_equal(stat_u64(f, NULL, "checksum_errors"), 2);
	/* Release the paused thread: daemon gone and our uffd closed, the kernel lets it in. */
	assert_int_equal(h_daemon_stop(&f->env, SIGTERM, 3000), 0);
	tlm_uffd_close(&f->guest.uffd);
	assert_true(h_touch_wait(t, 5000));
}

/* A source that sends what cannot be true of this region fails it with a clear reason;
 * a page past the end is never placed (page < NP: checked not present). */
static void hostile_source(void **state, const struct tlm_msg *inject, unsigned n,
			   uint64_t page, const char *want)
{
	struct fixture *f = *state;
	struct tlm_local_msg m;
	int fd = -1;

	if (fx_setup(f, NP, true, NULL))
		fail_msg("setup failed");
	layout_small(f->pages);
	f->src.inject = inject;
	f->src.ninject = n;
	assert_int_equal(h_guest_send_region(&f->guest, &f->env, "vm1", true), 0);
	assert_true(h_src_wait(&f->src, src_ready, 5000));
	h_src_cmd(&f->src, 'G');
	assert_int_equal(h_guest_recv(&f->guest, &m, &fd, 5000), 0);
	print_message("daemon: %s\n", m.text);
	assert_int_equal(m.type, TLM_LOCAL_ERROR);
	if (!strstr(m.text, want))
		fail_msg("ERROR '%s', want '%s'", m.text, want);
	if (page < NP)
		assert_false(h_pagemap(ram_page(f, page)) & H_PM_PRESENT);
	assert_int_equal(h_daemon_stop(&f->env, SIGTERM, 3000), 0);
}

/* PAGE for page 64 of a 64-page region (past the end of guest RAM). */
static void test_page_past_end(void **state)
{
	static uint8_t data[H_PS];
	struct tlm_msg m = { .type = TLM_MSG_PAGE };

	m.u.page.page = NP;
	m.u.page.data = data;
	m.u.page.xxh64 = tlm_proto_page_sum(data);
	hostile_source(state, &m, 1, NP, "PAGE for pages 64+1 beyond the region's 64 pages");
}

/* Overlapping class maps: pages 0..3 said ZERO, then TEMPLATE by the real map. The first
 * claim may already be placed (nothing told it apart from the truth then): the point is
 * that the contradiction is caught and the region stops. */
static void test_map_overlap(void **state)
{
	static struct tlm_run zero_run = { TLM_CLASS_ZERO, 4, 0 };
	struct tlm_msg m = { .type = TLM_MSG_CLASS_MAP };

	m.u.class_map.first_page = 0;
	m.u.class_map.nruns = 1;
	m.u.class_map.runs = &zero_run;
	hostile_source(state, &m, 1, UINT64_MAX,
		       "CLASS_MAP says page 0 is template, earlier it was zero");
}

/* A fix map with no live map before it. */
static void test_fix_without_live(void **state)
{
	static struct tlm_run keep = { TLM_CLASS_KEEP, NP, 0 };
	struct tlm_msg m = { .type = TLM_MSG_CLASS_MAP };

	m.u.class_map.nruns = 1;
	m.u.class_map.runs = &keep;
	m.u.class_map.final = true;
	m.u.class_map.kind = TLM_MAP_FIX;
	hostile_source(state, &m, 1, UINT64_MAX, "CLASS_MAP: fix map without a live map");
}

/* Version 3's live phase: a live map, every DATA page pre-sent, a fix map of KEEP, no
 * PAGE after it. With room, the pre-sent pages are placed and nothing is demanded;
 * with --stage-max 0 none is held and all are demanded after DONE. */
static void live_fix_migration(void **state, const char *stage_max, uint64_t placed)
{
	const char *const extra[] = { "--stage-max", stage_max, NULL };
	struct fixture *f = *state;
	char *json = NULL;

	if (fx_setup(f, NP, true, extra))
		fail_msg("setup failed");
	layout_small(f->pages);
	f->src.live = true;
	f->src.frames_per_map = 2;
	assert_int_equal(h_guest_send_region(&f->guest, &f->env, "vm1", true), 0);
	assert_true(h_src_wait(&f->src, src_ready, 5000));
	h_src_cmd(&f->src, 'G');
	expect_glue_done(f);
	verify_region(f, NULL, 0);
	assert_int_equal(stat_u64(f, "stage", "placed"), placed);
	assert_int_equal(stat_u64(f, "stage", "dropped_full"), 16 - placed);
	assert_int_equal(stat_u64(f, NULL, "finish_demanded"), 16 - placed);
	assert_int_equal(stat_u64(f, NULL, "demand_pages"), 16 - placed);
	assert_int_equal(h_ctl(&f->env, "stats vm1", &json), 0);
	assert_non_null(strstr(json, "\"map\":\"live+fix\""));
	free(json);
	assert_int_equal(h_daemon_stop(&f->env, SIGTERM, 3000), 0);
}

static void test_live_fix_migration(void **state)
{
	live_fix_migration(state, "1", 16);
}

static void test_live_fix_no_stage(void **state)
{
	live_fix_migration(state, "0", 0);
}

/* The flags of the VMA holding addr (/proc/self/smaps "VmFlags:"), into out. */
static void vma_flags(const void *addr, char *out, size_t outlen)
{
	FILE *fp = fopen("/proc/self/smaps", "r");
	char line[512];
	bool in = false;

	assert_non_null(fp);
	out[0] = '\0';
	while (fgets(line, sizeof(line), fp)) {
		unsigned long a, b;

		if (sscanf(line, "%lx-%lx ", &a, &b) == 2 && strchr(line, '-') < strchr(line, ' '))
			in = (uintptr_t)addr >= a && (uintptr_t)addr < b;
		else if (in && strncmp(line, "VmFlags:", 8) == 0) {
			line[strcspn(line, "\n")] = '\0';
			snprintf(out, outlen, "%.200s ", line + 8);
			break;
		}
	}
	fclose(fp);
	assert_true(out[0]);
}

/*
 * TEMPLATE pages left to the kernel, on the real kernel: a live migration whose live map
 * calls DATA page 34 TEMPLATE, corrected by the fix map. When the region completes the
 * sweep has CONTINUEd no TEMPLATE page (placed 0, template_left 32), the mapping is no
 * longer registered with userfaultfd, a TEMPLATE page reads as the template's own frame,
 * a write to one gives a private copy and leaves the template file alone, and page 34
 * holds its DATA bytes (demanded after DONE), not the template's.
 */
static void test_template_left_to_kernel(void **state)
{
	struct fixture *f = *state;
	uint8_t want[H_PS], got[H_PS];
	char flags[256];
	uint64_t pm;

	if (fx_setup(f, NP, true, NULL))
		fail_msg("setup failed");
	layout_small(f->pages);
	f->src.live = true;
	f->src.live_wrong_set = true;
	f->src.live_wrong = 34;
	f->src.frames_per_map = 2;
	assert_int_equal(h_guest_send_region(&f->guest, &f->env, "vm1", true), 0);
	assert_true(h_src_wait(&f->src, src_ready, 5000));
	h_src_cmd(&f->src, 'G');
	expect_glue_done(f);

	vma_flags(f->guest.ram, flags, sizeof(flags));
	if (strstr(flags, " um ") || strstr(flags, " ui "))
		fail_msg("the region is still registered with userfaultfd: VmFlags%s", flags);
	assert_int_equal(stat_u64(f, "placed", "template"), 0);
	assert_int_equal(stat_u64(f, "pages", "template_left"), 32);
	assert_int_equal(stat_u64(f, "classes", "template"), 32);
	assert_int_equal(stat_u64(f, "classes", "data"), 16);
	assert_int_equal(stat_u64(f, NULL, "finish_demanded"), 1);      /* page 34 */
	assert_true(f->src.demands[34] == 1);
	pm = h_pagemap(ram_page(f, 34));
	assert_true((pm & H_PM_PRESENT) && !(pm & H_PM_FILE));
	assert_memory_equal(ram_page(f, 34), f->pages[34].data, H_PS);
	assert_int_equal(verify_region(f, NULL, 0), 32);

	/* A write: a private copy; the template file keeps its bytes. */
	memset(ram_page(f, 12), 0xa5, 64);
	pm = h_pagemap(ram_page(f, 12));
	assert_true((pm & H_PM_PRESENT) && !(pm & H_PM_FILE));
	assert_int_equal(pread(f->guest.tmpl_fd, got, H_PS, 12 * H_PS), (ssize_t)H_PS);
	h_tmpl_page(12, want);
	assert_memory_equal(got, want, H_PS);
	assert_memory_equal(ram_page(f, 12) + 64, want + 64, H_PS - 64);
	assert_int_equal(h_daemon_stop(&f->env, SIGTERM, 3000), 0);
}

static int cmp_u64(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;

	return x < y ? -1 : x > y;
}

/* The class map has been ingested (every page's class known). */
static bool map_known(struct fixture *f)
{
	uint64_t unknown = 1;

	for (int i = 0; i < 5000 && unknown; i++) {
		char *json = NULL;

		if (h_ctl(&f->env, "stats vm1", &json) == 0)
			tt_json_u64(json, "classes", "unknown", &unknown);
		free(json);
	}
	return unknown == 0;
}

/* Touch every page of [first, end) that is not present yet (from the end), timing each
 * access; prints the guest-side distribution. Returns the number of faults. */
static uint64_t timed_touches(struct fixture *f, uint64_t first, uint64_t end, const char *what)
{
	uint64_t *ns = calloc(end - first, sizeof(*ns)), nf = 0;

	for (uint64_t i = end; i-- > first;) {
		struct timespec a, b;
		volatile uint8_t v;

		if (h_pagemap(ram_page(f, i)) & H_PM_PRESENT)
			continue;
		clock_gettime(CLOCK_MONOTONIC, &a);
		v = f->guest.ram[i * H_PS + 9];
		clock_gettime(CLOCK_MONOTONIC, &b);
		(void)v;
		ns[nf++] = (uint64_t)(b.tv_sec - a.tv_sec) * 1000000000ull + b.tv_nsec - a.tv_nsec;
	}
	qsort(ns, nf, sizeof(*ns), cmp_u64);
	if (nf)
		fprintf(stderr, "%s, guest side: %llu faults, p50 %.1f us, p90 %.1f us, p99 %.1f us, "
			"max %.1f us\n", what, (unsigned long long)nf, ns[nf / 2] / 1e3,
			ns[nf * 9 / 10] / 1e3, ns[nf * 99 / 100] / 1e3, ns[nf - 1] / 1e3);
	free(ns);
	return nf;
}

/*
 * Local fault service, measured from the guest (fault to return) and by the daemon
 * (fault read to placing ioctl done, which includes the wake):
 *  - idle daemon (blocked in epoll): 2048 discarded pages touched before the class map,
 *    each answered with a zero page;
 *  - daemon fetching (the class map of a 512 MiB all-template region applied, DONE held
 *    back so that the region stays registered): this thread touches the pages from the
 *    end; the sweep leaves TEMPLATE pages to the kernel, so every fault meets a page
 *    whose class is known and that is not mapped: CONTINUE at once, of its aligned
 *    16-page window (fault-around), so only every 16th page faults.
 */
static void test_template_fault_latency(void **state)
{
	const uint64_t n = 131072, nz = 2048;
	struct fixture *f = *state;
	char *json = NULL, *lat;
	uint64_t nf;

	if (fx_setup(f, n, true, NULL))
		fail_msg("setup failed");
	for (uint64_t i = 0; i < n; i++) {
		f->pages[i].cls = TLM_CLASS_TEMPLATE;
		f->pages[i].k = i;
	}
	f->src.hold_done = true;
	assert_int_equal(h_guest_send_region(&f->guest, &f->env, "vm1", true), 0);
	assert_true(h_src_wait(&f->src, src_ready, 5000));
	assert_int_equal(madvise(ram_page(f, 0), nz * H_PS, MADV_DONTNEED), 0);
	assert_int_equal(timed_touches(f, 0, nz, "discarded page -> zero page, idle daemon"), nz);
	h_src_cmd(&f->src, 'G');
	assert_true(map_known(f));
	nf = timed_touches(f, nz, n, "TEMPLATE page -> CONTINUE, daemon fetching");
	assert_int_equal(nf, (n - nz) / 16);     /* each maps its aligned 16 (fault-around) */
	h_src_cmd(&f->src, 'D');
	expect_glue_done(f);
	assert_int_equal(h_ctl(&f->env, "stats vm1", &json), 0);
	lat = strstr(json, "\"latency_by_class\"");
	assert_non_null(lat);
	fprintf(stderr, "daemon side: %.*s\n", 260, lat);
	assert_int_equal(stat_u64(f, "latency_demand", "count"), 0);
	assert_int_equal(stat_u64(f, "placed", "template"), n - nz);   /* all by faults */
	assert_int_equal(stat_u64(f, NULL, "fault_around"), n - nz - nf);
	assert_int_equal(stat_u64(f, "pages", "template_left"), 0);
	free(json);
	for (uint64_t i = 0; i < n; i += 97)
		assert_true(!!(h_pagemap(ram_page(f, i)) & H_PM_FILE) == (i >= nz));
}

int main(void)
{
	const char *why = h_uffd_unavailable();
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_bad_options, fx_alloc, fx_free),
		cmocka_unit_test_setup_teardown(test_migration, fx_alloc, fx_free),
		cmocka_unit_test_setup_teardown(test_template_missing, fx_alloc, fx_free),
		cmocka_unit_test_setup_teardown(test_deferred_arm, fx_alloc, fx_free),
		cmocka_unit_test_setup_teardown(test_reconnect, fx_alloc, fx_free),
		cmocka_unit_test_setup_teardown(test_discard_while_waiting, fx_alloc, fx_free),
		cmocka_unit_test_setup_teardown(test_checksum_twice_fails, fx_alloc, fx_free),
		cmocka_unit_test_setup_teardown(test_page_past_end, fx_alloc, fx_free),
		cmocka_unit_test_setup_teardown(test_map_overlap, fx_alloc, fx_free),
		cmocka_unit_test_setup_teardown(test_fix_without_live, fx_alloc, fx_free),
		cmocka_unit_test_setup_teardown(test_live_fix_migration, fx_alloc, fx_free),
		cmocka_unit_test_setup_teardown(test_live_fix_no_stage, fx_alloc, fx_free),
		cmocka_unit_test_setup_teardown(test_template_left_to_kernel, fx_alloc, fx_free),
		cmocka_unit_test_setup_teardown(test_template_fault_latency, fx_alloc, fx_free),
	};

	if (why)
		return tt_skip("uffd", "%s", why);
	why = h_bin_missing();
	if (why) {
		fprintf(stderr, "FAIL: %s\n", why);
		return 1;
	}
	return cmocka_run_group_tests(tests, NULL, NULL);
}
