/* Template store: loading, validating and querying a template (format in format.h). */
#include "template.h"
#include "template_int.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

/* One slot of the lookup table: 16 bytes, 4 per cache line. page_plus1 == 0: empty. */
struct tmpl_slot {
	uint64_t hash;
	uint64_t page_plus1;
};

struct tlm_tmpl {
	char *pages_path;
	const uint8_t *pages;
	size_t map_len;
	uint64_t n;
	uint64_t *hashes;
	struct tlm_digest digest;
	struct tmpl_slot *tab;
	uint64_t mask;
	uint64_t distinct;
};

/* open O_RDONLY + fstat; the fd, or -errno with "PATH: reason" in err. */
static int open_stat(const char *path, struct stat *st, char *err, size_t errlen)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC);

	if (fd < 0 || fstat(fd, st) < 0) {
		int rc = -errno;

		snprintf(err, errlen, "%s: %s", path, strerror(errno));
		if (fd >= 0)
			close(fd);
		return rc;
	}
	return fd;
}

int tlm_map_pages_file(const char *path, const void **pages, size_t *len, char *err,
		       size_t errlen)
{
	struct stat st;
	void *p;
	int fd = open_stat(path, &st, err, errlen);

	if (fd < 0)
		return fd;
	if (!S_ISREG(st.st_mode) || st.st_size == 0 || st.st_size % TLM_PAGE_SIZE) {
		snprintf(err, errlen, "%s: %s", path, !S_ISREG(st.st_mode) ? "not a regular file" :
			 st.st_size == 0 ? "empty file" : "size is not a multiple of 4096 bytes");
		close(fd);
		return -EINVAL;
	}
	p = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_SHARED, fd, 0);
	close(fd);
	if (p == MAP_FAILED) {
		snprintf(err, errlen, "%s: mmap: %s", path, strerror(errno));
		return -errno;
	}
	*pages = p;
	*len = (size_t)st.st_size;
	return 0;
}

/* Read the whole index file (it is small: 8 bytes per page). */
static int read_index_file(const char *path, uint8_t **buf, size_t *len, char *err, size_t errlen)
{
	struct stat st;
	int fd = open_stat(path, &st, err, errlen);
	ssize_t got = 0;

	if (fd < 0)
		return fd;
	*buf = malloc((size_t)st.st_size + 1);
	if (*buf)
		got = pread(fd, *buf, (size_t)st.st_size, 0);
	close(fd);
	if (!*buf || got != st.st_size) {
		free(*buf);
		*buf = NULL;
		snprintf(err, errlen, "%s: cannot read index", path);
		return -EIO;
	}
	*len = (size_t)st.st_size;
	return 0;
}

/* Validate the index bytes against the pages (count) and fill t->hashes / t->digest. */
static int parse_index(struct tlm_tmpl *t, const char *path, const uint8_t *b, size_t len,
		       char *err, size_t errlen)
{
	struct tlm_idx_header h;
	int rc = tlm_idx_header_decode(b, len, &h, path, err, errlen);

	if (rc < 0)
		return rc;
	if (h.page_count != t->n) {
		snprintf(err, errlen, "%s: index has %llu pages but %s has %llu", path,
			 (unsigned long long)h.page_count, t->pages_path, (unsigned long long)t->n);
		return -EINVAL;
	}
	t->hashes = malloc(t->n * sizeof(uint64_t) + 1);
	if (!t->hashes) {
		snprintf(err, errlen, "%s: out of memory", path);
		return -ENOMEM;
	}
	t->digest = h.digest;
	return tlm_idx_decode(b, len, t->n, t->hashes, path, err, errlen);
}

static const uint8_t *page_at(const struct tlm_tmpl *t, uint64_t k)
{
	return t->pages + k * TLM_PAGE_SIZE;
}

/* Slot of the first page holding `page`'s content, or the empty slot where it would go. */
static struct tmpl_slot *find_slot(const struct tlm_tmpl *t, const void *page, uint64_t hash)
{
	for (uint64_t s = hash & t->mask;; s = (s + 1) & t->mask) {
		struct tmpl_slot *e = &t->tab[s];

		if (!e->page_plus1)
			return e;
		if (e->hash == hash && memcmp(page_at(t, e->page_plus1 - 1), page, TLM_PAGE_SIZE) == 0)
			return e;
	}
}

