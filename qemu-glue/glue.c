/*
 * glue.c — libtlm-glue.so: LD_PRELOAD interposer on mmap for the destination (and source)
 * guest process (QEMU or tests/e2e/tlm-synth-guest).
 *
 * When the program maps the file named by TLM_RAM_PATH (MAP_SHARED, length a multiple of
 * 4 KiB; QEMU maps memory-backend-file RAM with MAP_FIXED over a PROT_NONE reservation,
 * docs/ARCHITECTURE.md F10), the mapping is replaced at the same address by
 *   - MAP_PRIVATE of TLM_TEMPLATE opened O_RDONLY: copy-on-write over the template, whose
 *     pages share page-cache frames with every other clone; O_RDONLY so that nothing the
 *     program does can punch holes in the template; or
 *   - MAP_PRIVATE|MAP_ANONYMOUS without a template,
 * except with TLM_TRACK=1 and neither TLM_TEMPLATE nor TLM_SOCK: then the program's own
 * shared mapping of the file is kept (a plain share=on VM stays plain) and only tracked.
 * With TLM_SOCK the region is announced to tlm-uffd-server (glue_daemon.c), which resolves
 * its faults through a userfaultfd registered here.
 *
 * Dirty tracking (TLM_TRACK=1; any other value is ignored with a warning; glue_track.c).
 * tlm-page-server classifies the RAM while the guest runs and, after the stop, re-reads
 * only the pages written since (runtime/source/dirty.h: PAGEMAP_SCAN on our pagemap). The
 * kernel reports writes there only over a range the owning process registered with
 * userfaultfd WP + WP_ASYNC, and that registration is neither inherited nor possible from
 * outside: so the glue registers the mapping (the kept shared one, or the template clone)
 * and keeps that uffd open until exit (closing it would unregister). Async WP faults are
 * resolved by the kernel and never queued, so nothing reads the fd. With TLM_SOCK (a
 * destination) the daemon's uffd takes the mapping, and a mapping belongs to one uffd
 * only: the glue registers it for tracking once the daemon says DONE (every page present,
 * unregistered), so a VM that arrived by tlm can leave live again. Tracking is optional: if the kernel cannot do it (< 6.7, no
 * userfaultfd), one warning and the mapping stands; the page server then classifies after
 * the stop.
 *
 * Discards by the program. QEMU's ram_block_discard_range() (balloon, free page reporting,
 * postcopy init) does fallocate(PUNCH_HOLE) on its RAM fd and madvise(MADV_DONTNEED) on the
 * mapping (docs/ARCHITECTURE.md F9). The punch hits the RAM file, which is no longer
 * mapped, so it does not change guest memory. The MADV_DONTNEED drops the private pages
 * of the range: while the range is registered, the kernel reports UFFD_EVENT_REMOVE and
 * the daemon marks the pages REMOVED, so the next fault there gets a zero page (what a
 * punched shared file would have shown). After the migration is done (unregistered), a discarded page reads back as the
 * template page at that offset rather than zeros; discards are only issued for memory the
 * guest gave up, whose content it does not rely on.
 *
 * The RAM file. After a private replacement the file QEMU opened is not the guest's memory,
 * yet QEMU flags the block shared (x-ignore-shared would leave it out of a stock
 * migration): the glue makes the still-empty file a one-page stub (ramstub.h), which any
 * QEMU mapping it refuses ("backing store size ... does not match") and tlm-page-server
 * refuses as a file source. A kept shared mapping (tracking only) leaves the file as it is.
 *
 * The glue runs inside somebody else's process: no exit(), nothing leaked per call, every
 * fd O_CLOEXEC, errors logged as one line "tlm-glue: ..." on stderr, and mmap calls made
 * while the glue itself is working (dlsym, malloc, pthread_create) go straight through.
 * The memory the program gets is never silently different from what it asked for: if the
 * glue cannot do what the environment asks, the mmap fails (ENODEV for template problems)
 * and the reason is logged. Tracking is the exception (see above): it changes no content.
 */
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <fnmatch.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/syscall.h>
#include <unistd.h>
#include <linux/magic.h>

