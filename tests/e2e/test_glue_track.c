/*
 * test_glue_track.c — libtlm-glue.so's dirty-tracking registration (TLM_TRACK=1), watched
 * from outside the way tlm-page-server watches QEMU (label uffd).
 *
 * A tlm-synth-guest in poke mode, glue preloaded, maps its RAM file on tmpfs the way QEMU
 * does and touches exactly the pages the test names; the test tracks it with
 * runtime/source/dirty.h (PAGEMAP_SCAN over the guest's pagemap) and checks that each
 * collect reports exactly the pages written since the previous one.
 *   shared_kept     no template, no daemon: QEMU's shared file mapping is kept (the guest's
 *                   writes land in the RAM file) and tracked; the region file says so
 *   template_clone  TLM_TEMPLATE: the private copy-on-write clone is tracked, including a
 *                   first write to a template page the guest had never touched
 *   daemon_wins     TLM_SOCK: the daemon's uffd takes the mapping, nothing registers WP
 *                   while the migration runs
 *   done_tracks     TLM_SOCK, then the "daemon" arms, unregisters and says DONE: the glue
 *                   registers the migrated RAM for tracking then and says so in the region
 *                   file (a VM that arrived by tlm can leave live again)
 * Without userfaultfd WP_ASYNC (Linux < 6.7) the first two check the fallback instead (the
 * mapping works, one warning, track=none) and then skip.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include "dirty.h"
#include "e2e_manifest.h"
#include "e2e_proc.h"
#include "e2e_tmpl.h"
#include "ramstub.h"
#include "tlm_proto.h"
#include "tlm_test.h"
#include "tlm_uffd.h"
#include "util.h"

#define TK_PAGES 512u
#define TK_SIZE (TK_PAGES * E2E_PAGE)
#define TK_BYTE 123u                 /* the byte of a page that poke "w" flips (^= 0x5a) */
#define TK_SEEN 256u                 /* room for the ranges of one collect, as text */
#define TK_WP (UFFD_FEATURE_WP_ASYNC | UFFD_FEATURE_WP_HUGETLBFS_SHMEM)

struct tk {
	char *dir;
	char ram[600], tmpl[600], sock[600], region[600], log[600];
	char guest_bin[600], glue[600];
	int lsock;                       /* a listener at sock: the "daemon" of daemon_wins */
};

struct guest {
	struct e2e_proc p;
	int ctl;                         /* poke commands */
	uint64_t addr;
	char addr_s[32];                 /* as the guest printed it (%p), for the region line */
};

static int tk_setup(void **state)
{
	struct tk *f = calloc(1, sizeof(*f));
	uint8_t digest[16];
	char err[256];

	assert_non_null(f);
	assert_int_equal(e2e_bin(f->guest_bin, sizeof(f->guest_bin), "TLM_TEST_BIN_DIR",
				 "e2e/tlm-synth-guest"), 0);
	assert_int_equal(e2e_bin(f->glue, sizeof(f->glue), "TLM_GLUE", NULL), 0);
	/* tmpfs, as a share=on guest's RAM file and a clone's template are. */
	assert_non_null(f->dir = e2e_mkdtemp("/dev/shm"));
	e2e_pathf(f->ram, sizeof(f->ram), f->dir, "ram");
	e2e_pathf(f->tmpl, sizeof(f->tmpl), f->dir, "base.pages");
	e2e_pathf(f->sock, sizeof(f->sock), f->dir, "glue.sock");
	e2e_pathf(f->region, sizeof(f->region), f->dir, "region");
	e2e_pathf(f->log, sizeof(f->log), f->dir, "guest.log");
	assert_int_equal(e2e_make_pages(f->tmpl, TK_PAGES, 7), 0);
	assert_int_equal(e2e_write_index(f->tmpl, digest), 0);
	f->lsock = tlm_unix_listen(f->sock, SOCK_SEQPACKET, err, sizeof(err));
	assert_true(f->lsock >= 0);
	*state = f;
	return 0;
}

static int tk_teardown(void **state)
{
	struct tk *f = *state;

	close(f->lsock);
	e2e_rmrf(f->dir);
	free(f->dir);
	free(f);
	return 0;
}

