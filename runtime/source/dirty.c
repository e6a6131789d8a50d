/* dirty.c — dirty tracking of another process's memory range (dirty.h). */
#include "dirty.h"

#include <errno.h>
#include <fcntl.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <unistd.h>

#define PG 4096ull
#define PM_SOFT_DIRTY (1ull << 55)
#define VEC_LEN 512u                    /* ranges per PAGEMAP_SCAN call */

/* Linux 6.7 uapi (linux/fs.h); Debian 12's headers predate it. Kernel ABI, never changes. */
#ifndef PAGEMAP_SCAN
struct page_region {
	uint64_t start, end, categories;
};

struct pm_scan_arg {
	uint64_t size, flags, start, end, walk_end, vec, vec_len, max_pages;
	uint64_t category_inverted, category_mask, category_anyof_mask, return_mask;
};

#define PAGEMAP_SCAN          _IOWR('f', 16, struct pm_scan_arg)
#define PM_SCAN_WP_MATCHING   (1ull << 0)
#define PM_SCAN_CHECK_WPASYNC (1ull << 1)
#define PAGE_IS_WPALLOWED     (1ull << 0)
#define PAGE_IS_WRITTEN       (1ull << 1)
#endif

const char *tlm_dirty_method_name(enum tlm_dirty_method m)
{
	switch (m) {
	case TLM_DIRTY_PM_SCAN: return "pagemap-scan";
	case TLM_DIRTY_SOFT_DIRTY: return "soft-dirty";
	case TLM_DIRTY_NONE: break;
	}
	return "none";
}

/* One PAGEMAP_SCAN call from *from: the number of ranges in d->vec, or -errno. */
static int pm_scan(struct tlm_dirty *d, uint64_t *from, uint64_t flags, uint64_t mask)
{
	struct pm_scan_arg a = {
		.size = sizeof(a), .flags = flags, .start = *from, .end = d->start + d->len,
		.vec = (uintptr_t)d->vec, .vec_len = VEC_LEN,
		.category_mask = mask, .return_mask = mask,
	};
	int n = ioctl(d->pagemap_fd, PAGEMAP_SCAN, &a);

	if (n < 0)
		return -errno;
	*from = a.walk_end;
	return n;
}

/* Does the kernel scan this range, every page of it registered WP_ASYNC? (get only) */
static bool pm_scan_works(struct tlm_dirty *d)
{
	uint64_t from = d->start;
	int n;

	d->vec = calloc(VEC_LEN, sizeof(struct page_region));
	if (!d->vec)
		return false;
	n = pm_scan(d, &from, PM_SCAN_CHECK_WPASYNC, PAGE_IS_WPALLOWED);
	if (n == 1) {
		const struct page_region *r = d->vec;

		if (r->start == d->start && r->end == d->start + d->len)
			return true;
	}
	snprintf(d->why, sizeof(d->why), "PAGEMAP_SCAN %s", n < 0 ?
		 (n == -ENOTTY || n == -EINVAL ? "not in this kernel" : strerror(-n)) :
		 "sees pages not registered for userfaultfd WP_ASYNC");
	free(d->vec);
	d->vec = NULL;
	return false;
}

/* Soft-dirty exists in this kernel iff a page we write after clear_refs shows bit 55:
 * probed on a page of our own (clear_refs of our own process only). */
static bool soft_dirty_works(void)
{
	uint64_t e = 0;
	volatile char *p = mmap(NULL, PG, PROT_READ | PROT_WRITE,
				MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	int cr = open("/proc/self/clear_refs", O_WRONLY | O_CLOEXEC);
	int pm = open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC);
	bool ok = p != MAP_FAILED && cr >= 0 && pm >= 0;

	if (ok) {
		p[0] = 1;
		ok = write(cr, "4", 1) == 1;
		p[0] = 2;
		ok = ok && pread(pm, &e, 8, (off_t)((uintptr_t)p / PG * 8)) == 8 &&
		     (e & PM_SOFT_DIRTY);
	}
	if (p != MAP_FAILED)
		munmap((void *)p, PG);
	if (cr >= 0)
		close(cr);
	if (pm >= 0)
		close(pm);
	return ok;
}