#include "glue_int.h"
#include "format.h"
#include "ramstub.h"

typedef void *(*glue_mmap_fn)(void *, size_t, int, int, int, off_t);

#define GLUE_PASS ((void *)-2L)   /* "not ours": hand the call to the real mmap */

static glue_mmap_fn real_mmap_fn;
/* Set while the glue is working in this thread: nested mmap calls pass straight through. */
static __thread int t_in_glue __attribute__((tls_model("initial-exec")));

static pthread_mutex_t region_lock = PTHREAD_MUTEX_INITIALIZER;
static struct glue_region region = { .sock = -1, .uffd = { .fd = -1 },
				      .track = { .fd = -1 } };
static bool warned_second_map;

/* ---- the real mmap ---------------------------------------------------------------------- */

static void *glue_raw_mmap(void *addr, size_t len, int prot, int flags, int fd, off_t off)
{
	return (void *)syscall(SYS_mmap, addr, len, prot, flags, fd, off);
}

static void *glue_real_mmap(void *addr, size_t len, int prot, int flags, int fd, off_t off)
{
	glue_mmap_fn f = __atomic_load_n(&real_mmap_fn, __ATOMIC_ACQUIRE);

	if (!f && !t_in_glue) {
		/* dlsym may allocate, and malloc may mmap: those calls see t_in_glue. */
		t_in_glue = 1;
		*(void **)&f = dlsym(RTLD_NEXT, "mmap");
		t_in_glue = 0;
		if (f)
			__atomic_store_n(&real_mmap_fn, f, __ATOMIC_RELEASE);
	}
	if (!f)
		return glue_raw_mmap(addr, len, prot, flags, fd, off);
	return f(addr, len, prot, flags, fd, off);
}

/* ---- template checks -------------------------------------------------------------------- */

/* Read and validate the index header (format.h), return the digest. */
static int glue_read_digest(const char *pages, uint64_t pages_size, uint8_t digest[16],
			    char *err, size_t errlen)
{
	char path[4096];
	struct tlm_idx_header h;

	if (snprintf(path, sizeof(path), "%s%s", pages, TLM_TMPL_INDEX_SUFFIX) >=
	    (int)sizeof(path)) {
		snprintf(err, errlen, "template path too long");
		return -1;
	}
	if (tlm_idx_header_read(path, &h, err, errlen) < 0)
		return -1;
	if (h.page_count * TLM_PAGE_SIZE != pages_size) {
		snprintf(err, errlen, "template index %.200s describes %llu pages but %.200s holds %llu "
			 "bytes", path, (unsigned long long)h.page_count, pages,
			 (unsigned long long)pages_size);
		return -1;
	}
	memcpy(digest, h.digest.b, 16);
	return 0;
}

/*
 * Guest RAM on hugetlbfs: its pages are 2 MiB or 1 GiB, and QEMU sizes its RAM block by
 * them, while the replacement mapping, the template and the daemon's placements are all
 * 4 KiB pages. Refused with what to change (a template on hugetlbfs likewise).
 */
static int glue_check_not_huge(int fd, const char *what, const char *path, char *err,
			       size_t errlen)
{
	struct statfs sfs;

	if (fstatfs(fd, &sfs) < 0 || sfs.f_type != HUGETLBFS_MAGIC)
		return 0;
	snprintf(err, errlen, "%s %s is on hugetlbfs (%ld KiB pages): tlm places 4 KiB pages; "
		 "back the guest with memory-backend-file on tmpfs (/dev/shm)", what, path,
		 (long)sfs.f_bsize >> 10);
	return -1;
}

