/*
 * The live phase (runtime/source/live.h) against the real kernel: a child process plays
 * the guest (a clone's RAM: the template mapped MAP_PRIVATE, or a plain shared RAM file)
 * and registers its range with userfaultfd WP + WP_ASYNC as libtlm-glue.so does in QEMU
 * (TLM_TRACK=1); the test classifies it live from outside, has it write, "stops" it, and
 * checks after tlm_live_finish that the class map equals a classification of the stopped
 * child from scratch, page by page (class and template page).
 *   transitions      every class change after the first pass: template->data,
 *                    data->template, zero->data, ref->data, data->zero, data->ref,
 *                    data written again
 *   cut_short_pass   freeze while the first pass is half done (slow --live-rate), with
 *                    pages written behind the cursor
 *   storm            a writer thread rewrites random pages with random classes, whole
 *                    and partly, through the first pass and several rounds (torn reads)
 *   file_source      a shared RAM file read through the file, tracked through the pid
 *   no_tracking      no pid to track / range not registered: 0 and the reason
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include "live.h"
#include "src_region.h"
#include "template.h"
#include "tlm_io.h"
#include "tlm_test.h"
#include "tlm_uffd.h"

#define PG 4096u
#define NTR (sizeof(tr) / sizeof(tr[0]))
#define NP 1024u
#define WP_FEATURES (UFFD_FEATURE_WP_ASYNC | UFFD_FEATURE_WP_HUGETLBFS_SHMEM)

enum { OP_WRITE = 1, OP_STORM, OP_HALT };

struct cmd {
	uint32_t op, page;
	uint64_t seed;
};

struct fx {
	char dir[64], pages[96], ram[96];
	uint8_t *tmpl;          /* template bytes, NP pages, all distinct, a few zero */
	pid_t pid;
	int sock;
	uint64_t addr;          /* the range in the child */
	bool shared;            /* plain RAM file (else a clone of the template) */
};

/* ---- the child ("guest") ------------------------------------------------------------- */

struct storm {
	uint8_t *mem;
	const uint8_t *tmpl;
	uint64_t seed, writes;
	volatile int stop;
};

/* Random pages get random classes: their template page, zero, another template page,
 * random bytes, or one changed byte (a write that a torn read can straddle). */
static void *storm_main(void *arg)
{
	struct storm *s = arg;

	while (!s->stop) {
		uint64_t x = tt_rand(&s->seed), p = x % NP;
		uint8_t *dst = s->mem + p * PG;

		switch ((x >> 20) % 5) {
		case 0: memcpy(dst, s->tmpl + p * PG, PG); break;
		case 1: memset(dst, 0, PG); break;
		case 2: memcpy(dst, s->tmpl + ((p + 7) % NP) * PG, PG); break;
		case 3: tt_fill(dst, PG, &s->seed); break;
		default: dst[(x >> 32) % PG] ^= 0x5a; break;
		}
		s->writes++;
	}
	return NULL;
}

static void child_main(int sock, uint8_t *mem, const uint8_t *tmpl)
{
	struct tlm_uffd u = { .fd = -1 };
	struct storm st = { .mem = mem, .tmpl = tmpl };
	pthread_t th;
	bool storming = false;
	struct cmd c;
	char ok = 'k';

	if (tlm_uffd_open(&u, 0, WP_FEATURES) < 0 ||
	    tlm_uffd_register(&u, mem, (size_t)NP * PG, TLM_UFFD_MODE_WP, NULL) < 0)
		ok = 'e';
	if (write(sock, &ok, 1) != 1)
		_exit(1);
	while (tlm_read_full(sock, &c, sizeof(c)) == 0) {
		if (c.op == OP_WRITE && tlm_read_full(sock, mem + (size_t)c.page * PG, PG) < 0)
			_exit(1);
		if (c.op == OP_STORM && !storming) {
			st.seed = c.seed;
			storming = pthread_create(&th, NULL, storm_main, &st) == 0;
		}
		if (c.op == OP_HALT && storming) {
			st.stop = 1;
			pthread_join(th, NULL);   /* the guest is stopped: no write after this */
			storming = false;
		}
		if (write(sock, &ok, 1) != 1)
			_exit(1);
	}
	_exit(0);
}

