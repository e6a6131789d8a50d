/*
 * test_uffd.c — the uffd library against the real kernel, in the manner of the
 * kernel's mm/uffd-unit-tests.c: a table of cases, each naming the features and the
 * memory type it needs; a case whose feature the kernel lacks is skipped.
 * No userfaultfd at all: exit 77.
 */
#include "tlm_test.h"
#include "harness.h"

#include <errno.h>
#include <signal.h>
#include <fcntl.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cmocka.h>

/* Feature bits newer than Debian 12's headers (kernel ABI, fixed values). */
#define F_MOVE		(1ULL << 16)

/* ---- probe, API, argument checks --------------------------------------------------- */

static void t_probe(struct tctx *t)
{
	uint64_t features = 0, ioctls = 0;
	char buf[512], tiny[12];
	int n;

	assert_int_equal(tlm_uffd_probe(&features, &ioctls), 0);
	assert_int_equal(features, g_supported);
	assert_true(ioctls & (1ULL << _UFFDIO_REGISTER));
	n = tlm_uffd_features_str(features, buf, sizeof(buf));
	assert_int_equal(n, (int)strlen(buf));
	print_message("features 0x%llx: %s\n", (unsigned long long)features, buf);
	assert_memory_equal(buf, "MISSING", 7);
	if (features & UFFD_FEATURE_MINOR_SHMEM)
		assert_non_null(strstr(buf, " MINOR_SHMEM"));
	if (features & UFFD_FEATURE_EVENT_REMOVE)
		assert_non_null(strstr(buf, " EVENT_REMOVE"));
	if (features & F_MOVE)
		assert_non_null(strstr(buf, " MOVE"));
	assert_null(strstr(buf, "bit"));	/* every bit the kernel has is named */
	assert_string_equal(tlm_uffd_feature_name(UFFD_FEATURE_MINOR_SHMEM), "MINOR_SHMEM");
	assert_string_equal(tlm_uffd_feature_name(UFFD_FEATURE_EVENT_FORK), "EVENT_FORK");
	assert_string_equal(tlm_uffd_feature_name(F_MOVE), "MOVE");
	assert_null(tlm_uffd_feature_name(1ULL << 63));
	assert_null(tlm_uffd_feature_name(0));
	assert_int_equal(tlm_uffd_features_str(features, tiny, sizeof(tiny)), -ENOSPC);
	assert_int_equal(strlen(tiny), sizeof(tiny) - 1);
	assert_int_equal(tlm_uffd_features_str(1ULL << 63, buf, sizeof(buf)), 13);
	assert_string_equal(buf, "MISSING bit63");
	assert_true(t->u.fd >= 0);
	assert_int_equal(fcntl(t->u.fd, F_GETFD) & FD_CLOEXEC, FD_CLOEXEC);
	assert_true(fcntl(t->u.fd, F_GETFL) & O_NONBLOCK);
}

/* A second handshake, an unknown API version and unknown feature bits are refused. */
static void t_bad_api(struct tctx *t)
{
	struct tlm_uffd u;
	struct uffdio_api api = { .api = UFFD_API };
	int fd;

	assert_int_equal(open_like(t, &u, 0, 1ULL << 63), -EINVAL);
	assert_int_equal(u.fd, -1);
	assert_int_equal(tlm_uffd_open(&u, 0x80, 0), -EINVAL);
	assert_int_equal(ioctl(t->u.fd, UFFDIO_API, &api), -1);
	assert_int_equal(errno, EINVAL);

	fd = raw_uffd(t);
	assert_true(fd >= 0);
	api.api = 0xAB;
	assert_int_equal(ioctl(fd, UFFDIO_API, &api), -1);
	assert_int_equal(errno, EINVAL);
	close(fd);
	fd = raw_uffd(t);
	assert_true(fd >= 0);
	api.api = UFFD_API;
	api.features = 1ULL << 63;
	assert_int_equal(ioctl(fd, UFFDIO_API, &api), -1);
	assert_int_equal(errno, EINVAL);
	close(fd);

	assert_int_equal(tlm_uffd_open(&u, TLM_UFFD_USER_ONLY, 0), 0);
	assert_true(u.fd >= 0);
	tlm_uffd_close(&u);
	assert_int_equal(u.fd, -1);
	tlm_uffd_close(&u);	/* twice is harmless */
}