/* Open the template read-only and check it covers [off, off + len). Returns fd or -1. */
static int glue_template_open(const char *path, off_t off, size_t len, bool need_shmem,
			      uint8_t digest[16], char *err, size_t errlen)
{
	struct statfs sfs;
	struct stat st;
	int fd = open(path, O_RDONLY | O_CLOEXEC);

	if (fd < 0) {
		snprintf(err, errlen, "template %s: %s", path, strerror(errno));
		return -1;
	}
	if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode)) {
		snprintf(err, errlen, "template %s: not a regular file", path);
		goto fail;
	}
	if ((uint64_t)st.st_size < (uint64_t)off + len) {
		snprintf(err, errlen, "template %s is %lld bytes, the RAM mapping needs %llu "
			 "(offset %lld + length %zu)", path, (long long)st.st_size,
			 (unsigned long long)off + len, (long long)off, len);
		goto fail;
	}
	if (glue_check_not_huge(fd, "template", path, err, errlen) < 0)
		goto fail;
	/* userfaultfd MINOR faults (UFFDIO_CONTINUE) exist only for shmem (and hugetlbfs). */
	if (need_shmem && (fstatfs(fd, &sfs) < 0 || sfs.f_type != TMPFS_MAGIC)) {
		snprintf(err, errlen, "template %s is not on tmpfs: userfaultfd minor faults "
			 "need shmem (copy it to /dev/shm)", path);
		goto fail;
	}
	if (glue_read_digest(path, (uint64_t)st.st_size, digest, err, errlen) < 0)
		goto fail;
	return fd;
fail:
	close(fd);
	return -1;
}

/* ---- interception ----------------------------------------------------------------------- */

/*
 * TLM_RAM_PATH names the file, or is a pattern (fnmatch; '*' matches '/' too) for a
 * program that picks the name itself: libvirt puts each QEMU's RAM file in a directory
 * named after the domain's id, which is not known before the QEMU starts. Only the
 * first mapping that matches is replaced (glue_intercept).
 */
static bool glue_is_ram(int fd, const char *ram_path)
{
	struct stat a, b;
	char link[40], name[PATH_MAX];
	ssize_t n;

	if (fstat(fd, &a) < 0 || !S_ISREG(a.st_mode))
		return false;
	if (!strpbrk(ram_path, "*?["))
		return stat(ram_path, &b) == 0 && a.st_dev == b.st_dev && a.st_ino == b.st_ino;
	snprintf(link, sizeof(link), "/proc/self/fd/%d", fd);
	n = readlink(link, name, sizeof(name) - 1);
	if (n <= 0)
		return false;
	name[n] = 0;
	return fnmatch(ram_path, name, 0) == 0;
}

/*
 * Flags of the replacement mapping. MAP_NORESERVE: the shared file mapping it replaces
 * was not charged against overcommit, a private writable one would be. MAP_POPULATE is
 * dropped when a daemon will fill the region (populating then discarding is wasted work).
 */
static int glue_map_flags(int flags, bool tmpl, bool daemon)
{
	int keep = MAP_FIXED | MAP_FIXED_NOREPLACE | MAP_NORESERVE;

	if (!daemon)
		keep |= MAP_POPULATE;
	return (flags & keep) | MAP_PRIVATE | MAP_NORESERVE | (tmpl ? 0 : MAP_ANONYMOUS);
}

/* Give the address range back in the state the program had asked for: on failure after a
 * MAP_FIXED replacement, a PROT_NONE reservation (the program will munmap it). */
static void glue_unmap(void *p, size_t len, int flags)
{
	if (flags & (MAP_FIXED | MAP_FIXED_NOREPLACE))
		glue_real_mmap(p, len, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED |
			       MAP_NORESERVE, -1, 0);
	else
		munmap(p, len);
}

static void glue_region_reset(struct glue_region *r)
{
	if (r->sock >= 0)
		close(r->sock);
	if (r->uffd.fd >= 0)
		tlm_uffd_close(&r->uffd);
	tlm_uffd_close(&r->track);
	memset(r, 0, sizeof(*r));
	r->sock = -1;
	r->uffd.fd = -1;
	r->track.fd = -1;
}

/* Announce the mapped region to the daemon (arming first in map mode). */
static int glue_hand_over(struct glue_region *r, const struct glue_cfg *c, char *err,
			  size_t errlen)
{
	if (c->arm == GLUE_ARM_MAP && glue_arm(r, err, errlen) < 0)
		return -1;
	if (glue_send_region(r, err, errlen) < 0)
		return -1;
	return glue_thread_start(r, err, errlen);
}