static void child_cmd(struct fx *f, uint32_t op, uint32_t page, const void *data)
{
	struct cmd c = { .op = op, .page = page, .seed = 99 };
	char r;

	assert_int_equal(tlm_write_full(f->sock, &c, sizeof(c)), 0);
	if (data)
		assert_int_equal(tlm_write_full(f->sock, data, PG), 0);
	assert_int_equal(read(f->sock, &r, 1), 1);
}

static void child_write(struct fx *f, uint32_t page, const void *data)
{
	child_cmd(f, OP_WRITE, page, data);
}

/* Map the guest range (template privately, or the RAM file shared), fork the child. */
static int child_start(struct fx *f, bool shared)
{
	int sv[2], fd = open(shared ? f->ram : f->pages, shared ? O_RDWR : O_RDONLY);
	uint8_t *mem;
	char c;

	assert_true(fd >= 0);
	mem = mmap(NULL, (size_t)NP * PG, PROT_READ | PROT_WRITE,
		   shared ? MAP_SHARED : MAP_PRIVATE, fd, 0);
	assert_true(mem != MAP_FAILED);
	close(fd);
	assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
	f->addr = (uintptr_t)mem;
	f->shared = shared;
	f->pid = fork();
	assert_true(f->pid >= 0);
	if (f->pid == 0) {
		close(sv[0]);
		child_main(sv[1], mem, f->tmpl);
	}
	close(sv[1]);
	munmap(mem, (size_t)NP * PG);
	f->sock = sv[0];
	assert_int_equal(read(f->sock, &c, 1), 1);
	return c == 'k' ? 0 : -1;
}

static void child_stop(struct fx *f)
{
	int st;

	close(f->sock);
	assert_int_equal(waitpid(f->pid, &st, 0), f->pid);
	assert_true(WIFEXITED(st) && WEXITSTATUS(st) == 0);
}

/* ---- fixture ----------------------------------------------------------------------------- */

static void write_file(const char *path, const void *data, size_t len)
{
	int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);

	assert_true(fd >= 0);
	assert_int_equal(tlm_write_full(fd, data, len), 0);
	close(fd);
}

static int setup(void **state)
{
	struct fx *f = calloc(1, sizeof(*f));
	uint64_t seed = 7;
	struct tlm_digest d;
	char err[256], idx[128];

	assert_non_null(f);
	snprintf(f->dir, sizeof(f->dir), "/dev/shm/tlm-live-XXXXXX");
	assert_non_null(mkdtemp(f->dir));
	snprintf(f->pages, sizeof(f->pages), "%s/pages", f->dir);
	snprintf(f->ram, sizeof(f->ram), "%s/ram", f->dir);
	f->tmpl = malloc((size_t)NP * PG);
	assert_non_null(f->tmpl);
	tt_fill(f->tmpl, (size_t)NP * PG, &seed);
	for (unsigned i = 5; i < NP; i += 97)
		memset(f->tmpl + (size_t)i * PG, 0, PG);
	write_file(f->pages, f->tmpl, (size_t)NP * PG);
	write_file(f->ram, f->tmpl, (size_t)NP * PG);
	snprintf(idx, sizeof(idx), "%s%s", f->pages, TLM_TMPL_INDEX_SUFFIX);
	assert_int_equal(tlm_tmpl_build_index(f->pages, idx, 1, &d, err, sizeof(err)), 0);
	*state = f;
	return 0;
}