static void t_bad_args(struct tctx *t)
{
	char src[8192];
	size_t done = 99, existed = 99;
	uint64_t ioctls = 0;

	assert_int_equal(tlm_uffd_register(&t->u, t->area + 1, t->ps, TLM_UFFD_MODE_MISSING,
					   NULL), -EINVAL);
	assert_int_equal(tlm_uffd_register(&t->u, t->area, t->ps + 1, TLM_UFFD_MODE_MISSING,
					   NULL), -EINVAL);
	assert_int_equal(tlm_uffd_register(&t->u, t->area, t->ps, 0, NULL), -EINVAL);
	assert_int_equal(tlm_uffd_register(&t->u, t->area, t->ps, 0x80, NULL), -EINVAL);
	assert_int_equal(tlm_uffd_copy(&t->u, t->area, src, 0, 0, &done, &existed), -EINVAL);
	assert_int_equal(done, 0);
	assert_int_equal(existed, 0);
	assert_int_equal(tlm_uffd_copy(&t->u, t->area + 8, src, t->ps, 0, &done, NULL),
			 -EINVAL);
	assert_int_equal(tlm_uffd_copy(&t->u, t->area, NULL, t->ps, 0, &done, NULL), -EINVAL);
	assert_int_equal(tlm_uffd_copy(&t->u, t->area, src, t->ps, 0x80, &done, NULL), -EINVAL);
	assert_int_equal(tlm_uffd_zeropage(&t->u, t->area, 100, 0, &done, NULL), -EINVAL);
	assert_int_equal(tlm_uffd_continue(&t->u, t->area + 1, t->ps, 0, &done, NULL), -EINVAL);
	assert_int_equal(tlm_uffd_wake(&t->u, t->area, 3), -EINVAL);
	assert_int_equal(tlm_uffd_unregister(&t->u, t->area, 0), -EINVAL);
	/* not registered: the kernel refuses to fill it */
	assert_int_equal(tlm_uffd_copy(&t->u, t->area, src, t->ps, 0, &done, NULL), -ENOENT);
	assert_int_equal(done, 0);
	/* registered: the range ioctls offered for anonymous memory */
	assert_int_equal(tlm_uffd_register(&t->u, t->area, t->len, TLM_UFFD_MODE_MISSING,
					   &ioctls), 0);
	assert_true(ioctls & (1ULL << _UFFDIO_COPY));
	assert_true(ioctls & (1ULL << _UFFDIO_ZEROPAGE));
	assert_true(ioctls & (1ULL << _UFFDIO_WAKE));
	assert_int_equal(tlm_uffd_unregister(&t->u, t->area, t->len), 0);
}

/* ---- MISSING on anonymous memory ------------------------------------------------- */

static void t_missing_anon(struct tctx *t)
{
	struct tlm_uffd_event ev;
	char src[2][4096];
	size_t done = 0;

	assert_int_equal(t->ps, sizeof(src[0]));
	pattern(src[0], t->ps, 11);
	bg_start(&t->bg[0], BG_READ, page(t, 1), t->ps);
	wait_event(t, &ev);
	assert_int_equal(ev.type, TLM_UFFD_EV_PAGEFAULT);
	assert_int_equal(ev.addr, (uintptr_t)page(t, 1));
	assert_int_equal(ev.pf_flags, 0);
	if (t->u.features & UFFD_FEATURE_THREAD_ID)
		assert_int_equal(ev.ptid, t->bg[0].tid);
	assert_false(bg_done(&t->bg[0]));
	assert_int_equal(tlm_uffd_copy(&t->u, page(t, 1), src[0], t->ps, 0, &done, NULL), 0);
	assert_int_equal(done, t->ps);
	assert_int_equal(bg_join(&t->bg[0], WAIT_MS), 0);
	assert_int_equal(t->bg[0].first, (uint8_t)src[0][0]);
	assert_memory_equal(page(t, 1), src[0], t->ps);

	/* a write fault says so; the write lands on the page we placed */
	pattern(src[1], t->ps, 12);
	t->bg[0].wval = 0xEE;
	bg_start(&t->bg[0], BG_WRITE, page(t, 2), t->ps);
	wait_event(t, &ev);
	assert_int_equal(ev.addr, (uintptr_t)page(t, 2));
	assert_int_equal(ev.pf_flags, TLM_UFFD_PF_WRITE);
	assert_int_equal(tlm_uffd_copy(&t->u, page(t, 2), src[1], t->ps, 0, &done, NULL), 0);
	assert_int_equal(bg_join(&t->bg[0], WAIT_MS), 0);
	assert_int_equal((uint8_t)page(t, 2)[0], 0xEE);
	assert_memory_equal(page(t, 2) + 1, src[1] + 1, t->ps - 1);
	assert_false(event_pending(t, 0));
}

