/*
 * src_region.c — region sources for tlm-page-server (src_region.h): SPEC parsing, the
 * read-only RAM file mapping, process_vm_readv batches for pid sources, classification.
 */
#include "src_region.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/uio.h>
#include <unistd.h>

#include "log.h"
#include "ramstub.h"
#include "util.h"

/* /proc/PID/pagemap entry bits (Documentation/admin-guide/mm/pagemap.rst). */
#define PM_PRESENT (1ull << 63)
#define PM_SWAP    (1ull << 62)
#define PM_FILE    (1ull << 61)   /* file page or shared anon */

static const char *const phase_names[] = {
	[TLM_SRC_CONFIGURED] = "configured", [TLM_SRC_LIVE] = "live", [TLM_SRC_FROZEN] = "frozen",
	[TLM_SRC_CLASSIFIED] = "classified", [TLM_SRC_STREAMING] = "streaming",
	[TLM_SRC_DONE] = "done", [TLM_SRC_FAILED] = "failed",
};

const char *tlm_src_phase_name(enum tlm_src_phase p)
{
	return (unsigned)p < TLM_ARRAY_SIZE(phase_names) ? phase_names[p] : "unknown";
}

const char *tlm_src_kind_name(enum tlm_src_kind k)
{
	return k == TLM_SRC_FILE ? "file" : k == TLM_SRC_PID ? "pid" : "unknown";
}

static bool page_aligned(uint64_t v)
{
	return (v & (TLM_PAGE_SIZE - 1)) == 0;
}

/* ---- SPEC parsing ---------------------------------------------------------------------- */

struct spec {
	char id[TLM_PROTO_VMID_MAX + 1];
	const char *file, *tmpl, *pid, *addr, *offset, *size;
};

static int spec_key(struct spec *s, char *kv, const char *spec, char *err, size_t errlen)
{
	static const char *const keys[] = { "file", "template", "pid", "addr", "offset", "size" };
	const char **slots[] = { &s->file, &s->tmpl, &s->pid, &s->addr, &s->offset, &s->size };
	char *eq = strchr(kv, '=');

	if (!eq || eq == kv || !eq[1]) {
		snprintf(err, errlen, "region '%s': '%s' is not KEY=VALUE", spec, kv);
		return -EINVAL;
	}
	*eq = '\0';
	for (size_t i = 0; i < TLM_ARRAY_SIZE(keys); i++) {
		if (strcmp(kv, keys[i]) != 0)
			continue;
		if (*slots[i]) {
			snprintf(err, errlen, "region '%s': '%s' given twice", spec, kv);
			return -EINVAL;
		}
		*slots[i] = eq + 1;
		return 0;
	}
	snprintf(err, errlen,
		 "region '%s': unknown key '%s' (expected file, offset, size, template, pid, addr)",
		 spec, kv);
	return -EINVAL;
}

/* Splits `copy` in place; s points into it. */
static int spec_parse(char *copy, const char *spec, struct spec *s, char *err, size_t errlen)
{
	char *save = NULL, *tok = strtok_r(copy, ",", &save);
	int rc;

	memset(s, 0, sizeof(*s));
	if (!tok || !tlm_vmid_valid(tok)) {
		snprintf(err, errlen, "region '%s': bad id (1..%u chars of A-Za-z0-9._-)", spec,
			 TLM_PROTO_VMID_MAX);
		return -EINVAL;
	}
	snprintf(s->id, sizeof(s->id), "%s", tok);
	while ((tok = strtok_r(NULL, ",", &save))) {
		rc = spec_key(s, tok, spec, err, errlen);
		if (rc < 0)
			return rc;
	}
	if (!s->file && !s->pid) {
		snprintf(err, errlen, "region '%s': give file=PATH or pid=PID", spec);
		return -EINVAL;
	}
	if (!s->file && s->pid && (!s->addr || !s->size || s->offset)) {
		snprintf(err, errlen, "region '%s': a pid source needs addr= and size= (no offset=)",
			 spec);
		return -EINVAL;
	}
	if (s->file && !!s->addr != !!s->pid) {
		snprintf(err, errlen, "region '%s': with file=, pid= and addr= go together (the "
			 "process mapping the file, for dirty tracking)", spec);
		return -EINVAL;
	}
	return 0;
}