static int glue_check_ids(const struct glue_cfg *c, char *err, size_t errlen)
{
	if (!c->vm_id || !tlm_vmid_valid(c->vm_id)) {
		snprintf(err, errlen, "TLM_SOCK is set but TLM_VM_ID is %s (want 1..%u of "
			 "[A-Za-z0-9._-])", c->vm_id ? "invalid" : "unset", TLM_PROTO_VMID_MAX);
		return -1;
	}
	if (c->source && strlen(c->source) >= TLM_LOCAL_PATH_MAX) {
		snprintf(err, errlen, "TLM_SOURCE is longer than %u bytes", TLM_LOCAL_PATH_MAX - 1);
		return -1;
	}
	return 0;
}

/* Prepare what can fail before touching the address space: the RAM it replaces, template,
 * ids, socket. */
static int glue_prepare(struct glue_region *r, const struct glue_cfg *c, int fd, off_t off,
			size_t len, int *tfd, char *err, size_t errlen)
{
	bool daemon = c->sock_path != NULL;

	*tfd = -1;
	if (!r->shared && glue_check_not_huge(fd, "guest RAM", c->ram_path, err, errlen) < 0) {
		errno = EINVAL;
		return -1;
	}
	if (daemon && glue_check_ids(c, err, errlen) < 0) {
		errno = EINVAL;
		return -1;
	}
	if (c->template_path) {
		*tfd = glue_template_open(c->template_path, off, len, daemon, r->digest, err,
					  errlen);
		if (*tfd < 0) {
			errno = ENODEV;
			return -1;
		}
		r->has_template = true;
	}
	if (daemon) {
		r->sock = glue_daemon_connect(c->sock_path, err, errlen);
		if (r->sock < 0) {
			errno = -r->sock;
			r->sock = -1;
			return -1;
		}
	}
	return 0;
}

/* The RAM mapping: the program's own request when it is kept (tracking only), else the
 * private replacement (of the template tfd, or anonymous). */
static void *glue_mmap_ram(const struct glue_region *r, void *addr, size_t len, int prot,
			   int flags, int fd, off_t off, int tfd)
{
	if (r->shared)
		return glue_real_mmap(addr, len, prot, flags, fd, off);
	return glue_real_mmap(addr, len, prot, glue_map_flags(flags, tfd >= 0, r->sock >= 0),
			      tfd, tfd >= 0 ? off : 0);
}

static void glue_log_mapped(const struct glue_region *r, const struct glue_cfg *c)
{
	const char *vm = glue_vm();

	if (r->shared) {
		glue_log(GLUE_INFO, "%s: %s mapped at %p, %zu bytes, shared as the program asked "
			 "(TLM_TRACK without template or daemon)", vm, c->ram_path, r->base,
			 r->size);
		return;
	}
	glue_log(GLUE_INFO, "%s: %s mapped at %p, %zu bytes, as a private %s%s%s", vm,
		 c->ram_path, r->base, r->size, r->has_template ? "copy of " : "anonymous region",
		 r->has_template ? c->template_path : "", r->sock < 0 ? "" :
		 c->arm == GLUE_ARM_MAP ? " (armed, handed to tlm-uffd-server)" :
		 " (announced, waiting for ARM)");
}

/*
 * The RAM file no longer holds the guest's memory, while QEMU still flags the block shared:
 * make it a stub (ramstub.h) so that nothing can take it for the memory (a QEMU mapping it
 * refuses to start). A file that already holds data is left alone, with a warning.
 */