/* ---- MINOR on a private mapping of a memfd --------------------------------------- */

static void assert_file_page(struct tctx *t, size_t i)
{
	char *want = malloc(t->ps);
	uint64_t pm = pagemap(t, page(t, i));

	assert_non_null(want);
	pattern(want, t->ps, (unsigned)i);
	assert_memory_equal(page(t, i), want, t->ps);
	free(want);
	assert_true(pm & PM_PRESENT);
	assert_true(pm & PM_FILE);
}

static void assert_memfd_page(struct tctx *t, size_t i)
{
	char *want = malloc(t->ps), *got = malloc(t->ps);

	assert_non_null(want);
	assert_non_null(got);
	pattern(want, t->ps, (unsigned)i);
	assert_int_equal(pread(t->memfd, got, t->ps, (off_t)(i * t->ps)), (ssize_t)t->ps);
	assert_memory_equal(got, want, t->ps);
	free(want);
	free(got);
}

static void t_minor_memfd(struct tctx *t)
{
	struct tlm_uffd_event ev;
	size_t done = 0;
	uint64_t pm;

	assert_false(pagemap(t, page(t, 0)) & PM_PRESENT);
	bg_start(&t->bg[0], BG_READ, page(t, 0), t->ps);
	wait_event(t, &ev);
	assert_int_equal(ev.type, TLM_UFFD_EV_PAGEFAULT);
	assert_int_equal(ev.addr, (uintptr_t)page(t, 0));
	assert_int_equal(ev.pf_flags, TLM_UFFD_PF_MINOR);
	assert_int_equal(tlm_uffd_continue(&t->u, page(t, 0), t->ps, 0, &done, NULL), 0);
	assert_int_equal(done, t->ps);
	assert_int_equal(bg_join(&t->bg[0], WAIT_MS), 0);
	assert_file_page(t, 0);

	/* a write copies the page: private, no longer the file's frame; file unchanged */
	page(t, 0)[100] ^= 0x5a;
	pm = pagemap(t, page(t, 0));
	assert_true(pm & PM_PRESENT);
	assert_false(pm & PM_FILE);
	assert_memfd_page(t, 0);
	assert_false(event_pending(t, 0));
}

/* A hole in the file (TEMPLATE page not in the page cache) faults MISSING, not MINOR. */
static void t_minor_hole(struct tctx *t)
{
	struct tlm_uffd_event ev;
	char src[4096];
	size_t done = 0;

	pattern(src, t->ps, 77);
	bg_start(&t->bg[0], BG_READ, page(t, 1), t->ps);
	wait_event(t, &ev);
	assert_int_equal(ev.addr, (uintptr_t)page(t, 1));
	assert_int_equal(ev.pf_flags, 0);
	assert_int_equal(tlm_uffd_copy(&t->u, page(t, 1), src, t->ps, 0, &done, NULL), 0);
	assert_int_equal(bg_join(&t->bg[0], WAIT_MS), 0);
	assert_memory_equal(page(t, 1), src, t->ps);

	/* CONTINUE cannot map what is not in the page cache: EFAULT after the pages before */
	assert_int_equal(tlm_uffd_continue(&t->u, page(t, 2), 2 * t->ps, 0, &done, NULL),
			 -EFAULT);
	assert_int_equal(done, t->ps);
	assert_file_page(t, 2);
	assert_false(pagemap(t, page(t, 3)) & PM_PRESENT);
}