/* A poke guest with TLM_TRACK=1 (+ TLM_TEMPLATE / TLM_SOCK); returns once it has mapped. */
static void guest_start(struct tk *f, struct guest *g, bool tmpl, bool sock)
{
	char e_pre[700], e_ram[700], e_tmpl[700], e_sock[700], e_reg[700], fd_s[16];
	char line[256], *env[] = { e_pre, e_ram, e_reg, tmpl ? e_tmpl : "TLM_TEMPLATE",
				   sock ? e_sock : "TLM_SOCK", "TLM_TRACK=1", "TLM_VM_ID=vmt",
				   "TLM_ARM", "TLM_LOG_LEVEL=info", NULL };
	char *argv[] = { f->guest_bin, "poke", "--ram", f->ram, "--size", "2M", "--ctl-fd", fd_s,
			 NULL };
	int sv[2];

	snprintf(e_pre, sizeof(e_pre), "LD_PRELOAD=%s", f->glue);
	snprintf(e_ram, sizeof(e_ram), "TLM_RAM_PATH=%s", f->ram);
	snprintf(e_tmpl, sizeof(e_tmpl), "TLM_TEMPLATE=%s", f->tmpl);
	snprintf(e_sock, sizeof(e_sock), "TLM_SOCK=%s", f->sock);
	snprintf(e_reg, sizeof(e_reg), "TLM_REGION_FILE=%s", f->region);
	/* The guest's end of the control socket is the one fd it inherits on purpose. */
	assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
	assert_int_equal(fcntl(sv[1], F_SETFD, 0), 0);
	snprintf(fd_s, sizeof(fd_s), "%d", sv[1]);
	assert_int_equal(e2e_spawn(&g->p, "poke", argv, env, f->log), 0);
	close(sv[1]);
	g->ctl = sv[0];
	if (e2e_expect(&g->p, "mapped addr=", line, sizeof(line), 10000) != 1)
		fail_msg("the guest did not map its RAM; see %s", f->log);
	assert_int_equal(sscanf(line, "mapped addr=%31s", g->addr_s), 1);
	g->addr = strtoull(g->addr_s, NULL, 16);
}

/* Have the guest run "w I" or "r I" and wait for it to be done. */
static void guest_do(struct guest *g, char op, uint32_t page)
{
	struct pollfd p = { .fd = g->ctl, .events = POLLIN };
	char c = 0;

	assert_true(dprintf(g->ctl, "%c %u\n", op, page) > 0);
	assert_int_equal(poll(&p, 1, 10000), 1);
	assert_int_equal(read(g->ctl, &c, 1), 1);
	assert_int_equal(c, 'k');
}

static void guest_stop(struct guest *g)
{
	int st;

	close(g->ctl);                   /* EOF: the guest exits */
	assert_int_equal(e2e_wait(&g->p, 10000, &st), 0);
	assert_true(WIFEXITED(st) && WEXITSTATUS(st) == 0);
	e2e_close(&g->p);
}

/* The region file holds exactly the line for this guest with these last fields. */
static void expect_region(struct tk *f, struct guest *g, bool tmpl, const char *tail)
{
	char want[1400], *got = e2e_read_file(f->region);

	snprintf(want, sizeof(want), "base=%s size=%u offset=0 template=%s %s\n", g->addr_s,
		 TK_SIZE, tmpl ? f->tmpl : "-", tail);
	assert_non_null(got);
	assert_string_equal(got, want);
	free(got);
}

/* Collected ranges as "first+n " text: easy to compare and to read in a failure. */
static int record(void *arg, uint64_t first, uint64_t n)
{
	size_t l = strlen(arg);

	snprintf((char *)arg + l, TK_SEEN - l, "%llu+%llu ", (unsigned long long)first,
		 (unsigned long long)n);
	return 0;
}

static void expect_collect(struct tlm_dirty *d, const char *want)
{
	char seen[TK_SEEN] = "";

	assert_int_equal(tlm_dirty_collect(d, record, seen), 0);
	assert_string_equal(seen, want);
}

/*
 * Registration as the page server sees it: the region file, the glue's log line, and
 * PAGEMAP_SCAN accepting the whole range. NULL, or why this kernel cannot track (the case
 * is then skipped): the glue must have said so, and mapped all the same.
 */
static const char *tracker_open(struct tk *f, struct guest *g, bool tmpl, struct tlm_dirty *d,
				char *why, size_t len)
{
	bool can = !tt_uffd_missing(TK_WP, why, len);
	char tail[64];

	snprintf(tail, sizeof(tail), "mapping=%s track=%s", tmpl ? "private" : "shared",
		 can ? "wp-async" : "none");
	expect_region(f, g, tmpl, tail);
	assert_true(e2e_file_contains(f->log, can ? "dirty tracking on" :
				      "dirty tracking off"));
	if (!can)
		return why;
	assert_int_equal(tlm_dirty_open(d, g->p.pid, g->addr, TK_SIZE), 0);
	print_message("method %s (%s)\n", tlm_dirty_method_name(d->method), d->why);
	if (d->method != TLM_DIRTY_PM_SCAN && strstr(d->why, "not in this kernel")) {
		snprintf(why, len, "%s", d->why);
		tlm_dirty_close(d);
		return why;
	}
	assert_int_equal(d->method, TLM_DIRTY_PM_SCAN);
	return NULL;
}