/* One slot per distinct content (its lowest page), at least 2x oversized. */
static int build_table(struct tlm_tmpl *t)
{
	uint64_t cap = 16;

	while (cap < 2 * t->n)
		cap <<= 1;
	t->tab = calloc(cap, sizeof(*t->tab));
	if (!t->tab)
		return -ENOMEM;
	t->mask = cap - 1;
	for (uint64_t i = 0; i < t->n; i++) {
		struct tmpl_slot *e = find_slot(t, page_at(t, i), t->hashes[i]);

		if (!e->page_plus1) {
			e->hash = t->hashes[i];
			e->page_plus1 = i + 1;
			t->distinct++;
		}
	}
	return 0;
}

static int verify_pages(const struct tlm_tmpl *t, char *err, size_t errlen)
{
	for (uint64_t i = 0; i < t->n; i++)
		if (tlm_page_hash(page_at(t, i)) != t->hashes[i]) {
			snprintf(err, errlen, "%s: page %llu does not match the index",
				 t->pages_path, (unsigned long long)i);
			return -EBADMSG;
		}
	return 0;
}

int tlm_tmpl_open(struct tlm_tmpl **out, const char *pages_path, const char *index_path,
		  unsigned flags, char *err, size_t errlen)
{
	struct tlm_tmpl *t = calloc(1, sizeof(*t));
	char def[4200];
	uint8_t *idx = NULL;
	size_t idx_len = 0;
	const void *pages;
	int rc;

	*out = NULL;
	if (!t || !(t->pages_path = strdup(pages_path))) {
		free(t);
		snprintf(err, errlen, "%s: out of memory", pages_path);
		return -ENOMEM;
	}
	rc = tlm_map_pages_file(pages_path, &pages, &t->map_len, err, errlen);
	if (rc < 0)
		goto fail;
	t->pages = pages;
	t->n = t->map_len / TLM_PAGE_SIZE;
	if (!index_path) {
		snprintf(def, sizeof(def), "%s%s", pages_path, TLM_TMPL_INDEX_SUFFIX);
		index_path = def;
	}
	rc = read_index_file(index_path, &idx, &idx_len, err, errlen);
	if (rc == 0)
		rc = parse_index(t, index_path, idx, idx_len, err, errlen);
	free(idx);
	if (rc == 0 && (flags & TLM_TMPL_VERIFY_PAGES))
		rc = verify_pages(t, err, errlen);
	if (rc == 0 && build_table(t) < 0) {
		snprintf(err, errlen, "%s: out of memory for the lookup table", pages_path);
		rc = -ENOMEM;
	}
	if (rc < 0)
		goto fail;
	*out = t;
	return 0;
fail:
	tlm_tmpl_close(t);
	return rc;
}

void tlm_tmpl_close(struct tlm_tmpl *t)
{
	if (!t)
		return;
	if (t->pages)
		munmap((void *)t->pages, t->map_len);
	free(t->hashes);
	free(t->tab);
	free(t->pages_path);
	free(t);
}

uint64_t tlm_tmpl_page_count(const struct tlm_tmpl *t) { return t->n; }
const struct tlm_digest *tlm_tmpl_digest(const struct tlm_tmpl *t) { return &t->digest; }
const char *tlm_tmpl_pages_path(const struct tlm_tmpl *t) { return t->pages_path; }

const void *tlm_tmpl_page(const struct tlm_tmpl *t, uint64_t k)
{
	return k < t->n ? page_at(t, k) : NULL;
}

uint64_t tlm_tmpl_page_hash(const struct tlm_tmpl *t, uint64_t k)
{
	return k < t->n ? t->hashes[k] : 0;
}

int64_t tlm_tmpl_lookup_hashed(const struct tlm_tmpl *t, const void *page, uint64_t hash)
{
	const struct tmpl_slot *e = find_slot(t, page, hash);

	return e->page_plus1 ? (int64_t)(e->page_plus1 - 1) : -ENOENT;
}

int64_t tlm_tmpl_lookup(const struct tlm_tmpl *t, const void *page)
{
	return tlm_tmpl_lookup_hashed(t, page, tlm_page_hash(page));
}

int64_t tlm_tmpl_probe_hash(const struct tlm_tmpl *t, uint64_t hash)
{
	for (uint64_t s = hash & t->mask; t->tab[s].page_plus1; s = (s + 1) & t->mask)
		if (t->tab[s].hash == hash)
			return (int64_t)(t->tab[s].page_plus1 - 1);
	return -ENOENT;
}

void tlm_tmpl_stats(const struct tlm_tmpl *t, struct tlm_tmpl_stats *s)
{
	memset(s, 0, sizeof(*s));
	s->pages = t->n;
	s->distinct = t->distinct;
	s->duplicate_pages = t->n - t->distinct;
	for (uint64_t i = 0; i < t->n; i++)
		s->zero_pages += tlm_page_is_zero(page_at(t, i));
}