/* Proactive CONTINUE over a range nobody faulted on: all mapped, no fault follows. */
static void t_bulk_continue(struct tctx *t)
{
	size_t done = 0, existed = 99, i;

	assert_int_equal(tlm_uffd_continue(&t->u, t->area, t->len, 0, &done, &existed), 0);
	assert_int_equal(done, t->len);
	assert_int_equal(existed, 0);
	bg_start(&t->bg[0], BG_READ, t->area, t->len);
	if (bg_join(&t->bg[0], WAIT_MS))
		fail_msg("touching CONTINUE-mapped pages blocked for %d ms", WAIT_MS);
	assert_false(event_pending(t, 0));
	for (i = 0; i < t->c->pages; i++)
		assert_file_page(t, i);

	assert_int_equal(tlm_uffd_continue(&t->u, t->area, t->len, 0, &done, &existed),
			 -EEXIST);
	assert_int_equal(done, 0);
	assert_int_equal(existed, 0);
	assert_int_equal(tlm_uffd_continue(&t->u, t->area, t->len, TLM_UFFD_SKIP_EXISTING,
					   &done, &existed), 0);
	assert_int_equal(done, t->len);
	assert_int_equal(existed, t->len);
}

/* COPY onto a page that sits in the page cache installs private content. */
static void t_copy_over_pagecache(struct tctx *t)
{
	char src[4096];
	size_t done = 0;
	uint64_t pm;

	pattern(src, t->ps, 200);
	assert_int_equal(tlm_uffd_copy(&t->u, page(t, 0), src, t->ps, 0, &done, NULL), 0);
	assert_int_equal(done, t->ps);
	assert_memory_equal(page(t, 0), src, t->ps);
	pm = pagemap(t, page(t, 0));
	assert_true(pm & PM_PRESENT);
	assert_false(pm & PM_FILE);
	assert_memfd_page(t, 0);
	assert_false(event_pending(t, 0));
}

/* ---- EEXIST and SKIP_EXISTING ---------------------------------------------------- */

static void t_copy_eexist(struct tctx *t)
{
	size_t done = 99, existed = 99, i;
	char *src = malloc(5 * t->ps), *old = malloc(t->ps);

	assert_non_null(src);
	assert_non_null(old);
	pattern(old, t->ps, 1);
	pattern(src, 5 * t->ps, 2);
	assert_int_equal(tlm_uffd_copy(&t->u, page(t, 0), old, t->ps, 0, &done, NULL), 0);
	assert_int_equal(tlm_uffd_copy(&t->u, page(t, 0), src, t->ps, 0, &done, &existed),
			 -EEXIST);
	assert_int_equal(done, 0);
	assert_int_equal(existed, 0);
	assert_memory_equal(page(t, 0), old, t->ps);

	/* pages 2..6, page 4 present: stops there, 2 pages placed, 5 and 6 untouched */
	assert_int_equal(tlm_uffd_copy(&t->u, page(t, 4), old, t->ps, 0, NULL, NULL), 0);
	assert_int_equal(tlm_uffd_copy(&t->u, page(t, 2), src, 5 * t->ps, 0, &done, &existed),
			 -EEXIST);
	assert_int_equal(done, 2 * t->ps);
	assert_int_equal(existed, 0);
	assert_memory_equal(page(t, 2), src, 2 * t->ps);
	assert_memory_equal(page(t, 4), old, t->ps);
	assert_false(pagemap(t, page(t, 5)) & PM_PRESENT);
	assert_false(pagemap(t, page(t, 6)) & PM_PRESENT);

	/* pages 7..11, page 9 present: SKIP_EXISTING steps over it */
	assert_int_equal(tlm_uffd_copy(&t->u, page(t, 9), old, t->ps, 0, NULL, NULL), 0);
	assert_int_equal(tlm_uffd_copy(&t->u, page(t, 7), src, 5 * t->ps,
				       TLM_UFFD_SKIP_EXISTING, &done, &existed), 0);
	assert_int_equal(done, 5 * t->ps);
	assert_int_equal(existed, t->ps);
	for (i = 7; i < 12; i++)
		assert_memory_equal(page(t, i), i == 9 ? old : src + (i - 7) * t->ps, t->ps);
	free(src);
	free(old);
}

/* ---- ZEROPAGE, WAKE -------------------------------------------------------------- */

