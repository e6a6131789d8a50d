/*
 * uffd.c — userfaultfd: open + API handshake, feature probe and names,
 * register/unregister, and the range calls (COPY / ZEROPAGE / CONTINUE / WAKE)
 * with partial-progress handling. Events are decoded in event.c.
 */
#include "tlm_uffd.h"

#include <errno.h>
#include <fcntl.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/syscall.h>
#include <unistd.h>

#ifndef USERFAULTFD_IOC_NEW
#define USERFAULTFD_IOC_NEW		_IO(0xAA, 0x00)	/* /dev/userfaultfd, Linux 6.1 */
#endif
#ifndef UFFD_USER_MODE_ONLY
#define UFFD_USER_MODE_ONLY		1
#endif

#define TLM_UFFD_OPEN_FLAGS	(TLM_UFFD_NONBLOCK | TLM_UFFD_USER_ONLY)
#define TLM_UFFD_MODES		(TLM_UFFD_MODE_MISSING | TLM_UFFD_MODE_MINOR | TLM_UFFD_MODE_WP)
#define TLM_UFFD_RANGE_FLAGS	(TLM_UFFD_DONTWAKE | TLM_UFFD_SKIP_EXISTING)

static const struct {
	uint64_t bit;
	const char *name;
} feature_names[] = {
	{ UFFD_FEATURE_PAGEFAULT_FLAG_WP,	"PAGEFAULT_FLAG_WP" },
	{ UFFD_FEATURE_EVENT_FORK,		"EVENT_FORK" },
	{ UFFD_FEATURE_EVENT_REMAP,		"EVENT_REMAP" },
	{ UFFD_FEATURE_EVENT_REMOVE,		"EVENT_REMOVE" },
	{ UFFD_FEATURE_MISSING_HUGETLBFS,	"MISSING_HUGETLBFS" },
	{ UFFD_FEATURE_MISSING_SHMEM,		"MISSING_SHMEM" },
	{ UFFD_FEATURE_EVENT_UNMAP,		"EVENT_UNMAP" },
	{ UFFD_FEATURE_SIGBUS,			"SIGBUS" },
	{ UFFD_FEATURE_THREAD_ID,		"THREAD_ID" },
	{ UFFD_FEATURE_MINOR_HUGETLBFS,		"MINOR_HUGETLBFS" },
	{ UFFD_FEATURE_MINOR_SHMEM,		"MINOR_SHMEM" },
	{ UFFD_FEATURE_EXACT_ADDRESS,		"EXACT_ADDRESS" },
	{ UFFD_FEATURE_WP_HUGETLBFS_SHMEM,	"WP_HUGETLBFS_SHMEM" },
	{ UFFD_FEATURE_WP_UNPOPULATED,		"WP_UNPOPULATED" },
	{ UFFD_FEATURE_POISON,			"POISON" },
	{ UFFD_FEATURE_WP_ASYNC,		"WP_ASYNC" },
	{ UFFD_FEATURE_MOVE,			"MOVE" },
};

const char *tlm_uffd_feature_name(uint64_t bit)
{
	size_t i;

	for (i = 0; i < sizeof(feature_names) / sizeof(feature_names[0]); i++)
		if (feature_names[i].bit == bit)
			return feature_names[i].name;
	return NULL;
}

/* Appends " word" (no leading space at the start); false when buf is too small. */
static bool str_append(char *buf, size_t len, size_t *pos, const char *word)
{
	int n = snprintf(buf + *pos, len - *pos, "%s%s", *pos ? " " : "", word);

	if (n < 0 || (size_t)n >= len - *pos) {
		*pos = len - 1;
		return false;
	}
	*pos += (size_t)n;
	return true;
}

/*
 * MISSING has no feature bit (every userfaultfd handles missing faults on anonymous
 * memory), so it always leads the list. Returns the string length or -ENOSPC
 * (buf then holds a truncated, NUL-terminated list).
 */
