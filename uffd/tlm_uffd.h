/*
 * tlm_uffd.h — a small library over Linux userfaultfd(2).
 *
 * Usage:
 *
 *     struct tlm_uffd u;
 *     int rc = tlm_uffd_open(&u, TLM_UFFD_NONBLOCK,
 *                            UFFD_FEATURE_MINOR_SHMEM | UFFD_FEATURE_EVENT_REMOVE);
 *     if (rc < 0) { ... -rc is errno: -ENOSYS no userfaultfd, -EINVAL feature missing ... }
 *     rc = tlm_uffd_register(&u, ram, len, TLM_UFFD_MODE_MISSING | TLM_UFFD_MODE_MINOR, NULL);
 *     ...
 *     struct tlm_uffd_event ev[16];
 *     int n = tlm_uffd_read_events(&u, ev, 16);          // -EAGAIN: nothing pending
 *     for (i = 0; i < n; i++) if (ev[i].type == TLM_UFFD_EV_PAGEFAULT) {
 *         size_t done;
 *         rc = tlm_uffd_copy(&u, page_of(ev[i].addr), src, 4096, 0, &done);
 *     }
 *     tlm_uffd_close(&u);
 *
 * Conventions: every call returns 0 (or a count) on success and -errno on failure.
 * Range calls (copy/zeropage/continue) report partial progress in *done (bytes), so the
 * caller always knows which pages were placed even when an error stops the call:
 *   -EEXIST  a page in the range was already present; *done covers the pages before it
 *            (with TLM_UFFD_SKIP_EXISTING the call steps over present pages instead and
 *            counts them in *existed).
 *   -EAGAIN  the mappings changed under us (a REMOVE/UNMAP event is pending): read the
 *            events, then retry from addr + *done.
 *   -ENOENT  the range is no longer registered / mapped (region went away).
 *   -ESRCH   the faulting process is gone.
 */
#ifndef TLM_UFFD_H
#define TLM_UFFD_H

#include <stddef.h>
#include <stdint.h>
#include <linux/userfaultfd.h>

/*
 * Feature bits newer than the installed headers (Debian 12 ships 6.1 headers; the
 * running kernel may well have them). The values are kernel ABI and never change.
 */
#ifndef UFFD_FEATURE_WP_UNPOPULATED
#define UFFD_FEATURE_WP_UNPOPULATED	(1 << 13)	/* Linux 6.4 */
#endif
#ifndef UFFD_FEATURE_POISON
#define UFFD_FEATURE_POISON		(1 << 14)	/* Linux 6.6 */
#endif
#ifndef UFFD_FEATURE_WP_ASYNC
#define UFFD_FEATURE_WP_ASYNC		(1 << 15)	/* Linux 6.7 */
#endif
#ifndef UFFD_FEATURE_MOVE
#define UFFD_FEATURE_MOVE		(1 << 16)	/* Linux 6.8 */
#endif