static void t_zeropage(struct tctx *t)
{
	struct tlm_uffd_event ev;
	size_t done = 0, existed = 0, i;

	bg_start(&t->bg[0], BG_READ, page(t, 1), t->ps);
	wait_event(t, &ev);
	assert_int_equal(ev.addr, (uintptr_t)page(t, 1));
	assert_int_equal(tlm_uffd_zeropage(&t->u, page(t, 1), t->ps, 0, &done, NULL), 0);
	assert_int_equal(done, t->ps);
	assert_int_equal(bg_join(&t->bg[0], WAIT_MS), 0);
	assert_int_equal(t->bg[0].first, 0);

	assert_int_equal(tlm_uffd_zeropage(&t->u, page(t, 3), 4 * t->ps, 0, &done, NULL), 0);
	assert_int_equal(done, 4 * t->ps);
	assert_int_equal(tlm_uffd_zeropage(&t->u, page(t, 3), t->ps, 0, &done, NULL), -EEXIST);
	assert_int_equal(done, 0);
	assert_int_equal(tlm_uffd_zeropage(&t->u, t->area, t->len, TLM_UFFD_SKIP_EXISTING,
					   &done, &existed), 0);
	assert_int_equal(done, t->len);
	assert_int_equal(existed, 5 * t->ps);
	for (i = 0; i < t->len; i++)
		if (t->area[i])
			fail_msg("byte %zu of zero-filled range is %d", i, t->area[i]);
	for (i = 0; i < t->c->pages; i++)
		assert_true(pagemap(t, page(t, i)) & PM_PRESENT);
}

static void t_wake(struct tctx *t)
{
	struct tlm_uffd_event ev;
	char src[4096];
	size_t done = 0;

	pattern(src, t->ps, 5);
	bg_start(&t->bg[0], BG_READ, page(t, 0), t->ps);
	wait_event(t, &ev);
	assert_int_equal(tlm_uffd_copy(&t->u, page(t, 0), src, t->ps, TLM_UFFD_DONTWAKE,
				       &done, NULL), 0);
	assert_int_equal(done, t->ps);
	/* placed but not woken: the thread keeps sleeping on its fault */
	assert_int_equal(bg_join(&t->bg[0], 300), ETIMEDOUT);
	assert_false(bg_done(&t->bg[0]));
	assert_int_equal(tlm_uffd_wake(&t->u, page(t, 0), t->ps), 0);
	assert_int_equal(bg_join(&t->bg[0], WAIT_MS), 0);
	assert_int_equal(t->bg[0].first, (uint8_t)src[0]);
}

/* ---- non-cooperative events ------------------------------------------------------ */

/*
 * madvise(DONTNEED) on a registered range sends REMOVE and sleeps until it is read.
 * Meanwhile the kernel refuses fills with EAGAIN (mmap_changing): the wrapper must
 * say so with *done, and the fill succeeds after the event is read.
 */
static void t_event_remove(struct tctx *t)
{
	struct tlm_uffd_event ev;
	char src[8192];
	size_t done = 99;
	int rc;

	pattern(src, 2 * t->ps, 9);
	assert_int_equal(tlm_uffd_zeropage(&t->u, t->area, 6 * t->ps, 0, NULL, NULL), 0);
	bg_start(&t->bg[0], BG_DONTNEED, page(t, 2), 2 * t->ps);
	if (!event_pending(t, WAIT_MS))
		fail_msg("no REMOVE event within %d ms", WAIT_MS);
	rc = tlm_uffd_copy(&t->u, page(t, 6), src, 2 * t->ps, 0, &done, NULL);
	print_message("COPY with REMOVE unread: %s, done %zu\n",
		      rc ? strerror(-rc) : "ok", done);
	if (rc) {
		assert_int_equal(rc, -EAGAIN);
		assert_int_equal(done, 0);
	}
	assert_int_equal(tlm_uffd_read_events(&t->u, &ev, 1), 1);
	assert_int_equal(ev.type, TLM_UFFD_EV_REMOVE);
	assert_int_equal(ev.addr, (uintptr_t)page(t, 2));
	assert_int_equal(ev.end, (uintptr_t)page(t, 4));
	assert_int_equal(bg_join(&t->bg[0], WAIT_MS), 0);
	assert_int_equal(t->bg[0].ret, 0);
	if (rc)
		assert_int_equal(tlm_uffd_copy(&t->u, page(t, 6) + done, src + done,
					       2 * t->ps - done, 0, &done, NULL), 0);
	assert_memory_equal(page(t, 6), src, t->ps);
	/* the removed pages are gone: they can be (and must be) placed again */
	assert_false(pagemap(t, page(t, 2)) & PM_PRESENT);
	assert_int_equal(tlm_uffd_zeropage(&t->u, page(t, 2), 2 * t->ps, 0, &done, NULL), 0);
	assert_false(event_pending(t, 0));
}