static int num_opt(const char *v, const char *what, uint64_t *out,
		   const struct tlm_src_region *r, char *err, size_t errlen)
{
	int rc = tlm_parse_size(v, out);

	if (rc < 0) {
		snprintf(err, errlen, "region '%s': bad %s '%s'", r->id, what, v);
	} else if (!page_aligned(*out)) {
		snprintf(err, errlen, "region '%s': %s %s is not a multiple of %u", r->id, what, v,
			 TLM_PAGE_SIZE);
		rc = -EINVAL;
	}
	return rc;
}

/* ---- sources --------------------------------------------------------------------------- */

/* A glue-mapped VM's RAM file is a stub, not its memory (ramstub.h): say where it is. */
static bool file_is_stub(const struct tlm_src_region *r, char *err, size_t errlen)
{
	pid_t pid;

	if (tlm_ramstub_check(r->fd, &pid) != 1)
		return false;
	snprintf(err, errlen, "region '%s': %s is a tlm RAM stub: the guest memory is the private "
		 "mapping of process %ld (give pid=%ld,addr=...,size=...)", r->id, r->path,
		 (long)pid, (long)pid);
	return true;
}

static int open_file(struct tlm_src_region *r, const struct spec *s, char *err, size_t errlen)
{
	struct stat st;
	void *p;

	snprintf(r->path, sizeof(r->path), "%s", s->file);
	if (s->offset && num_opt(s->offset, "offset", &r->offset, r, err, errlen) < 0)
		return -EINVAL;
	r->fd = open(r->path, O_RDONLY | O_CLOEXEC);
	if (r->fd < 0 || fstat(r->fd, &st) < 0) {
		snprintf(err, errlen, "region '%s': %s: %s", r->id, r->path, strerror(errno));
		return -errno;
	}
	if (file_is_stub(r, err, errlen))
		return -EINVAL;
	if ((uint64_t)st.st_size <= r->offset && !s->size) {
		snprintf(err, errlen, "region '%s': %s: offset %llu is past the end (%lld bytes)",
			 r->id, r->path, (unsigned long long)r->offset, (long long)st.st_size);
		return -EINVAL;
	}
	r->size = (uint64_t)st.st_size - r->offset;
	if (s->size && num_opt(s->size, "size", &r->size, r, err, errlen) < 0)
		return -EINVAL;
	if (r->size == 0 || !page_aligned(r->size) ||
	    r->offset + r->size > (uint64_t)st.st_size) {
		snprintf(err, errlen,
			 "region '%s': %s: range %llu+%llu is empty, unaligned or past the end (%lld bytes)",
			 r->id, r->path, (unsigned long long)r->offset,
			 (unsigned long long)r->size, (long long)st.st_size);
		return -EINVAL;
	}
	/* Mapping reads nothing; pages are touched only after freeze. */
	p = mmap(NULL, r->size, PROT_READ, MAP_SHARED, r->fd, (off_t)r->offset);
	if (p == MAP_FAILED) {
		snprintf(err, errlen, "region '%s': mmap %s: %s", r->id, r->path, strerror(errno));
		return -errno;
	}
	r->ram = p;
	r->tmpl_base = r->offset / TLM_PAGE_SIZE;
	return 0;
}

/* pid= and addr= (with size= already known): the process and where the range starts. */
static int parse_proc(struct tlm_src_region *r, const struct spec *s, char *err, size_t errlen)
{
	uint64_t pid;

	if (tlm_parse_u64(s->pid, &pid) < 0 || pid == 0 || pid > INT32_MAX) {
		snprintf(err, errlen, "region '%s': bad pid '%s'", r->id, s->pid);
		return -EINVAL;
	}
	if (num_opt(s->addr, "addr", &r->addr, r, err, errlen) < 0)
		return -EINVAL;
	if (r->size == 0 || r->addr + r->size < r->addr) {
		snprintf(err, errlen, "region '%s': bad range 0x%llx+%llu", r->id,
			 (unsigned long long)r->addr, (unsigned long long)r->size);
		return -EINVAL;
	}
	r->pid = (pid_t)pid;
	if (kill(r->pid, 0) < 0 && errno == ESRCH) {
		snprintf(err, errlen, "region '%s': pid %d: no such process", r->id, r->pid);
		return -ESRCH;
	}
	return 0;
}