static void skip_untracked(struct guest *g, const char *why)
{
	guest_stop(g);
	TT_SKIP_CASE("uffd", "no dirty tracking here (%s); the glue fell back as it should\n",
		     why);
}

/* Byte TK_BYTE of page i of the RAM file, read by us: where a shared mapping's writes go. */
static uint8_t ram_file_byte(struct tk *f, uint32_t i)
{
	int fd = open(f->ram, O_RDONLY | O_CLOEXEC);
	uint8_t b = 0;

	assert_true(fd >= 0);
	assert_int_equal(pread(fd, &b, 1, (off_t)i * E2E_PAGE + TK_BYTE), 1);
	close(fd);
	return b;
}

/* The RAM file is the glue's stub (ramstub.h) naming pid, or (pid 0) not a stub. */
static void expect_stub(struct tk *f, pid_t pid)
{
	int fd = open(f->ram, O_RDONLY | O_CLOEXEC);
	pid_t got = 0;

	assert_true(fd >= 0);
	assert_int_equal(tlm_ramstub_check(fd, &got), pid ? 1 : 0);
	if (pid)
		assert_int_equal(got, pid);
	close(fd);
}

static void test_shared_kept(void **state)
{
	struct tk *f = *state;
	struct tlm_dirty d;
	struct guest g;
	char why[200];

	guest_start(f, &g, false, false);
	assert_true(e2e_file_contains(f->log, "shared as the program asked"));
	expect_stub(f, 0);                           /* the file is the memory: kept */
	if (tracker_open(f, &g, false, &d, why, sizeof(why))) {
		skip_untracked(&g, why);
		return;
	}
	assert_int_equal(tlm_dirty_arm(&d), 0);
	expect_collect(&d, "");                      /* armed: nothing written yet */
	guest_do(&g, 'w', 3);
	guest_do(&g, 'w', 200);
	guest_do(&g, 'w', 201);
	expect_collect(&d, "3+1 200+2 ");
	expect_collect(&d, "");                      /* re-protected by the collect */
	/* The mapping is QEMU's shared one: the writes are in the file. */
	assert_int_equal(ram_file_byte(f, 3), 0x5a);
	assert_int_equal(ram_file_byte(f, 201), 0x5a);
	assert_int_equal(ram_file_byte(f, 4), 0);
	guest_do(&g, 'w', 511);
	guest_do(&g, 'w', 0);
	guest_do(&g, 'w', 3);
	expect_collect(&d, "0+1 3+1 511+1 ");
	tlm_dirty_close(&d);
	guest_stop(&g);
}

static void test_template_clone(void **state)
{
	struct tk *f = *state;
	struct tlm_dirty d;
	struct guest g;
	char why[200];

	guest_start(f, &g, true, false);
	/* Before arming: page 0 read (the page-cache page mapped), page 1 copied on write. */
	guest_do(&g, 'r', 0);
	guest_do(&g, 'w', 1);
	if (tracker_open(f, &g, true, &d, why, sizeof(why))) {
		skip_untracked(&g, why);
		return;
	}
	assert_int_equal(tlm_dirty_arm(&d), 0);
	expect_collect(&d, "");
	guest_do(&g, 'w', 0);                        /* template page, mapped read-only */
	guest_do(&g, 'w', 1);                        /* our own copy, protected by arm */
	guest_do(&g, 'w', 300);                      /* never touched: no pte at all */
	expect_collect(&d, "0+2 300+1 ");
	expect_collect(&d, "");
	guest_do(&g, 'w', 300);
	guest_do(&g, 'w', 7);
	expect_collect(&d, "7+1 300+1 ");
	/* Copy-on-write over the template: the RAM file never saw any of it; it is a stub
	 * naming the guest, so nothing can take it for the guest's memory. */
	assert_true(e2e_file_contains(f->log, "stub (the memory is the private mapping)"));
	expect_stub(f, g.p.pid);
	tlm_dirty_close(&d);
	guest_stop(&g);
}

/* With a daemon the uffd belongs to tlm-uffd-server: TLM_TRACK must wait. The listener
 * never answers: deferred arming waits for it, so the region stays unregistered. */