static void t_event_unmap(struct tctx *t)
{
	struct tlm_uffd_event ev;

	bg_start(&t->bg[0], BG_MUNMAP, page(t, 4), 4 * t->ps);
	wait_event(t, &ev);
	assert_int_equal(ev.type, TLM_UFFD_EV_UNMAP);
	assert_int_equal(ev.addr, (uintptr_t)page(t, 4));
	assert_int_equal(ev.end, (uintptr_t)page(t, 8));
	assert_int_equal(bg_join(&t->bg[0], WAIT_MS), 0);
	assert_int_equal(t->bg[0].ret, 0);
	assert_int_equal(tlm_uffd_zeropage(&t->u, page(t, 4), t->ps, 0, NULL, NULL), -ENOENT);
	t->len = 4 * t->ps;
}

static void t_event_remap(struct tctx *t)
{
	struct tlm_uffd_event ev;
	char src[4096];
	char *to = mmap(NULL, t->len, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);

	assert_true(to != MAP_FAILED);
	pattern(src, t->ps, 3);
	assert_int_equal(tlm_uffd_copy(&t->u, page(t, 0), src, t->ps, 0, NULL, NULL), 0);
	t->bg[0].new_addr = to;
	bg_start(&t->bg[0], BG_MREMAP, t->area, t->len);
	wait_event(t, &ev);
	assert_int_equal(ev.type, TLM_UFFD_EV_REMAP);
	assert_int_equal(ev.addr, (uintptr_t)t->area);
	assert_int_equal(ev.new_addr, (uintptr_t)to);
	assert_int_equal(ev.len, t->len);
	assert_int_equal(bg_join(&t->bg[0], WAIT_MS), 0);
	assert_int_equal(t->bg[0].ret, 0);
	t->area = to;
	/* the content moved and the new range is still registered */
	assert_memory_equal(page(t, 0), src, t->ps);
	assert_int_equal(tlm_uffd_zeropage(&t->u, page(t, 1), t->ps, 0, NULL, NULL), 0);
}

static void t_event_fork(struct tctx *t)
{
	struct tlm_uffd_event ev;
	char link[64], target[64] = "";
	ssize_t n;

	bg_start(&t->bg[0], BG_FORK, NULL, 0);
	wait_event(t, &ev);
	assert_int_equal(ev.type, TLM_UFFD_EV_FORK);
	assert_true(ev.fork_fd >= 0);
	snprintf(link, sizeof(link), "/proc/self/fd/%d", ev.fork_fd);
	n = readlink(link, target, sizeof(target) - 1);
	assert_true(n > 0);
	target[n] = '\0';
	assert_non_null(strstr(target, "userfaultfd"));
	close(ev.fork_fd);
	assert_int_equal(bg_join(&t->bg[0], WAIT_MS), 0);
	assert_int_equal(t->bg[0].ret, 0);
}

/* ---- decoding, reading ----------------------------------------------------------- */