static int open_pid(struct tlm_src_region *r, const struct spec *s, char *err, size_t errlen)
{
	char path[64];
	int rc;

	if (num_opt(s->size, "size", &r->size, r, err, errlen) < 0)
		return -EINVAL;
	rc = parse_proc(r, s, err, errlen);
	if (rc < 0)
		return rc;
	/* Bound to the process's mm from now on; without it we always compare bytes. */
	snprintf(path, sizeof(path), "/proc/%d/pagemap", r->pid);
	r->pagemap_fd = open(path, O_RDONLY | O_CLOEXEC);
	if (r->pagemap_fd < 0)
		log_warn("%s: %s: %s (pages will be read and compared)", r->id, path,
			 strerror(errno));
	return 0;
}

static int open_template(struct tlm_src_region *r, const char *path, char *err, size_t errlen)
{
	char terr[256];
	uint64_t have;
	struct stat st;
	int rc;


	snprintf(r->tmpl_path, sizeof(r->tmpl_path), "%s", path);
	/* The file identity that the pagemap shortcut matches against the guest's mapping. */
	if (stat(path, &st) < 0) {
		snprintf(err, errlen, "region '%s': template %s: %s", r->id, path,
			 strerror(errno));
		return -errno;
	}
	r->tmpl_dev = st.st_dev;
	r->tmpl_ino = st.st_ino;
	rc = tlm_tmpl_open(&r->tmpl, path, NULL, 0, terr, sizeof(terr));
	if (rc < 0) {
		snprintf(err, errlen, "region '%s': template: %s", r->id, terr);
		return rc;
	}
	r->digest = *tlm_tmpl_digest(r->tmpl);
	have = tlm_tmpl_page_count(r->tmpl);
	if (have < r->tmpl_base + r->page_count)
		log_warn("%s: template %s has %llu pages, region needs %llu: pages past its end "
			 "are never TEMPLATE", r->id, path, (unsigned long long)have,
			 (unsigned long long)(r->tmpl_base + r->page_count));
	return 0;
}

int tlm_src_region_new(struct tlm_src_region **out, const char *spec, char *err, size_t errlen)
{
	struct tlm_src_region *r = calloc(1, sizeof(*r));
	char *copy = strdup(spec);
	struct spec s;
	int rc = -ENOMEM;

	*out = NULL;
	if (!r || !copy) {
		snprintf(err, errlen, "region '%s': out of memory", spec);
		goto fail;
	}
	r->fd = -1;
	r->pagemap_fd = -1;
	rc = spec_parse(copy, spec, &s, err, errlen);
	if (rc < 0)
		goto fail;
	snprintf(r->id, sizeof(r->id), "%s", s.id);
	r->kind = s.file ? TLM_SRC_FILE : TLM_SRC_PID;
	rc = s.file ? open_file(r, &s, err, errlen) : open_pid(r, &s, err, errlen);
	if (rc == 0 && s.file && s.pid)
		rc = parse_proc(r, &s, err, errlen);   /* the tracked process of a file */
	if (rc < 0)
		goto fail;
	r->page_count = r->size / TLM_PAGE_SIZE;
	if (s.tmpl && (rc = open_template(r, s.tmpl, err, errlen)) < 0)
		goto fail;
	rc = tlm_cls_map_init(&r->map, r->page_count, r->tmpl, r->tmpl_base);
	if (rc < 0) {
		snprintf(err, errlen, "region '%s': class map for %llu pages: %s", r->id,
			 (unsigned long long)r->page_count, strerror(-rc));
		goto fail;
	}
	free(copy);
	*out = r;
	return 0;
fail:
	free(copy);
	tlm_src_region_free(r);
	return rc;
}

void tlm_src_region_free(struct tlm_src_region *r)
{
	if (!r)
		return;
	tlm_cls_map_fini(&r->map);
	if (r->ram)
		munmap((void *)r->ram, r->size);
	if (r->fd >= 0)
		close(r->fd);
	if (r->pagemap_fd >= 0)
		close(r->pagemap_fd);
	if (r->tmpl)
		tlm_tmpl_close(r->tmpl);
	free(r);
}

/* ---- reading pages --------------------------------------------------------------------- */

