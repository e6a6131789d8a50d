/*
 * Dirty tracking of another process's memory (runtime/source/dirty.h), against the real
 * kernel: a child owns a MAP_SHARED memfd range (as QEMU owns share=on guest RAM) and
 * writes the pages the test names; the tracker in the test process watches it from
 * outside through /proc/PID/pagemap.
 *   pm_scan_catches_writes  the owner registered the range WP + WP_ASYNC: PAGEMAP_SCAN,
 *                           each collect returns exactly the pages written since the last
 *                           one (Linux 6.7+; the program skips without WP_ASYNC)
 *   unregistered_fallback   no registration: soft-dirty where the kernel has it, else
 *                           NONE with the reason, and collect refuses (-ENOTSUP)
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
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include "dirty.h"
#include "tlm_test.h"
#include "tlm_uffd.h"

#define PG 4096u
#define NP 64u
#define WP_FEATURES (UFFD_FEATURE_WP_ASYNC | UFFD_FEATURE_WP_HUGETLBFS_SHMEM)

struct owner {
	pid_t pid;
	int sock;             /* commands: page index to write (uint32), reply: 1 byte */
	uint64_t addr;        /* the range in the child (same address: mapped before fork) */
};

/* The child: register (or not), then write the pages asked for until EOF. */
static void owner_main(int sock, uint8_t *mem, bool wp)
{
	struct tlm_uffd u = { .fd = -1 };
	uint32_t page;
	char ok = 'k';

	if (wp && (tlm_uffd_open(&u, 0, WP_FEATURES) < 0 ||
		   tlm_uffd_register(&u, mem, NP * PG, TLM_UFFD_MODE_WP, NULL) < 0))
		ok = 'e';
	if (write(sock, &ok, 1) != 1)
		_exit(1);
	while (read(sock, &page, sizeof(page)) == (ssize_t)sizeof(page)) {
		mem[(size_t)page * PG + 123] ^= 0x5a;   /* one byte: a real write */
		if (write(sock, &ok, 1) != 1)
			break;
	}
	_exit(0);
}

static void owner_start(struct owner *o, bool wp)
{
	int sv[2], fd = memfd_create("tlm-dirty-test", MFD_CLOEXEC);
	uint8_t *mem;
	char c;

	assert_true(fd >= 0);
	assert_int_equal(ftruncate(fd, NP * PG), 0);
	mem = mmap(NULL, NP * PG, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	assert_true(mem != MAP_FAILED);
	memset(mem, 1, NP * PG);        /* populated, like a running guest's RAM */
	close(fd);
	assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
	o->addr = (uintptr_t)mem;
	o->pid = fork();
	assert_true(o->pid >= 0);
	if (o->pid == 0) {
		close(sv[0]);
		owner_main(sv[1], mem, wp);
	}
	close(sv[1]);
	munmap(mem, NP * PG);
	o->sock = sv[0];
	assert_int_equal(read(o->sock, &c, 1), 1);
	if (c != 'k')
		fail_msg("the owner could not register its range with userfaultfd WP_ASYNC");
}

static void owner_write(struct owner *o, uint32_t page)
{
	char c;

	assert_int_equal(write(o->sock, &page, sizeof(page)), (ssize_t)sizeof(page));
	assert_int_equal(read(o->sock, &c, 1), 1);
}

static void owner_stop(struct owner *o)
{
	int st;

	close(o->sock);
	assert_int_equal(waitpid(o->pid, &st, 0), o->pid);
	assert_true(WIFEXITED(st) && WEXITSTATUS(st) == 0);
}

/* Collected ranges, as "first+n " text: easy to compare and to print on failure. */
struct seen {
	char text[256];
};

static int record(void *arg, uint64_t first, uint64_t n)
{
	struct seen *s = arg;
	size_t l = strlen(s->text);

	snprintf(s->text + l, sizeof(s->text) - l, "%llu+%llu ", (unsigned long long)first,
		 (unsigned long long)n);
	return 0;
}

static void expect_collect(struct tlm_dirty *d, const char *want)
{
	struct seen s = { "" };

	assert_int_equal(tlm_dirty_collect(d, record, &s), 0);
	assert_string_equal(s.text, want);
}

static void test_pm_scan_catches_writes(void **state)
{
	struct owner o;
	struct tlm_dirty d;

	owner_start(&o, true);
	assert_int_equal(tlm_dirty_open(&d, o.pid, o.addr, NP * PG), 0);
	print_message("method %s (%s)\n", tlm_dirty_method_name(d.method), d.why);
	assert_int_equal(d.method, TLM_DIRTY_PM_SCAN);
	assert_int_equal(tlm_dirty_arm(&d), 0);
	expect_collect(&d, "");                      /* armed: nothing written yet */
	owner_write(&o, 5);
	owner_write(&o, 40);
	owner_write(&o, 41);
	expect_collect(&d, "5+1 40+2 ");
	expect_collect(&d, "");                      /* re-protected by the collect */
	owner_write(&o, 63);
	owner_write(&o, 0);
	owner_write(&o, 0);
	expect_collect(&d, "0+1 63+1 ");
	tlm_dirty_close(&d);
	owner_stop(&o);
}

static void test_unregistered_fallback(void **state)
{
	struct owner o;
	struct tlm_dirty d;

	owner_start(&o, false);
	assert_int_equal(tlm_dirty_open(&d, o.pid, o.addr, NP * PG), 0);
	print_message("method %s (%s)\n", tlm_dirty_method_name(d.method), d.why);
	assert_int_not_equal(d.method, TLM_DIRTY_PM_SCAN);
	assert_non_null(strstr(d.why, "PAGEMAP_SCAN"));
	if (d.method == TLM_DIRTY_NONE) {
		assert_non_null(strstr(d.why, "no soft-dirty"));
		assert_int_equal(tlm_dirty_arm(&d), -ENOTSUP);
		assert_int_equal(tlm_dirty_collect(&d, record, NULL), -ENOTSUP);
	} else {                                     /* soft-dirty: every write since arm */
		assert_int_equal(tlm_dirty_arm(&d), 0);
		owner_write(&o, 7);
		expect_collect(&d, "7+1 ");
		owner_write(&o, 9);
		expect_collect(&d, "7+1 9+1 ");
	}
	tlm_dirty_close(&d);
	owner_stop(&o);
}

static void test_bad_range(void **state)
{
	struct tlm_dirty d;

	assert_int_equal(tlm_dirty_open(&d, getpid(), 4096 + 1, PG), -EINVAL);
	assert_int_equal(tlm_dirty_open(&d, getpid(), 4096, 0), -EINVAL);
	assert_int_equal(tlm_dirty_open(&d, 0x7ffffff0, 4096, PG), -ENOENT);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_pm_scan_catches_writes),
		cmocka_unit_test(test_unregistered_fallback),
		cmocka_unit_test(test_bad_range),
	};
	char why[160];

	if (tt_uffd_missing(WP_FEATURES, why, sizeof(why)))
		return tt_skip("uffd", "dirty tracking needs userfaultfd WP_ASYNC (Linux 6.7): %s",
			       why);
	signal(SIGPIPE, SIG_IGN);
	return cmocka_run_group_tests(tests, NULL, NULL);
}