static void t_decode(struct tctx *t)
{
	struct uffd_msg m;
	struct tlm_uffd_event ev;

	memset(&m, 0, sizeof(m));
	m.event = UFFD_EVENT_PAGEFAULT;
	m.arg.pagefault.address = 0x7f0012345678ULL;
	m.arg.pagefault.flags = UFFD_PAGEFAULT_FLAG_WRITE | UFFD_PAGEFAULT_FLAG_MINOR;
	m.arg.pagefault.feat.ptid = 4242;
	assert_int_equal(tlm_uffd_decode(&m, &ev), 0);
	assert_int_equal(ev.type, TLM_UFFD_EV_PAGEFAULT);
	assert_int_equal(ev.addr, 0x7f0012345678ULL & ~(uint64_t)(t->ps - 1));
	assert_int_equal(ev.pf_flags, TLM_UFFD_PF_WRITE | TLM_UFFD_PF_MINOR);
	assert_int_equal(ev.ptid, 4242);
	assert_int_equal(ev.fork_fd, -1);
	m.arg.pagefault.flags = UFFD_PAGEFAULT_FLAG_WP;
	assert_int_equal(tlm_uffd_decode(&m, &ev), 0);
	assert_int_equal(ev.pf_flags, TLM_UFFD_PF_WP);

	memset(&m, 0, sizeof(m));
	m.event = UFFD_EVENT_FORK;
	m.arg.fork.ufd = 17;
	assert_int_equal(tlm_uffd_decode(&m, &ev), 0);
	assert_int_equal(ev.type, TLM_UFFD_EV_FORK);
	assert_int_equal(ev.fork_fd, 17);

	memset(&m, 0, sizeof(m));
	m.event = UFFD_EVENT_REMAP;
	m.arg.remap.from = 0x1000;
	m.arg.remap.to = 0x9000;
	m.arg.remap.len = 0x3000;
	assert_int_equal(tlm_uffd_decode(&m, &ev), 0);
	assert_int_equal(ev.type, TLM_UFFD_EV_REMAP);
	assert_int_equal(ev.addr, 0x1000);
	assert_int_equal(ev.new_addr, 0x9000);
	assert_int_equal(ev.len, 0x3000);

	memset(&m, 0, sizeof(m));
	m.event = UFFD_EVENT_REMOVE;
	m.arg.remove.start = 0x20000;
	m.arg.remove.end = 0x24000;
	assert_int_equal(tlm_uffd_decode(&m, &ev), 0);
	assert_int_equal(ev.type, TLM_UFFD_EV_REMOVE);
	assert_int_equal(ev.addr, 0x20000);
	assert_int_equal(ev.end, 0x24000);
	m.event = UFFD_EVENT_UNMAP;
	assert_int_equal(tlm_uffd_decode(&m, &ev), 0);
	assert_int_equal(ev.type, TLM_UFFD_EV_UNMAP);
	assert_int_equal(ev.end, 0x24000);

	m.event = 0x99;
	assert_int_equal(tlm_uffd_decode(&m, &ev), -EPROTO);
	m.event = 0;
	assert_int_equal(tlm_uffd_decode(&m, &ev), -EPROTO);

	assert_string_equal(tlm_uffd_event_name(TLM_UFFD_EV_PAGEFAULT), "PAGEFAULT");
	assert_string_equal(tlm_uffd_event_name(TLM_UFFD_EV_REMOVE), "REMOVE");
	assert_string_equal(tlm_uffd_event_name((enum tlm_uffd_event_type)77), "UNKNOWN");
}

/*
 * Reading never blocks, not even on a uffd opened without O_NONBLOCK (the kernel gives
 * those no usable poll): the library switches the fd to O_NONBLOCK on first read.
 */
static void t_read_blocking_fd(struct tctx *t)
{
	struct tlm_uffd_event ev[4];
	struct tlm_uffd u;
	int n, tries;

	assert_false(fcntl(t->u.fd, F_GETFL) & O_NONBLOCK);
	assert_int_equal(tlm_uffd_read_events(&t->u, ev, 4), -EAGAIN);
	assert_true(fcntl(t->u.fd, F_GETFL) & O_NONBLOCK);
	assert_int_equal(tlm_uffd_read_events(&t->u, ev, 0), -EINVAL);

	bg_start(&t->bg[0], BG_READ, page(t, 0), t->ps);
	for (tries = 0; tries < WAIT_MS / 10; tries++) {
		n = tlm_uffd_read_events(&t->u, ev, 4);
		if (n != -EAGAIN)
			break;
		usleep(10000);
	}
	assert_int_equal(n, 1);
	assert_int_equal(ev[0].type, TLM_UFFD_EV_PAGEFAULT);
	assert_int_equal(ev[0].addr, (uintptr_t)page(t, 0));
	assert_int_equal(tlm_uffd_zeropage(&t->u, page(t, 0), t->ps, 0, NULL, NULL), 0);
	assert_int_equal(bg_join(&t->bg[0], WAIT_MS), 0);

	assert_int_equal(open_like(t, &u, TLM_UFFD_NONBLOCK, 0), 0);
	assert_int_equal(tlm_uffd_read_events(&u, ev, 4), -EAGAIN);
	tlm_uffd_close(&u);
	assert_int_equal(tlm_uffd_read_events(&u, ev, 4), -EBADF);
}