#ifdef __cplusplus
extern "C" {
#endif

/* ---- stable API ------------------------------------------------------------------- */

struct tlm_uffd {
	int fd;              /* the userfaultfd, -1 when closed */
	uint64_t features;   /* features granted by UFFDIO_API (requested & supported) */
	uint64_t ioctls;     /* UFFDIO_API ioctls bitmap */
};

/* tlm_uffd_open() flags */
#define TLM_UFFD_NONBLOCK   0x1u   /* O_NONBLOCK on the fd */
#define TLM_UFFD_USER_ONLY  0x2u   /* UFFD_USER_MODE_ONLY: handle user-mode faults only */

/* Register modes (combine with |) */
#define TLM_UFFD_MODE_MISSING 0x1u
#define TLM_UFFD_MODE_MINOR   0x2u
#define TLM_UFFD_MODE_WP      0x4u

/* Range-call flags */
#define TLM_UFFD_DONTWAKE      0x1u  /* do not wake faulting threads (wake later) */
#define TLM_UFFD_SKIP_EXISTING 0x2u  /* step over present pages instead of stopping */

/* Open a userfaultfd (syscall first, then /dev/userfaultfd) and do the UFFDIO_API
 * handshake requesting `features`. Fails with -EINVAL if the kernel lacks one of them
 * (use tlm_uffd_probe first to ask). Fills u; u->fd is O_CLOEXEC. */
int tlm_uffd_open(struct tlm_uffd *u, unsigned flags, uint64_t features);
void tlm_uffd_close(struct tlm_uffd *u);

/* Wrap an fd received from elsewhere (SCM_RIGHTS) whose API handshake was already done. */
void tlm_uffd_adopt(struct tlm_uffd *u, int fd, uint64_t features);

/* Ask the kernel which features it supports, on a throw-away uffd. */
int tlm_uffd_probe(uint64_t *features, uint64_t *ioctls);

/* Name of one feature bit ("MINOR_SHMEM"), NULL for an unknown bit. */
const char *tlm_uffd_feature_name(uint64_t bit);

/* Write a human-readable list of the supported features ("MISSING ZEROPAGE ...") into buf. */
int tlm_uffd_features_str(uint64_t features, char *buf, size_t len);

/* Register [addr, addr+len) (page aligned). *range_ioctls (may be NULL) gets the ioctls
 * allowed on the range. */
int tlm_uffd_register(struct tlm_uffd *u, void *addr, size_t len, unsigned modes,
		      uint64_t *range_ioctls);
int tlm_uffd_unregister(struct tlm_uffd *u, void *addr, size_t len);

/* Resolve faults. len is a multiple of the page size; see the errno contract above.
 * `existed` (may be NULL) counts bytes stepped over with TLM_UFFD_SKIP_EXISTING. */
int tlm_uffd_copy(struct tlm_uffd *u, void *dst, const void *src, size_t len,
		  unsigned flags, size_t *done, size_t *existed);
int tlm_uffd_zeropage(struct tlm_uffd *u, void *dst, size_t len, unsigned flags,
		      size_t *done, size_t *existed);
int tlm_uffd_continue(struct tlm_uffd *u, void *dst, size_t len, unsigned flags,
		      size_t *done, size_t *existed);
int tlm_uffd_wake(struct tlm_uffd *u, void *addr, size_t len);

/* ---- events ----------------------------------------------------------------------- */

enum tlm_uffd_event_type {
	TLM_UFFD_EV_PAGEFAULT = 1,
	TLM_UFFD_EV_FORK,
	TLM_UFFD_EV_REMAP,
	TLM_UFFD_EV_REMOVE,
	TLM_UFFD_EV_UNMAP,
};

#define TLM_UFFD_PF_WRITE 0x1u   /* write fault */
#define TLM_UFFD_PF_MINOR 0x2u   /* minor fault: page is in the page cache, not mapped */
#define TLM_UFFD_PF_WP    0x4u   /* write-protect fault */

struct tlm_uffd_event {
	enum tlm_uffd_event_type type;
	unsigned pf_flags;       /* PAGEFAULT: TLM_UFFD_PF_* */
	uint32_t ptid;           /* PAGEFAULT: faulting thread id (if UFFD_FEATURE_THREAD_ID) */
	uint64_t addr;           /* PAGEFAULT: fault address (page aligned);
				    REMOVE/UNMAP: start; REMAP: old address */
	uint64_t end;            /* REMOVE/UNMAP: end (exclusive) */
	uint64_t new_addr;       /* REMAP: new address */
	uint64_t len;            /* REMAP: length */
	int fork_fd;             /* FORK: the child's new uffd (caller owns it) */
};

/* Read up to max events without blocking. Returns the count (>0), -EAGAIN when none is
 * pending, or -errno. Events the kernel sent that we do not know are skipped; -EPROTO
 * when a read returned nothing else. */
int tlm_uffd_read_events(struct tlm_uffd *u, struct tlm_uffd_event *ev, int max);

/* Decode one raw uffd_msg (exposed for tests). */
int tlm_uffd_decode(const struct uffd_msg *m, struct tlm_uffd_event *ev);

const char *tlm_uffd_event_name(enum tlm_uffd_event_type t);

#ifdef __cplusplus
}
#endif
#endif /* TLM_UFFD_H */
