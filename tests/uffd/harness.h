/*
 * harness.h — shared plumbing for the userfaultfd tests: a case table entry, the
 * per-case context (memory + uffd), background threads that fault or change the
 * mappings, bounded waits for events, /proc/self/pagemap.
 *
 * Nothing here can hang a test: every wait has a timeout, and teardown closes the uffd
 * first, which wakes every thread still sleeping on a fault or an event.
 */
#ifndef TLM_TEST_UFFD_HARNESS_H
#define TLM_TEST_UFFD_HARNESS_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "tlm_uffd.h"

#define WAIT_MS		5000	/* longest wait for an event or a thread */
#define CASE_WATCHDOG_S	30	/* a whole case, in case a wait is missing somewhere */
#define PM_PRESENT	(1ULL << 63)
#define PM_FILE		(1ULL << 61)	/* file page or shared anon */

enum mem_type {
	MEM_NONE,	/* no memory */
	MEM_ANON,	/* private anonymous */
	MEM_MEMFD,	/* MAP_PRIVATE of a memfd, page i filled with pattern(i) */
};

struct tctx;

struct ucase {
	const char *name;
	void (*fn)(struct tctx *t);
	uint64_t need;		/* features the case cannot run without */
	uint64_t want;		/* features it uses when the kernel has them */
	enum mem_type mem;
	unsigned modes;		/* register modes; 0 leaves the memory unregistered */
	size_t pages;
	uint64_t holes;		/* MEM_MEMFD: bitmask of pages punched out of the file */
	bool blocking;		/* open the uffd without TLM_UFFD_NONBLOCK */
};

enum bg_op { BG_READ, BG_WRITE, BG_DONTNEED, BG_MUNMAP, BG_MREMAP, BG_FORK };

/* A background thread doing one thing that blocks on userfaultfd. */
struct bg {
	pthread_t th;
	bool started;
	enum bg_op op;
	char *addr;
	size_t len;		/* BG_READ/BG_WRITE: touches every page of [addr, addr+len) */
	char *new_addr;		/* BG_MREMAP */
	uint8_t wval;		/* BG_WRITE: value written to each page's first byte */
	/* results */
	atomic_int done;
	pid_t tid;
	long ret;
	int err;
	uint8_t first;		/* BG_READ: first byte of the first page */
};

struct tctx {
	const struct ucase *c;
	struct tlm_uffd u;
	unsigned open_flags;	/* flags t->u was opened with (USER_ONLY when unprivileged) */
	size_t ps;
	char *area;
	size_t len;
	int memfd;
	struct bg bg[2];
};

extern uint64_t g_supported;	/* tlm_uffd_probe() result, set by main */

int tctx_setup(void **state);
int tctx_teardown(void **state);
void run_case(void **state);
void on_alarm(int sig);

void pattern(void *buf, size_t len, unsigned seed);
char *page(struct tctx *t, size_t i);
void bg_start(struct bg *b, enum bg_op op, char *addr, size_t len);
int bg_join(struct bg *b, int timeout_ms);
bool bg_done(struct bg *b);
int open_like(struct tctx *t, struct tlm_uffd *u, unsigned flags, uint64_t features);
int raw_uffd(struct tctx *t);
void wait_event(struct tctx *t, struct tlm_uffd_event *ev);
bool event_pending(struct tctx *t, int timeout_ms);
uint64_t pagemap(struct tctx *t, const void *addr);
void feature_list(uint64_t features, char *buf, size_t len);

#endif