static int teardown(void **state)
{
	struct fx *f = *state;
	char cmd[128];

	snprintf(cmd, sizeof(cmd), "rm -rf %s", f->dir);
	if (system(cmd) != 0)
		return -1;
	free(f->tmpl);
	free(f);
	return 0;
}

/* ---- regions ----------------------------------------------------------------------------- */

static struct tlm_src_region *region(struct fx *f, const char *id)
{
	struct tlm_src_region *r;
	char spec[512], err[256];

	if (f->shared)
		snprintf(spec, sizeof(spec), "%s,file=%s,pid=%d,addr=0x%llx,template=%s", id,
			 f->ram, (int)f->pid, (unsigned long long)f->addr, f->pages);
	else
		snprintf(spec, sizeof(spec), "%s,pid=%d,addr=0x%llx,size=%u,template=%s", id,
			 (int)f->pid, (unsigned long long)f->addr, NP * PG, f->pages);
	if (tlm_src_region_new(&r, spec, err, sizeof(err)) < 0)
		fail_msg("%s", err);
	return r;
}

/* Start the live phase; skips (77) when this kernel cannot track the child. */
static struct tlm_src_region *live_region(struct fx *f, uint64_t rate)
{
	struct tlm_src_region *r = region(f, "live");
	char why[160];
	int rc = tlm_live_start(r, rate, why, sizeof(why));

	if (rc == 0) {
		tlm_src_region_free(r);
		child_stop(f);
		exit(tt_skip("uffd", "no dirty tracking of the child: %s", why));
	}
	assert_int_equal(rc, 1);
	assert_int_equal(r->phase, TLM_SRC_LIVE);
	return r;
}

struct until {
	struct tlm_live *l;
	int state;
	uint64_t classified, rounds;
};

static bool reached(void *arg)
{
	struct until *u = arg;
	struct tlm_live_stats st;
	int state;

	tlm_live_snapshot(u->l, &st, &state);
	return state == TLM_LIVE_STOPPED ||      /* the worker ended: nothing more comes */
	       (state >= u->state && st.classified >= u->classified && st.rounds >= u->rounds);
}

static void wait_live(struct tlm_live *l, int state, uint64_t classified, uint64_t rounds)
{
	struct until u = { l, state, classified, rounds };
	struct tlm_live_stats st;
	int now;

	if (!tt_wait(reached, &u, 60000)) {
		tlm_live_snapshot(l, &st, &now);
		fail_msg("live phase did not reach state %d / %llu pages / %llu rounds: it is in "
			 "state %d, %llu pages, %llu rounds, %llu dirty in the last", state,
			 (unsigned long long)classified, (unsigned long long)rounds, now,
			 (unsigned long long)st.classified, (unsigned long long)st.rounds,
			 (unsigned long long)st.dirty_last);
	}
	tlm_live_snapshot(l, &st, &now);
	if (now == TLM_LIVE_STOPPED)
		fail_msg("the live worker ended (%llu pages, %llu rounds): %s",
			 (unsigned long long)st.classified, (unsigned long long)st.rounds,
			 l->errmsg);
}

/* Freeze the live region; its map must equal a classification from scratch. */
static struct tlm_live_stats freeze_and_compare(struct fx *f, struct tlm_src_region *r)
{
	struct tlm_src_region *fresh = region(f, "fresh");
	struct tlm_live_stats st;
	char err[256];
	int state;