/* One process_vm_readv for n pages (contiguous remote pages merged into one iovec). */
static int pid_read(struct tlm_src_region *r, const uint64_t *pages, unsigned n, uint8_t *buf,
		    char *err, size_t errlen)
{
	struct iovec local = { .iov_base = buf, .iov_len = (size_t)n * TLM_PAGE_SIZE };
	struct iovec remote[TLM_SRC_READ_MAX > TLM_SRC_SCAN_BATCH ? TLM_SRC_READ_MAX : TLM_SRC_SCAN_BATCH];
	unsigned nr = 0;
	ssize_t got;

	for (unsigned i = 0; i < n; i++) {
		uintptr_t a = (uintptr_t)(r->addr + pages[i] * TLM_PAGE_SIZE);

		if (nr && (uintptr_t)remote[nr - 1].iov_base + remote[nr - 1].iov_len == a) {
			remote[nr - 1].iov_len += TLM_PAGE_SIZE;
			continue;
		}
		remote[nr].iov_base = (void *)a;
		remote[nr++].iov_len = TLM_PAGE_SIZE;
	}
	got = process_vm_readv(r->pid, &local, 1, remote, nr, 0);
	if (got == (ssize_t)local.iov_len)
		return 0;
	if (got >= 0)
		errno = EFAULT;   /* short read: a page of the range is not mapped */
	snprintf(err, errlen, "%s: cannot read pid %d at 0x%llx: %s", r->id, r->pid,
		 (unsigned long long)(r->addr + pages[got > 0 ? got / TLM_PAGE_SIZE : 0] *
				      TLM_PAGE_SIZE), strerror(errno));
	return -errno;
}

static int read_pages(struct tlm_src_region *r, const uint64_t *pages, unsigned n,
		      uint8_t *buf, const uint8_t **ptrs, char *err, size_t errlen)
{
	int rc;

	if (n > TLM_SRC_READ_MAX)
		return -E2BIG;
	for (unsigned i = 0; i < n; i++) {
		if (pages[i] >= r->page_count)
			return -ERANGE;
		ptrs[i] = r->ram ? r->ram + pages[i] * TLM_PAGE_SIZE : buf + i * TLM_PAGE_SIZE;
	}
	if (r->kind == TLM_SRC_FILE || n == 0)
		return 0;
	rc = pid_read(r, pages, n, buf, err, errlen);
	return rc;
}

int tlm_src_read_pages(struct tlm_src_region *r, const uint64_t *pages, unsigned n,
		       uint8_t *buf, const uint8_t **ptrs, char *err, size_t errlen)
{
	if (r->phase == TLM_SRC_CONFIGURED || r->phase == TLM_SRC_LIVE) {
		snprintf(err, errlen, "%s: not frozen, refusing to read guest pages", r->id);
		return -EPERM;
	}
	return read_pages(r, pages, n, buf, ptrs, err, errlen);
}

int tlm_src_read_presend(struct tlm_src_region *r, const uint64_t *pages, unsigned n,
			 uint8_t *buf, const uint8_t **ptrs, char *err, size_t errlen)
{
	if (r->phase != TLM_SRC_LIVE) {
		snprintf(err, errlen, "%s: pre-sending outside the live phase", r->id);
		return -EPERM;
	}
	return read_pages(r, pages, n, buf, ptrs, err, errlen);
}

/* ---- classification -------------------------------------------------------------------- */

/* Part of a pid source (region addresses) where the pagemap proves a page is TEMPLATE. */
struct tvma {
	uint64_t start, end;
};

#define MAX_TVMAS 64u

/*
 * A VMA qualifies when it is a MAP_PRIVATE mapping of our template file (same device and
 * inode), at the file offset that makes region page i template page tmpl_base + i, and is
 * not registered with userfaultfd MISSING/MINOR (VmFlags um/ui: there a missing page is not
 * file content but a page still to come). In such a VMA a page that is neither present nor
 * swapped reads as the file page, and a present page with PM_FILE is the page-cache page:
 * both are the template page, so they need no read.
 */
static bool tvma_ok(const struct tlm_src_region *r, uint64_t start, uint64_t off,
		    const char *perms, unsigned maj, unsigned mnr, uint64_t ino)
{
	return perms[3] == 'p' && makedev(maj, mnr) == r->tmpl_dev && ino == r->tmpl_ino &&
	       off + r->addr == r->tmpl_base * TLM_PAGE_SIZE + start;
}