static void test_daemon_wins(void **state)
{
	struct tk *f = *state;
	struct tlm_dirty d;
	struct guest g;

	guest_start(f, &g, false, true);
	assert_true(e2e_file_contains(f->log, "dirty tracking once the migration is done"));
	assert_true(e2e_file_contains(f->log, "handed to tlm-uffd-server"));
	assert_false(e2e_file_contains(f->log, "dirty tracking on:"));
	assert_false(e2e_file_contains(f->log, "dirty tracking on after"));
	expect_region(f, &g, false, "mapping=private track=none");
	expect_stub(f, g.p.pid);                     /* anonymous private: a stub too */
	assert_int_equal(tlm_dirty_open(&d, g.p.pid, g.addr, TK_SIZE), 0);
	assert_int_not_equal(d.method, TLM_DIRTY_PM_SCAN);
	tlm_dirty_close(&d);
	guest_stop(&g);
}

/* Until the guest's log holds needle (the glue thread writes it): 0, or -ETIMEDOUT. */
static int wait_log(struct tk *f, const char *needle, int timeout_ms)
{
	uint64_t end = tt_now_ms() + (uint64_t)timeout_ms;

	while (!e2e_file_contains(f->log, needle))
		if (tt_now_ms() > end)
			return -ETIMEDOUT;
		else
			usleep(10000);
	return 0;
}

/* Play tlm-uffd-server's part: take REGION, ARM, take the uffd; returns the uffd fd. */
static int daemon_arm(struct tk *f, int *conn)
{
	struct tlm_local_msg m;
	int fd = -1;

	*conn = accept4(f->lsock, NULL, NULL, SOCK_CLOEXEC);
	assert_true(*conn >= 0);
	assert_true(tlm_local_recv(*conn, &m, &fd) > 0);
	assert_int_equal(m.type, TLM_LOCAL_REGION);
	assert_int_equal(fd, -1);                    /* deferred: no uffd before ARM */
	memset(&m, 0, sizeof(m));
	m.version = TLM_LOCAL_VERSION;
	m.type = TLM_LOCAL_ARM;
	m.page_size = E2E_PAGE;
	assert_int_equal(tlm_local_send(*conn, &m, -1), 0);
	assert_true(tlm_local_recv(*conn, &m, &fd) > 0);
	assert_int_equal(m.type, TLM_LOCAL_UFFD);
	assert_true(fd >= 0);
	return fd;
}

static void test_done_tracks(void **state)
{
	struct tk *f = *state;
	struct tlm_local_msg m = { .version = TLM_LOCAL_VERSION, .type = TLM_LOCAL_DONE,
				   .page_size = E2E_PAGE };
	struct tlm_uffd u = { .fd = -1 };
	struct tlm_dirty d;
	struct guest g;
	char why[200];
	int conn;

	guest_start(f, &g, false, true);
	u.fd = daemon_arm(f, &conn);
	expect_region(f, &g, false, "mapping=private track=none");
	/* "every page present": place them all, unregister, say DONE, as the daemon does */
	for (uint32_t i = 0; i < TK_PAGES; i++)
		assert_int_equal(tlm_uffd_zeropage(&u, (void *)(uintptr_t)(g.addr + i * E2E_PAGE),
						   E2E_PAGE, 0, NULL, NULL), 0);
	assert_int_equal(tlm_uffd_unregister(&u, (void *)(uintptr_t)g.addr, TK_SIZE), 0);
	assert_int_equal(tlm_local_send(conn, &m, -1), 0);
	assert_int_equal(wait_log(f, "migration done", 10000), 0);
	if (tt_uffd_missing(TK_WP, why, sizeof(why))) {
		assert_int_equal(wait_log(f, "dirty tracking off", 10000), 0);
		close(conn);
		tlm_uffd_close(&u);
		skip_untracked(&g, why);
		return;
	}
	assert_int_equal(wait_log(f, "dirty tracking on after the migration",
						10000), 0);
	expect_region(f, &g, false, "mapping=private track=wp-async");
	assert_int_equal(tlm_dirty_open(&d, g.p.pid, g.addr, TK_SIZE), 0);
	assert_int_equal(d.method, TLM_DIRTY_PM_SCAN);
	assert_int_equal(tlm_dirty_arm(&d), 0);
	expect_collect(&d, "");
	guest_do(&g, 'w', 5);
	guest_do(&g, 'w', 6);
	guest_do(&g, 'w', 400);
	expect_collect(&d, "5+2 400+1 ");
	tlm_dirty_close(&d);
	close(conn);
	tlm_uffd_close(&u);
	guest_stop(&g);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_shared_kept, tk_setup, tk_teardown),
		cmocka_unit_test_setup_teardown(test_template_clone, tk_setup, tk_teardown),
		cmocka_unit_test_setup_teardown(test_daemon_wins, tk_setup, tk_teardown),
		cmocka_unit_test_setup_teardown(test_done_tracks, tk_setup, tk_teardown),
	};

	signal(SIGPIPE, SIG_IGN);
	return cmocka_run_group_tests(tests, NULL, NULL);
}