	r->phase = TLM_SRC_FROZEN;
	if (tlm_live_finish(r, err, sizeof(err)) < 0)
		fail_msg("%s", err);
	fresh->phase = TLM_SRC_FROZEN;
	assert_int_equal(tlm_src_classify(fresh, err, sizeof(err)), 0);
	assert_int_equal(r->map.added, NP);
	for (uint64_t p = 0; p < NP; p++) {
		uint64_t k1, k2;
		enum tlm_page_class c1 = tlm_cls_map_get(&r->map, p, &k1);
		enum tlm_page_class c2 = tlm_cls_map_get(&fresh->map, p, &k2);

		if (c1 != c2 || k1 != k2)
			fail_msg("page %llu: live says class %d (k %llu), the stopped guest has "
				 "class %d (k %llu)", (unsigned long long)p, c1,
				 (unsigned long long)k1, c2, (unsigned long long)k2);
	}
	assert_int_equal(r->map.nruns, fresh->map.nruns);
	for (int c = TLM_CLASS_TEMPLATE; c <= TLM_CLASS_DATA; c++)
		assert_int_equal(r->map.count[c], fresh->map.count[c]);
	tlm_live_snapshot(r->live, &st, &state);
	assert_int_equal(state, TLM_LIVE_STOPPED);
	assert_false(tlm_live_usable(r->live));
	tlm_src_region_free(fresh);
	return st;
}

static void region_done(struct tlm_src_region *r)
{
	tlm_live_free(r->live);
	tlm_src_region_free(r);
}

/* ---- tests ------------------------------------------------------------------------------- */

static void page_of(struct fx *f, uint8_t *buf, int kind, unsigned k)
{
	uint64_t seed = k + 1000;

	if (kind == 'T' || kind == 'R')
		memcpy(buf, f->tmpl + (size_t)k * PG, PG);
	else if (kind == 'Z')
		memset(buf, 0, PG);
	else
		tt_fill(buf, PG, &seed);
}

static void test_transitions(void **state)
{
	struct fx *f = *state;
	/* page: initial kind, then kind after the first pass (T template at the same
	 * offset, R another template page, Z zero, D random data) */
	static const struct { unsigned page; char from, to; } tr[] = {
		{ 10, 'T', 'D' }, { 20, 'D', 'T' }, { 30, 'Z', 'D' }, { 40, 'R', 'D' },
		{ 50, 'D', 'Z' }, { 60, 'D', 'R' }, { 70, 'D', 'D' }, { 900, 'T', 'Z' },
	};
	uint8_t buf[PG];
	struct tlm_src_region *r;
	struct tlm_live_stats st;

	if (child_start(f, false) < 0)
		exit(tt_skip("uffd", "the child cannot register WP_ASYNC (Linux 6.7+)"));
	for (unsigned i = 0; i < NTR; i++) {
		page_of(f, buf, tr[i].from, tr[i].from == 'R' ? 300 : tr[i].from == 'T' ? tr[i].page :
			tr[i].page + 1);
		child_write(f, tr[i].page, buf);
	}
	r = live_region(f, 0);
	wait_live(r->live, TLM_LIVE_ROUNDS, NP, 1);
	for (unsigned i = 0; i < NTR; i++) {
		unsigned k = tr[i].to == 'R' ? 600 : tr[i].to == 'T' ? tr[i].page : tr[i].page + 7;

		page_of(f, buf, tr[i].to, k);
		child_write(f, tr[i].page, buf);
	}
	st = freeze_and_compare(f, r);
	print_message("rounds %llu, redone %llu, final_dirty %llu, final %.2f ms\n",
		      (unsigned long long)st.rounds, (unsigned long long)st.redone,
		      (unsigned long long)st.final_dirty, st.final_ns / 1e6);
	/* each written page reported once at least, by a round or by the last collect */
	assert_true(st.redone + st.final_dirty >= NTR);
	assert_true(st.final_dirty <= NTR);
	region_done(r);
	child_stop(f);
}

static void test_cut_short_pass(void **state)
{
	struct fx *f = *state;
	struct tlm_src_region *r;
	struct tlm_live_stats st;
	uint8_t buf[PG];

	if (child_start(f, false) < 0)
		exit(tt_skip("uffd", "the child cannot register WP_ASYNC (Linux 6.7+)"));
	r = live_region(f, 1u << 20);   /* 1 MiB/s: the 4 MiB pass takes about 4 s */
	wait_live(r->live, TLM_LIVE_PASS, 100, 0);
	for (unsigned p = 0; p < 40; p += 3) {     /* behind the cursor */
		page_of(f, buf, 'D', p);
		child_write(f, p, buf);
	}
	page_of(f, buf, 'Z', 0);
	child_write(f, NP - 1, buf);               /* ahead of it */
	st = freeze_and_compare(f, r);
	assert_true(st.classified < NP);           /* the freeze did the rest */
	assert_int_equal(st.rounds, 0);
	assert_true(st.final_dirty >= 14);
	region_done(r);
	child_stop(f);
}