static void tvma_add(const struct tlm_src_region *r, struct tvma *v, unsigned *n,
		     uint64_t start, uint64_t end)
{
	uint64_t rend = r->addr + r->size;

	if (start < r->addr)
		start = r->addr;
	if (end > rend)
		end = rend;
	if (start < end && *n < MAX_TVMAS)
		v[(*n)++] = (struct tvma){ start, end };
}

static unsigned tmpl_vmas(const struct tlm_src_region *r, struct tvma *v)
{
	unsigned long long start = 0, end = 0, off, ino;
	unsigned maj, mnr, n = 0;
	bool cand = false;
	char path[64], perms[8], *line = NULL;
	size_t cap = 0;
	FILE *f;

	if (!r->tmpl || r->pagemap_fd < 0)
		return 0;
	snprintf(path, sizeof(path), "/proc/%d/smaps", r->pid);
	f = fopen(path, "re");
	if (!f)
		return 0;
	while (getline(&line, &cap, f) > 0) {
		if (sscanf(line, "%llx-%llx %7s %llx %x:%x %llu", &start, &end, perms, &off, &maj,
			   &mnr, &ino) == 7) {
			cand = end > r->addr && start < r->addr + r->size &&
			       tvma_ok(r, start, off, perms, maj, mnr, ino);
		} else if (cand && strncmp(line, "VmFlags:", 8) == 0) {
			if (!strstr(line, " um") && !strstr(line, " ui"))
				tvma_add(r, v, &n, start, end);
			cand = false;
		}
	}
	free(line);
	fclose(f);
	return n;
}

/* known[i]: page first + i is TEMPLATE by the pagemap, without reading it. */
static void pagemap_known(struct tlm_src_region *r, const struct tvma *v, unsigned nv,
			  uint64_t first, unsigned n, bool *known)
{
	uint64_t pm[TLM_SRC_SCAN_BATCH];
	uint64_t base = r->addr + first * TLM_PAGE_SIZE;
	bool any = false;
	ssize_t got;

	for (unsigned i = 0; i < n; i++) {
		uint64_t a = base + (uint64_t)i * TLM_PAGE_SIZE;

		known[i] = false;
		for (unsigned j = 0; j < nv && !known[i]; j++)
			known[i] = a >= v[j].start && a < v[j].end;
		known[i] = known[i] && r->tmpl_base + first + i < r->map.tmpl_pages;
		any |= known[i];
	}
	if (!any)
		return;
	got = pread(r->pagemap_fd, pm, n * sizeof(pm[0]), (off_t)(base / TLM_PAGE_SIZE * 8));
	for (unsigned i = 0; i < n; i++) {
		bool present = pm[i] & PM_PRESENT;

		if (got != (ssize_t)(n * sizeof(pm[0])))
			known[i] = false;
		else if (known[i])
			known[i] = present ? (pm[i] & PM_FILE) : !(pm[i] & PM_SWAP);
	}
}

/*
 * hole[i]: page first + i of a file source lies in a hole of the RAM file: never written
 * (tmpfs allocates on first write) or punched out since (QEMU discards the pages a guest
 * frees with free page reporting or ballooning: fallocate PUNCH_HOLE, docs/ARCHITECTURE.md
 * F9, F27). It reads as zeros, so its class is decided without reading it; reading it
 * through our shared mapping would even allocate it again (a read fault on a tmpfs
 * mapping allocates the page), giving back to the host what the guest handed back to it.
 *
 * mincore() first, bounded by the batch: a page in the page cache is data. Only the
 * others are asked with SEEK_DATA, which skips a hole in one step and says "data" for a
 * page swapped out (mincore does not see those). Never SEEK_HOLE: it walks the whole data
 * extent that follows, 72 ms for a full 2 GiB file, per batch. Both calls look at the
 * file as it is now, like a read: a write after them is caught by dirty tracking exactly
 * as a write after a read (live.h). Asked afresh for every batch, never remembered: a
 * remembered hole would be an old read. Any error leaves the pages to be read.
 * Returns the hole count.
 */