static void glue_stub_ram(const struct glue_region *r, const struct glue_cfg *c, int fd)
{
	char err[256];
	int rc;

	if (r->shared)
		return;
	rc = tlm_ramstub_write(fd, getpid(), r->has_template ? c->template_path : NULL, err,
			       sizeof(err));
	if (rc == -EEXIST)
		glue_log(GLUE_WARN, "%s: %s holds data that is not the guest memory any more "
			 "(private mapping): do not migrate this VM with x-ignore-shared", glue_vm(),
			 c->ram_path);
	else if (rc < 0)
		glue_log(GLUE_WARN, "%s: %s: %s; do not migrate this VM with x-ignore-shared",
			 glue_vm(), c->ram_path, err);
	else
		glue_log(GLUE_INFO, "%s: %s is now a %u-byte stub (the memory is the private "
			 "mapping): a QEMU mapping that file refuses to start", glue_vm(),
			 c->ram_path, TLM_RAMSTUB_SIZE);
}

static void *glue_map_region(struct glue_region *r, void *addr, size_t len, int prot,
			     int flags, int fd, off_t off)
{
	const struct glue_cfg *c = glue_config();
	char err[512];
	int tfd, saved;
	void *p;

	r->shared = c->track && !c->template_path && !c->sock_path;
	if (glue_prepare(r, c, fd, off, len, &tfd, err, sizeof(err)) < 0)
		goto fail;
	p = glue_mmap_ram(r, addr, len, prot, flags, fd, off, tfd);
	saved = errno;
	if (tfd >= 0)
		close(tfd);          /* the mapping holds its own reference */
	if (p == MAP_FAILED) {
		snprintf(err, sizeof(err), "%s mmap of %zu bytes: %s", r->shared ? "the" :
			 "replacement", len, strerror(saved));
		errno = saved;
		goto fail;
	}
	r->base = p;
	r->size = len;
	r->offset = (uint64_t)off;
	r->state = GLUE_MAPPED;
	if (r->sock >= 0 && glue_hand_over(r, c, err, sizeof(err)) < 0) {
		saved = errno ? errno : EIO;
		glue_unmap(p, len, flags);
		errno = saved;
		goto fail;
	}
	glue_log_mapped(r, c);
	glue_stub_ram(r, c, fd);
	glue_track_mapped(r, c);
	glue_publish(r, c);
	return p;
fail:
	saved = errno;
	glue_log(GLUE_ERROR, "%s: mapping %s failed: %s", glue_vm(), c->ram_path, err);
	glue_region_reset(r);
	errno = saved;
	return MAP_FAILED;
}

static void *glue_intercept(void *addr, size_t len, int prot, int flags, int fd, off_t off)
{
	const struct glue_cfg *c = glue_config();
	void *p;

	if (!c->ram_path || !glue_is_ram(fd, c->ram_path))
		return GLUE_PASS;
	pthread_mutex_lock(&region_lock);
	if (region.state != GLUE_NONE) {
		if (!warned_second_map)
			glue_log(GLUE_WARN, "%s mapped again: only the first mapping is replaced; "
				 "this one maps the file itself", c->ram_path);
		warned_second_map = true;
		p = GLUE_PASS;
	} else {
		p = glue_map_region(&region, addr, len, prot, flags, fd, off);
	}
	pthread_mutex_unlock(&region_lock);
	return p;
}

static bool glue_candidate(size_t len, int flags, int fd)
{
	int type = flags & MAP_TYPE;

	return fd >= 0 && len > 0 && len % GLUE_PAGE == 0 &&
	       (type == MAP_SHARED || type == MAP_SHARED_VALIDATE);
}

__attribute__((visibility("default")))
void *mmap(void *addr, size_t len, int prot, int flags, int fd, off_t off)
{
	void *p = GLUE_PASS;

	if (!t_in_glue && glue_candidate(len, flags, fd)) {
		t_in_glue = 1;
		p = glue_intercept(addr, len, prot, flags, fd, off);
		t_in_glue = 0;
	}
	if (p == GLUE_PASS)
		p = glue_real_mmap(addr, len, prot, flags, fd, off);
	return p;
}

__attribute__((visibility("default")))
void *mmap64(void *addr, size_t len, int prot, int flags, int fd, off64_t off)
{
	return mmap(addr, len, prot, flags, fd, off);
}

/* Read the environment at load time, while the program is still single-threaded. */
__attribute__((constructor))
static void glue_init(void)
{
	glue_config();
}