static void test_storm(void **state)
{
	struct fx *f = *state;
	struct tlm_src_region *r;
	struct tlm_live_stats st;

	if (child_start(f, false) < 0)
		exit(tt_skip("uffd", "the child cannot register WP_ASYNC (Linux 6.7+)"));
	child_cmd(f, OP_STORM, 0, NULL);
	r = live_region(f, 8u << 20);
	wait_live(r->live, TLM_LIVE_ROUNDS, NP, 3);
	child_cmd(f, OP_HALT, 0, NULL);            /* "QMP stop" */
	st = freeze_and_compare(f, r);
	print_message("storm: rounds %llu, redone %llu, final_dirty %llu, final %.2f ms\n",
		      (unsigned long long)st.rounds, (unsigned long long)st.redone,
		      (unsigned long long)st.final_dirty, st.final_ns / 1e6);
	assert_true(st.redone > 0);
	region_done(r);
	child_stop(f);
}

static void test_file_source(void **state)
{
	struct fx *f = *state;
	struct tlm_src_region *r;
	uint8_t buf[PG];

	if (child_start(f, true) < 0)
		exit(tt_skip("uffd", "the child cannot register WP_ASYNC (Linux 6.7+)"));
	r = live_region(f, 0);
	assert_int_equal(r->kind, TLM_SRC_FILE);
	wait_live(r->live, TLM_LIVE_ROUNDS, NP, 1);
	page_of(f, buf, 'D', 3);
	child_write(f, 3, buf);
	page_of(f, buf, 'R', 500);
	child_write(f, 4, buf);
	freeze_and_compare(f, r);
	region_done(r);
	child_stop(f);
}

static void test_no_tracking(void **state)
{
	struct fx *f = *state;
	struct tlm_src_region *r;
	char spec[256], err[256], why[160];

	snprintf(spec, sizeof(spec), "nt,file=%s", f->ram);
	assert_int_equal(tlm_src_region_new(&r, spec, err, sizeof(err)), 0);
	assert_int_equal(tlm_live_start(r, 0, why, sizeof(why)), 0);
	assert_non_null(strstr(why, "no process"));
	assert_int_equal(r->phase, TLM_SRC_CONFIGURED);
	assert_null(r->live);
	tlm_src_region_free(r);
	/* A process whose range is not registered: this process's own mapping. */
	snprintf(spec, sizeof(spec), "nt,pid=%d,addr=0x%llx,size=%u", (int)getpid(),
		 (unsigned long long)(uintptr_t)f->tmpl & ~(uint64_t)(PG - 1), PG);
	assert_int_equal(tlm_src_region_new(&r, spec, err, sizeof(err)), 0);
	int rc = tlm_live_start(r, 0, why, sizeof(why));
	print_message("unregistered range: %d (%s)\n", rc, why);
	assert_true(rc == 0 || (rc == 1 && r->live->dirty.method == TLM_DIRTY_SOFT_DIRTY));
	tlm_live_free(r->live);
	tlm_src_region_free(r);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_transitions, setup, teardown),
		cmocka_unit_test_setup_teardown(test_cut_short_pass, setup, teardown),
		cmocka_unit_test_setup_teardown(test_storm, setup, teardown),
		cmocka_unit_test_setup_teardown(test_file_source, setup, teardown),
		cmocka_unit_test_setup_teardown(test_no_tracking, setup, teardown),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