int tlm_dirty_open(struct tlm_dirty *d, pid_t pid, uint64_t start, uint64_t len)
{
	char path[64];

	*d = (struct tlm_dirty){ .pid = pid, .start = start, .len = len, .pagemap_fd = -1,
				 .clear_refs_fd = -1 };
	if (start % PG || len % PG || !len)
		return -EINVAL;
	snprintf(path, sizeof(path), "/proc/%d/pagemap", (int)pid);
	d->pagemap_fd = open(path, O_RDONLY | O_CLOEXEC);
	if (d->pagemap_fd < 0)
		return -errno;
	if (pm_scan_works(d)) {
		d->method = TLM_DIRTY_PM_SCAN;
		snprintf(d->why, sizeof(d->why), "PAGEMAP_SCAN + userfaultfd WP_ASYNC");
		return 0;
	}
	snprintf(path, sizeof(path), "/proc/%d/clear_refs", (int)pid);
	if (soft_dirty_works() && (d->clear_refs_fd = open(path, O_WRONLY | O_CLOEXEC)) >= 0) {
		d->method = TLM_DIRTY_SOFT_DIRTY;
		snprintf(d->why + strlen(d->why), sizeof(d->why) - strlen(d->why),
			 "; soft-dirty bits instead");
		return 0;
	}
	snprintf(d->why + strlen(d->why), sizeof(d->why) - strlen(d->why),
		 "; no soft-dirty in this kernel: pages are read only after the stop");
	return 0;
}

/* Walk the range with PAGEMAP_SCAN; report PAGE_IS_WRITTEN ranges to fn (if any) and
 * write-protect them again (WP_MATCHING: per page, under the page-table lock). */
static int pm_scan_walk(struct tlm_dirty *d, int (*fn)(void *, uint64_t, uint64_t),
			void *arg)
{
	uint64_t from = d->start, end = d->start + d->len;

	while (from < end) {
		const struct page_region *v = d->vec;
		int n = pm_scan(d, &from, PM_SCAN_WP_MATCHING | PM_SCAN_CHECK_WPASYNC,
				PAGE_IS_WRITTEN);

		if (n < 0)
			return n;
		for (int i = 0; fn && i < n; i++) {
			int rc = fn(arg, (v[i].start - d->start) / PG, (v[i].end - v[i].start) / PG);

			if (rc)
				return rc;
		}
	}
	return 0;
}

/* Soft-dirty: pagemap entries read 512 at a time, runs of bit 55 reported. */
static int soft_dirty_walk(struct tlm_dirty *d, int (*fn)(void *, uint64_t, uint64_t),
			   void *arg)
{
	uint64_t e[512], npages = d->len / PG, run = 0, first = 0;

	for (uint64_t i = 0; i < npages; i++) {
		if (i % 512 == 0) {
			uint64_t m = npages - i < 512 ? npages - i : 512;
			off_t off = (off_t)((d->start / PG + i) * 8);

			if (pread(d->pagemap_fd, e, m * 8, off) != (ssize_t)(m * 8))
				return -EIO;
		}
		if (e[i % 512] & PM_SOFT_DIRTY) {
			if (!run++)
				first = i;
		} else if (run) {
			int rc = fn(arg, first, run);

			run = 0;
			if (rc)
				return rc;
		}
	}
	return run ? fn(arg, first, run) : 0;
}

int tlm_dirty_arm(struct tlm_dirty *d)
{
	switch (d->method) {
	case TLM_DIRTY_PM_SCAN:
		return pm_scan_walk(d, NULL, NULL);
	case TLM_DIRTY_SOFT_DIRTY:
		return pwrite(d->clear_refs_fd, "4", 1, 0) == 1 ? 0 : -errno;
	case TLM_DIRTY_NONE:
		break;
	}
	return -ENOTSUP;
}

int tlm_dirty_collect(struct tlm_dirty *d, int (*fn)(void *arg, uint64_t first, uint64_t n),
		      void *arg)
{
	switch (d->method) {
	case TLM_DIRTY_PM_SCAN:
		return pm_scan_walk(d, fn, arg);
	case TLM_DIRTY_SOFT_DIRTY:
		return soft_dirty_walk(d, fn, arg);
	case TLM_DIRTY_NONE:
		break;
	}
	return -ENOTSUP;
}

void tlm_dirty_close(struct tlm_dirty *d)
{
	if (d->pagemap_fd >= 0)
		close(d->pagemap_fd);
	if (d->clear_refs_fd >= 0)
		close(d->clear_refs_fd);
	free(d->vec);
	d->pagemap_fd = d->clear_refs_fd = -1;
	d->vec = NULL;
}