static unsigned file_holes(const struct tlm_src_region *r, uint64_t first, unsigned n,
			   bool *hole)
{
	unsigned char vec[TLM_SRC_SCAN_BATCH];
	const off_t base = (off_t)(r->offset + first * TLM_PAGE_SIZE);
	unsigned count = 0;

	memset(hole, 0, n * sizeof(*hole));
	if (mincore((void *)(r->ram + first * TLM_PAGE_SIZE), (size_t)n * TLM_PAGE_SIZE,
		    vec) < 0)
		return 0;
	for (unsigned i = 0; i < n; i++) {
		off_t data;

		if (vec[i] & 1)
			continue;
		data = lseek(r->fd, base + (off_t)i * TLM_PAGE_SIZE, SEEK_DATA);
		if (data < 0 && errno != ENXIO)
			break;
		if (data < 0 || data > base + (off_t)n * TLM_PAGE_SIZE)
			data = base + (off_t)n * TLM_PAGE_SIZE;   /* ENXIO: no data to the end */
		/* the whole pages of [page i, data) */
		for (; i < (uint64_t)(data - base) / TLM_PAGE_SIZE; i++, count++)
			hole[i] = true;
	}
	return count;
}

/* The class of a page that reads as zeros: what tlm_classify_page_hint gives zeros. */
static enum tlm_page_class zero_class(const struct tlm_src_region *r, uint64_t page,
				      uint64_t *k)
{
	uint64_t t = r->tmpl_base + page;

	*k = 0;
	if (t < r->map.tmpl_pages && tlm_page_is_zero(tlm_tmpl_page(r->tmpl, t))) {
		*k = t;
		return TLM_CLASS_TEMPLATE;
	}
	return TLM_CLASS_ZERO;
}

/* ---- scans: classifying pages as they are now ------------------------------------------ */

struct tlm_src_scan {
	struct tlm_src_region *r;
	struct tvma v[MAX_TVMAS];      /* pid source: where the pagemap proves TEMPLATE */
	unsigned nv;
	uint64_t hint;                 /* template page after the last REF of the previous
	                                * batch, if the next batch starts right after it */
	uint64_t hint_page;            /* ... the region page that hint is for */
	uint64_t known;                /* pages classified from the pagemap, not read */
	uint64_t holes;                /* pages in holes of the RAM file, not read */
	uint8_t buf[TLM_SRC_SCAN_BATCH * TLM_PAGE_SIZE];   /* pid source: pages read */
};

int tlm_src_scan_open(struct tlm_src_region *r, struct tlm_src_scan **out, char *err,
		      size_t errlen)
{
	struct tlm_src_scan *s;
	struct stat st;

	*out = NULL;
	/* A mapping read past the end of the file raises SIGBUS: check it still covers us. */
	if (r->kind == TLM_SRC_FILE &&
	    (fstat(r->fd, &st) < 0 || (uint64_t)st.st_size < r->offset + r->size)) {
		snprintf(err, errlen, "%s: %s is now shorter than %llu bytes", r->id, r->path,
			 (unsigned long long)(r->offset + r->size));
		return -EIO;
	}
	if (r->kind == TLM_SRC_PID && kill(r->pid, 0) < 0 && errno == ESRCH) {
		snprintf(err, errlen, "%s: pid %d is gone", r->id, r->pid);
		return -ESRCH;
	}
	s = malloc(sizeof(*s));
	if (!s) {
		snprintf(err, errlen, "%s: out of memory", r->id);
		return -ENOMEM;
	}
	s->r = r;
	s->nv = r->kind == TLM_SRC_PID ? tmpl_vmas(r, s->v) : 0;
	s->hint = s->hint_page = UINT64_MAX;
	s->known = s->holes = 0;
	*out = s;
	return 0;
}

void tlm_src_scan_close(struct tlm_src_scan *s)
{
	free(s);
}

uint64_t tlm_src_scan_known(const struct tlm_src_scan *s)
{
	return s->known;
}

uint64_t tlm_src_scan_holes(const struct tlm_src_scan *s)
{
	return s->holes;
}

/* *data: the bytes of pages [first, first + n), in the file mapping or read into s->buf
 * (pages known from the pagemap left out). 0 or -errno. */