int tlm_uffd_features_str(uint64_t features, char *buf, size_t len)
{
	size_t pos = 0;
	bool ok;
	int i;

	if (!buf || !len)
		return -EINVAL;
	buf[0] = '\0';
	ok = str_append(buf, len, &pos, "MISSING");
	for (i = 0; i < 64 && ok; i++) {
		uint64_t bit = 1ULL << i;
		const char *name = tlm_uffd_feature_name(bit);
		char unknown[16];

		if (!(features & bit))
			continue;
		if (!name) {
			snprintf(unknown, sizeof(unknown), "bit%d", i);
			name = unknown;
		}
		ok = str_append(buf, len, &pos, name);
	}
	return ok ? (int)pos : -ENOSPC;
}

/*
 * A new userfaultfd: the syscall first; /dev/userfaultfd when the syscall is missing
 * or refused (vm.unprivileged_userfaultfd=0 without CAP_SYS_PTRACE, seccomp). If both
 * fail, the syscall's errno is the more telling one (EPERM: not allowed to) unless
 * the syscall does not exist.
 */
static int uffd_new_fd(unsigned flags)
{
	int kflags = O_CLOEXEC, fd, dev, err;

	if (flags & TLM_UFFD_NONBLOCK)
		kflags |= O_NONBLOCK;
	if (flags & TLM_UFFD_USER_ONLY)
		kflags |= UFFD_USER_MODE_ONLY;
	fd = (int)syscall(SYS_userfaultfd, kflags);
	if (fd >= 0)
		return fd;
	err = -errno;
	dev = open("/dev/userfaultfd", O_RDWR | O_CLOEXEC);
	if (dev < 0)
		return err == -ENOSYS ? -errno : err;
	fd = ioctl(dev, USERFAULTFD_IOC_NEW, kflags);
	if (fd < 0 && err == -ENOSYS)
		err = -errno;
	close(dev);
	return fd >= 0 ? fd : err;
}

static int uffd_api(int fd, uint64_t features, uint64_t *got_features, uint64_t *ioctls)
{
	struct uffdio_api api = { .api = UFFD_API, .features = features };

	if (ioctl(fd, UFFDIO_API, &api) < 0)
		return -errno;
	if (got_features)
		*got_features = api.features;
	if (ioctls)
		*ioctls = api.ioctls;
	return 0;
}

int tlm_uffd_probe(uint64_t *features, uint64_t *ioctls)
{
	int fd, rc;

	fd = uffd_new_fd(0);
	if (fd == -EPERM)	/* unprivileged: user-mode-only uffds may still be allowed */
		fd = uffd_new_fd(TLM_UFFD_USER_ONLY);
	if (fd < 0)
		return fd;
	rc = uffd_api(fd, 0, features, ioctls);
	close(fd);
	return rc;
}

int tlm_uffd_open(struct tlm_uffd *u, unsigned flags, uint64_t features)
{
	uint64_t supported = 0, ioctls = 0;
	int fd, rc;

	u->fd = -1;
	u->features = 0;
	u->ioctls = 0;
	if (flags & ~TLM_UFFD_OPEN_FLAGS)
		return -EINVAL;
	/*
	 * The kernel answers EINVAL both for an unknown feature and for other API
	 * misuse, and a failed UFFDIO_API cannot be retried on the same fd: ask on a
	 * throw-away fd first so -EINVAL here means "feature not supported".
	 */
	if (features) {
		rc = tlm_uffd_probe(&supported, NULL);
		if (rc < 0)
			return rc;
		if (features & ~supported)
			return -EINVAL;
	}
	fd = uffd_new_fd(flags);
	if (fd < 0)
		return fd;
	rc = uffd_api(fd, features, &supported, &ioctls);
	if (rc < 0) {
		close(fd);
		return rc;
	}
	u->fd = fd;
	u->features = features & supported;
	u->ioctls = ioctls;
	return 0;
}