/* ---- the table ------------------------------------------------------------------- */

#define REG_MISSING	TLM_UFFD_MODE_MISSING
#define REG_MINOR	(TLM_UFFD_MODE_MISSING | TLM_UFFD_MODE_MINOR)

static const struct ucase cases[] = {
	{ "probe", t_probe, 0, 0, MEM_NONE, 0, 0, 0, false },
	{ "bad-api", t_bad_api, 0, 0, MEM_NONE, 0, 0, 0, false },
	{ "bad-args", t_bad_args, 0, 0, MEM_ANON, 0, 4, 0, false },
	{ "missing-anon", t_missing_anon, 0, UFFD_FEATURE_THREAD_ID, MEM_ANON,
	  REG_MISSING, 4, 0, false },
	{ "minor-memfd", t_minor_memfd, UFFD_FEATURE_MINOR_SHMEM, 0, MEM_MEMFD,
	  REG_MINOR, 4, 0, false },
	{ "minor-hole-is-missing", t_minor_hole, UFFD_FEATURE_MINOR_SHMEM, 0, MEM_MEMFD,
	  REG_MINOR, 4, 0x2 | 0x8, false },
	{ "bulk-continue", t_bulk_continue, UFFD_FEATURE_MINOR_SHMEM, 0, MEM_MEMFD,
	  REG_MINOR, 16, 0, false },
	{ "copy-over-pagecache", t_copy_over_pagecache, UFFD_FEATURE_MINOR_SHMEM, 0,
	  MEM_MEMFD, REG_MINOR, 2, 0, false },
	{ "copy-eexist", t_copy_eexist, 0, 0, MEM_ANON, REG_MISSING, 12, 0, false },
	{ "zeropage", t_zeropage, 0, 0, MEM_ANON, REG_MISSING, 8, 0, false },
	{ "wake-after-dontwake", t_wake, 0, 0, MEM_ANON, REG_MISSING, 2, 0, false },
	{ "event-remove", t_event_remove, UFFD_FEATURE_EVENT_REMOVE, 0, MEM_ANON,
	  REG_MISSING, 8, 0, false },
	{ "event-unmap", t_event_unmap, UFFD_FEATURE_EVENT_UNMAP, 0, MEM_ANON,
	  REG_MISSING, 8, 0, false },
	{ "event-remap", t_event_remap, UFFD_FEATURE_EVENT_REMAP, 0, MEM_ANON,
	  REG_MISSING, 4, 0, false },
	{ "event-fork", t_event_fork, UFFD_FEATURE_EVENT_FORK, 0, MEM_ANON,
	  REG_MISSING, 2, 0, false },
	{ "decode", t_decode, 0, 0, MEM_NONE, 0, 0, 0, false },
	{ "read-blocking-fd", t_read_blocking_fd, 0, 0, MEM_ANON, REG_MISSING, 2, 0, true },
};

#define NCASES (sizeof(cases) / sizeof(cases[0]))

int main(void)
{
	struct CMUnitTest tests[NCASES];
	size_t i;
	int rc = tlm_uffd_probe(&g_supported, NULL);

	signal(SIGALRM, on_alarm);
	if (rc < 0) {
		return tt_skip("uffd", "test_uffd: no usable userfaultfd (%s)", strerror(-rc));
	}
	for (i = 0; i < NCASES; i++) {
		tests[i] = (struct CMUnitTest){
			.name = cases[i].name,
			.test_func = run_case,
			.setup_func = tctx_setup,
			.teardown_func = tctx_teardown,
			.initial_state = (void *)&cases[i],
		};
	}
	return cmocka_run_group_tests_name("uffd", tests, NULL, NULL);
}