static int scan_read(struct tlm_src_scan *s, uint64_t first, unsigned n, const bool *known,
		     const uint8_t **data, char *err, size_t errlen)
{
	struct tlm_src_region *r = s->r;
	uint64_t need[TLM_SRC_SCAN_BATCH];
	unsigned nneed = 0;

	*data = s->buf;
	if (r->kind == TLM_SRC_FILE) {
		*data = r->ram + first * TLM_PAGE_SIZE;
		return 0;
	}
	for (unsigned i = 0; i < n; i++)
		if (!known[i])
			need[nneed++] = first + i;
	return nneed ? pid_read(r, need, nneed, s->buf, err, errlen) : 0;
}

int tlm_src_scan_batch(struct tlm_src_scan *s, uint64_t first, unsigned n, uint8_t *cls,
		       uint64_t *k, char *err, size_t errlen)
{
	struct tlm_src_region *r = s->r;
	bool known[TLM_SRC_SCAN_BATCH] = { false }, hole[TLM_SRC_SCAN_BATCH];
	const uint8_t *data;
	uint64_t hint = s->hint_page == first ? s->hint : UINT64_MAX;
	unsigned j = 0;
	int rc;

	if (n > TLM_SRC_SCAN_BATCH || first + n > r->page_count || first + n < first)
		return -ERANGE;
	if (s->nv)
		pagemap_known(r, s->v, s->nv, first, n, known);
	if (r->kind == TLM_SRC_FILE)
		s->holes += file_holes(r, first, n, hole);
	rc = scan_read(s, first, n, known, &data, err, errlen);
	if (rc < 0)
		return rc;
	for (unsigned i = 0; i < n; i++) {
		if (r->kind == TLM_SRC_FILE && hole[i]) {
			cls[i] = (uint8_t)zero_class(r, first + i, &k[i]);
		} else if (known[i]) {
			cls[i] = TLM_CLASS_TEMPLATE;
			k[i] = r->tmpl_base + first + i;
			s->known++;
		} else {
			/* file: page i of the batch; pid: the j-th page read */
			unsigned at = r->kind == TLM_SRC_FILE ? i : j++;

			cls[i] = (uint8_t)tlm_classify_page_hint(&r->map, first + i,
						data + (size_t)at * TLM_PAGE_SIZE, hint, &k[i]);
		}
		hint = cls[i] == TLM_CLASS_REF ? k[i] + 1 : UINT64_MAX;
	}
	s->hint = hint;
	s->hint_page = first + n;
	return 0;
}

/* The whole region in page order into r->map (phase FROZEN). */
static int classify_all(struct tlm_src_region *r, char *err, size_t errlen)
{
	struct tlm_src_scan *s;
	uint8_t cls[TLM_SRC_SCAN_BATCH];
	uint64_t k[TLM_SRC_SCAN_BATCH];
	int rc = tlm_src_scan_open(r, &s, err, errlen);

	if (rc < 0)
		return rc;
	if (r->ram)
		madvise((void *)r->ram, r->size, MADV_SEQUENTIAL);
	for (uint64_t first = 0; first < r->page_count && rc == 0; first += TLM_SRC_SCAN_BATCH) {
		unsigned n = (unsigned)(r->page_count - first < TLM_SRC_SCAN_BATCH ?
					r->page_count - first : TLM_SRC_SCAN_BATCH);

		rc = tlm_src_scan_batch(s, first, n, cls, k, err, errlen);
		for (unsigned i = 0; i < n && rc == 0; i++)
			rc = tlm_cls_map_add(&r->map, cls[i], k[i]);
	}
	r->map.known_pages = tlm_src_scan_known(s);
	r->map.hole_pages = tlm_src_scan_holes(s);
	tlm_src_scan_close(s);
	return rc;
}

int tlm_src_classify(struct tlm_src_region *r, char *err, size_t errlen)
{
	uint64_t t0 = tlm_now_ns();
	int rc;

	err[0] = '\0';
	if (r->phase != TLM_SRC_FROZEN) {
		snprintf(err, errlen, "%s: classify in phase %s (needs frozen)", r->id,
			 tlm_src_phase_name(r->phase));
		return -EPERM;
	}
	tlm_cls_map_reset(&r->map);
	rc = classify_all(r, err, errlen);
	r->st.classify_ns = tlm_now_ns() - t0;
	if (rc < 0 && !*err)
		snprintf(err, errlen, "%s: classification failed: %s", r->id, strerror(-rc));
	return rc;
}