void tlm_uffd_close(struct tlm_uffd *u)
{
	if (u->fd >= 0)
		close(u->fd);
	u->fd = -1;
}

void tlm_uffd_adopt(struct tlm_uffd *u, int fd, uint64_t features)
{
	u->fd = fd;
	u->features = features;
	/* What every handshaken uffd allows; the real bitmap stayed with the sender. */
	u->ioctls = (1ULL << _UFFDIO_REGISTER) | (1ULL << _UFFDIO_UNREGISTER) |
		    (1ULL << _UFFDIO_API);
}

static size_t page_size(void)
{
	return (size_t)sysconf(_SC_PAGESIZE);
}

static bool range_ok(const void *addr, size_t len)
{
	size_t ps = page_size();

	return len && !((uintptr_t)addr % ps) && !(len % ps) &&
	       (uintptr_t)addr + len > (uintptr_t)addr;
}

int tlm_uffd_register(struct tlm_uffd *u, void *addr, size_t len, unsigned modes,
		      uint64_t *range_ioctls)
{
	struct uffdio_register reg = {
		.range = { .start = (uintptr_t)addr, .len = len },
	};

	if (!range_ok(addr, len) || !modes || (modes & ~TLM_UFFD_MODES))
		return -EINVAL;
	if (modes & TLM_UFFD_MODE_MISSING)
		reg.mode |= UFFDIO_REGISTER_MODE_MISSING;
	if (modes & TLM_UFFD_MODE_MINOR)
		reg.mode |= UFFDIO_REGISTER_MODE_MINOR;
	if (modes & TLM_UFFD_MODE_WP)
		reg.mode |= UFFDIO_REGISTER_MODE_WP;
	if (ioctl(u->fd, UFFDIO_REGISTER, &reg) < 0)
		return -errno;
	if (range_ioctls)
		*range_ioctls = reg.ioctls;
	return 0;
}

int tlm_uffd_unregister(struct tlm_uffd *u, void *addr, size_t len)
{
	struct uffdio_range r = { .start = (uintptr_t)addr, .len = len };

	if (!range_ok(addr, len))
		return -EINVAL;
	return ioctl(u->fd, UFFDIO_UNREGISTER, &r) < 0 ? -errno : 0;
}

int tlm_uffd_wake(struct tlm_uffd *u, void *addr, size_t len)
{
	struct uffdio_range r = { .start = (uintptr_t)addr, .len = len };

	if (!range_ok(addr, len))
		return -EINVAL;
	return ioctl(u->fd, UFFDIO_WAKE, &r) < 0 ? -errno : 0;
}

/* ---- range fills ------------------------------------------------------------------ */

enum fill_op { FILL_COPY, FILL_ZEROPAGE, FILL_CONTINUE };

struct fill {
	enum fill_op op;
	int fd;
	uintptr_t dst;
	uintptr_t src;		/* FILL_COPY only */
	size_t len;
	unsigned flags;		/* TLM_UFFD_DONTWAKE | TLM_UFFD_SKIP_EXISTING */
};

/*
 * One ioctl over [dst + off, dst + len). Returns the kernel's progress field: bytes
 * placed (> 0) or -errno (< 0), 0 if the kernel failed before writing it (argument
 * checks). *err gets the ioctl's own result (0 or -errno).
 */
