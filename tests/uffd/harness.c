/*
 * harness.c — see harness.h.
 */
#include "tlm_test.h"
#include "harness.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

uint64_t g_supported;
static const char *g_case;	/* the running case, for the watchdog */

/* Watchdog: a case that hangs despite every bounded wait ends the run, named. */
void on_alarm(int sig)
{
	static const char msg[] = "test_uffd: watchdog: case hung: ";
	const char *name = g_case ? g_case : "?";

	(void)sig;
	(void)!write(2, msg, sizeof(msg) - 1);
	(void)!write(2, name, strlen(name));
	(void)!write(2, "\n", 1);
	_exit(1);
}

void pattern(void *buf, size_t len, unsigned seed)
{
	uint8_t *p = buf;
	size_t i;

	for (i = 0; i < len; i++)
		p[i] = (uint8_t)(seed * 131u + i * 7u + (i >> 8) + 1u);
}

char *page(struct tctx *t, size_t i)
{
	return t->area + i * t->ps;
}

void feature_list(uint64_t features, char *buf, size_t len)
{
	size_t pos = 0;
	int i;

	buf[0] = '\0';
	for (i = 0; i < 64; i++) {
		const char *name = tlm_uffd_feature_name(1ULL << i);

		if (!(features & (1ULL << i)) || pos >= len)
			continue;
		pos += (size_t)snprintf(buf + pos, len - pos, "%s%s", pos ? " " : "",
					name ? name : "?");
	}
}

/* ---- background threads ---------------------------------------------------------- */

static void bg_touch(struct bg *b)
{
	size_t ps = (size_t)sysconf(_SC_PAGESIZE), off;

	for (off = 0; off < b->len; off += ps) {
		volatile char *p = b->addr + off;

		if (b->op == BG_WRITE)
			*p = (char)b->wval;
		else if (off == 0)
			b->first = (uint8_t)*p;
		else
			(void)*p;
	}
}

/* Forks a child that leaves at once; the fork itself waits for the FORK event. */
static long bg_fork(void)
{
	int status;
	pid_t pid = fork();

	if (pid < 0)
		return -errno;
	if (pid == 0)
		_exit(0);
	if (waitpid(pid, &status, 0) < 0)
		return -errno;
	return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

static void *bg_main(void *arg)
{
	struct bg *b = arg;
	void *p;

	b->tid = gettid();
	switch (b->op) {
	case BG_READ:
	case BG_WRITE:
		bg_touch(b);
		break;
	case BG_DONTNEED:
		b->ret = madvise(b->addr, b->len, MADV_DONTNEED);
		break;
	case BG_MUNMAP:
		b->ret = munmap(b->addr, b->len);
		break;
	case BG_MREMAP:
		p = mremap(b->addr, b->len, b->len, MREMAP_MAYMOVE | MREMAP_FIXED, b->new_addr);
		b->ret = p == MAP_FAILED ? -1 : 0;
		break;
	case BG_FORK:
		b->ret = bg_fork();
		break;
	}
	b->err = b->ret < 0 ? errno : 0;
	atomic_store(&b->done, 1);
	return NULL;
}

void bg_start(struct bg *b, enum bg_op op, char *addr, size_t len)
{
	b->op = op;
	b->addr = addr;
	b->len = len;
	atomic_store(&b->done, 0);
	assert_int_equal(pthread_create(&b->th, NULL, bg_main, b), 0);
	b->started = true;
}

bool bg_done(struct bg *b)
{
	return atomic_load(&b->done) != 0;
}

/* 0 once the thread is joined, ETIMEDOUT when it is still blocked. */
int bg_join(struct bg *b, int timeout_ms)
{
	struct timespec ts;
	int rc;

	if (!b->started)
		return 0;
	ts = tt_deadline(timeout_ms);
	rc = pthread_timedjoin_np(b->th, NULL, &ts);
	if (!rc)
		b->started = false;
	return rc;
}

/* ---- events, pagemap ------------------------------------------------------------- */

bool event_pending(struct tctx *t, int timeout_ms)
{
	struct pollfd pfd = { .fd = t->u.fd, .events = POLLIN };

	return poll(&pfd, 1, timeout_ms) == 1 && (pfd.revents & POLLIN);
}

void wait_event(struct tctx *t, struct tlm_uffd_event *ev)
{
	int n;

	if (!event_pending(t, WAIT_MS))
		fail_msg("no userfaultfd event within %d ms", WAIT_MS);
	n = tlm_uffd_read_events(&t->u, ev, 1);
	assert_int_equal(n, 1);
}

uint64_t pagemap(struct tctx *t, const void *addr)
{
	uint64_t e = 0;
	int fd = open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC);

	assert_true(fd >= 0);
	assert_int_equal(pread(fd, &e, sizeof(e), (off_t)((uintptr_t)addr / t->ps * 8)),
			 sizeof(e));
	close(fd);
	return e;
}

