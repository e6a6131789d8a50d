/*
 * dirty.h — which pages of another process's memory range were written since a point in
 * time: the dirty tracking that live classification at the source rests on.
 *
 *     struct tlm_dirty d;
 *     tlm_dirty_open(&d, qemu_pid, ram_addr, ram_len);      // picks a method, says why
 *     log_info("dirty tracking: %s (%s)", tlm_dirty_method_name(d.method), d.why);
 *     tlm_dirty_arm(&d);                  // from now on every write is seen
 *     ... read and classify pages while the guest runs ...
 *     tlm_dirty_collect(&d, redo, ctx);   // redo(ctx, first, n) per written range
 *     tlm_dirty_close(&d);
 *
 * Methods, probed in this order when the tracker opens:
 *   PM_SCAN     PAGEMAP_SCAN on /proc/PID/pagemap (Linux 6.7+) over a range the owner
 *               registered with userfaultfd WP + WP_ASYNC (the glue does it inside QEMU:
 *               registration is not inherited and cannot be done from outside). Each
 *               collect returns the ranges written since the previous one and
 *               write-protects them again, atomically per page: no write is lost.
 *   SOFT_DIRTY  /proc/PID/clear_refs "4" + pagemap bit 55 (kernels built with
 *               CONFIG_MEM_SOFT_DIRTY, such as Debian 12's 6.1). clear_refs resets the
 *               whole process and would race with a running guest's writes, so it is
 *               written only by arm: each collect reports every page written since arm.
 *   NONE        neither works: nothing read before the stop can be trusted, the caller
 *               falls back to classifying after the stop (pure post-copy).
 * Correctness rule (docs/ARCHITECTURE.md, "Correctness rules"): a page read while the
 * guest runs is final only if tracking was armed before the read and the collect made
 * after the guest stopped does not report it.
 */
#ifndef TLM_DIRTY_H
#define TLM_DIRTY_H

#include <stdint.h>
#include <sys/types.h>

enum tlm_dirty_method { TLM_DIRTY_NONE = 0, TLM_DIRTY_PM_SCAN, TLM_DIRTY_SOFT_DIRTY };

struct tlm_dirty {
	enum tlm_dirty_method method;
	pid_t pid;
	uint64_t start, len;            /* the tracked range in the process (page aligned) */
	int pagemap_fd, clear_refs_fd;  /* -1 when not used */
	void *vec;                      /* PAGEMAP_SCAN output (struct page_region[]) */
	char why[160];                  /* why this method: for the daemon's log */
};

/* Choose the best method for [start, start + len) of pid. 0 (method NONE included: see
 * d->why), or -errno when the process or its pagemap cannot be opened at all. */
int tlm_dirty_open(struct tlm_dirty *d, pid_t pid, uint64_t start, uint64_t len);
/* Start tracking: every write from now on is reported by the next collect. 0 or -errno. */
int tlm_dirty_arm(struct tlm_dirty *d);
/* Report the written ranges (first page index in the range, page count) to fn; a non-zero
 * return from fn stops the walk and is returned. -ENOTSUP with method NONE. */
int tlm_dirty_collect(struct tlm_dirty *d, int (*fn)(void *arg, uint64_t first, uint64_t n),
		      void *arg);
void tlm_dirty_close(struct tlm_dirty *d);
const char *tlm_dirty_method_name(enum tlm_dirty_method m);

#endif