static int64_t fill_once(const struct fill *f, size_t off, int *err)
{
	bool dontwake = f->flags & TLM_UFFD_DONTWAKE;
	uint64_t start = f->dst + off, len = f->len - off;

	switch (f->op) {
	case FILL_COPY: {
		struct uffdio_copy c = {
			.dst = start, .src = f->src + off, .len = len,
			.mode = dontwake ? UFFDIO_COPY_MODE_DONTWAKE : 0,
		};

		*err = ioctl(f->fd, UFFDIO_COPY, &c) < 0 ? -errno : 0;
		return c.copy;
	}
	case FILL_ZEROPAGE: {
		struct uffdio_zeropage z = {
			.range = { .start = start, .len = len },
			.mode = dontwake ? UFFDIO_ZEROPAGE_MODE_DONTWAKE : 0,
		};

		*err = ioctl(f->fd, UFFDIO_ZEROPAGE, &z) < 0 ? -errno : 0;
		return z.zeropage;
	}
	case FILL_CONTINUE: {
		struct uffdio_continue k = {
			.range = { .start = start, .len = len },
			.mode = dontwake ? UFFDIO_CONTINUE_MODE_DONTWAKE : 0,
		};

		*err = ioctl(f->fd, UFFDIO_CONTINUE, &k) < 0 ? -errno : 0;
		return k.mapped;
	}
	}
	*err = -EINVAL;
	return 0;
}

/*
 * Steps over the present page at dst + off. A thread may sleep on a fault for that
 * page (it raced with whoever placed it with DONTWAKE): wake it unless the caller
 * batches wakes itself.
 */
static void fill_skip_page(const struct fill *f, size_t off, size_t ps)
{
	struct uffdio_range r = { .start = f->dst + off, .len = ps };

	if (!(f->flags & TLM_UFFD_DONTWAKE))
		ioctl(f->fd, UFFDIO_WAKE, &r);
}

/*
 * When something stops a range call after it placed some pages (a present page, a
 * hole, a signal), the kernel answers EAGAIN with the progress field > 0 (bytes
 * placed): continue from there; the next call reports the real reason as a negative
 * progress field (EAGAIN there means mmap_changing: an event is unread). *done counts every byte from dst that is now present:
 * placed by us or (SKIP_EXISTING) already there, so callers resume at dst + *done.
 */
static int fill_range(struct fill *f, size_t *done, size_t *existed)
{
	size_t off = 0, skipped = 0, ps = page_size();
	int rc = 0;

	if (!range_ok((void *)f->dst, f->len) || (f->flags & ~TLM_UFFD_RANGE_FLAGS) ||
	    (f->op == FILL_COPY && !f->src))
		rc = -EINVAL;
	while (!rc && off < f->len) {
		int err;
		int64_t n = fill_once(f, off, &err);

		if (n > 0)
			off += (size_t)n;
		if (!err) {
			off = f->len;
			break;
		}
		if (n > 0 && err == -EAGAIN)
			continue;
		if (n < 0)
			err = (int)n;
		if (err == -EEXIST && (f->flags & TLM_UFFD_SKIP_EXISTING)) {
			fill_skip_page(f, off, ps);
			off += ps;
			skipped += ps;
			continue;
		}
		rc = err;
	}
	if (done)
		*done = off;
	if (existed)
		*existed = skipped;
	return rc;
}

int tlm_uffd_copy(struct tlm_uffd *u, void *dst, const void *src, size_t len,
		  unsigned flags, size_t *done, size_t *existed)
{
	struct fill f = {
		.op = FILL_COPY, .fd = u->fd, .dst = (uintptr_t)dst,
		.src = (uintptr_t)src, .len = len, .flags = flags,
	};

	return fill_range(&f, done, existed);
}

int tlm_uffd_zeropage(struct tlm_uffd *u, void *dst, size_t len, unsigned flags,
		      size_t *done, size_t *existed)
{
	struct fill f = {
		.op = FILL_ZEROPAGE, .fd = u->fd, .dst = (uintptr_t)dst,
		.len = len, .flags = flags,
	};

	return fill_range(&f, done, existed);
}

int tlm_uffd_continue(struct tlm_uffd *u, void *dst, size_t len, unsigned flags,
		      size_t *done, size_t *existed)
{
	struct fill f = {
		.op = FILL_CONTINUE, .fd = u->fd, .dst = (uintptr_t)dst,
		.len = len, .flags = flags,
	};

	return fill_range(&f, done, existed);
}