/* Another uffd like t->u: user-mode-only when t->u had to be. */
int open_like(struct tctx *t, struct tlm_uffd *u, unsigned flags, uint64_t features)
{
	return tlm_uffd_open(u, flags | (t->open_flags & TLM_UFFD_USER_ONLY), features);
}

/* A bare uffd with no API handshake yet: the syscall, else /dev/userfaultfd. */
int raw_uffd(struct tctx *t)
{
	int fl = O_CLOEXEC | ((t->open_flags & TLM_UFFD_USER_ONLY) ? UFFD_USER_MODE_ONLY : 0);
	int fd = (int)syscall(SYS_userfaultfd, fl), dev;

	if (fd >= 0)
		return fd;
	dev = open("/dev/userfaultfd", O_RDWR | O_CLOEXEC);
	if (dev < 0)
		return -1;
	fd = ioctl(dev, USERFAULTFD_IOC_NEW, fl);
	close(dev);
	return fd;
}

/* ---- per-case setup -------------------------------------------------------------- */

static void setup_memfd(struct tctx *t)
{
	const struct ucase *c = t->c;
	char *buf = malloc(t->ps);
	size_t i;

	assert_non_null(buf);
	t->memfd = memfd_create("tlm-uffd-test", MFD_CLOEXEC);
	assert_true(t->memfd >= 0);
	assert_int_equal(ftruncate(t->memfd, (off_t)t->len), 0);
	for (i = 0; i < c->pages; i++) {
		if (c->holes & (1ULL << i))
			continue;	/* never written: a hole, not in the page cache */
		pattern(buf, t->ps, (unsigned)i);
		assert_int_equal(pwrite(t->memfd, buf, t->ps, (off_t)(i * t->ps)),
				 (ssize_t)t->ps);
	}
	free(buf);
	t->area = mmap(NULL, t->len, PROT_READ | PROT_WRITE, MAP_PRIVATE, t->memfd, 0);
	assert_true(t->area != MAP_FAILED);
}

static void setup_memory(struct tctx *t)
{
	const struct ucase *c = t->c;

	t->len = c->pages * t->ps;
	if (c->mem == MEM_ANON) {
		t->area = mmap(NULL, t->len, PROT_READ | PROT_WRITE,
			       MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
		assert_true(t->area != MAP_FAILED);
	} else if (c->mem == MEM_MEMFD) {
		setup_memfd(t);
	}
}

int tctx_setup(void **state)
{
	struct tctx *t = calloc(1, sizeof(*t));

	if (!t)
		return -1;
	t->c = *state;
	t->u.fd = -1;
	t->memfd = -1;
	t->ps = (size_t)sysconf(_SC_PAGESIZE);
	*state = t;
	return 0;
}

/* Closing the uffd first releases every thread still blocked on it. */
int tctx_teardown(void **state)
{
	struct tctx *t = *state;
	size_t i;

	alarm(0);
	tlm_uffd_close(&t->u);
	for (i = 0; i < sizeof(t->bg) / sizeof(t->bg[0]); i++)
		if (bg_join(&t->bg[i], WAIT_MS))
			fprintf(stderr, "%s: background thread %zu still blocked\n",
				t->c->name, i);
	if (t->area && t->area != MAP_FAILED)
		munmap(t->area, t->len);
	if (t->memfd >= 0)
		close(t->memfd);
	free(t);
	return 0;
}

void run_case(void **state)
{
	struct tctx *t = *state;
	const struct ucase *c = t->c;
	uint64_t missing = c->need & ~g_supported, features;
	unsigned flags;
	int rc;

	g_case = c->name;
	alarm(CASE_WATCHDOG_S);
	if (missing) {
		char names[256];

		feature_list(missing, names, sizeof(names));
		TT_SKIP_CASE("uffd", "%s: kernel lacks userfaultfd feature(s) %s: skipped\n",
			     c->name, names);
	}
	setup_memory(t);
	flags = c->blocking ? 0 : TLM_UFFD_NONBLOCK;
	features = c->need | (c->want & g_supported);
	rc = tlm_uffd_open(&t->u, flags, features);
	if (rc == -EPERM) {	/* unprivileged: user-mode faults are all these cases make */
		flags |= TLM_UFFD_USER_ONLY;
		rc = tlm_uffd_open(&t->u, flags, features);
	}
	if (rc == -EPERM) {
		TT_SKIP_CASE("uffd", "%s: userfaultfd refused (EPERM): skipped\n", c->name);
	}
	assert_int_equal(rc, 0);
	t->open_flags = flags;
	if (c->modes)
		assert_int_equal(tlm_uffd_register(&t->u, t->area, t->len, c->modes, NULL), 0);
	c->fn(t);
}
