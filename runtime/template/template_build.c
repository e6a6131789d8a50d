/* Template store: hashing, digests and writing the index (format in template.h). */
#include "tlm_proto.h"
#include "template.h"
#include "template_int.h"
#include "util.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>
#include <xxhash.h>

uint64_t tlm_page_hash(const void *page)
{
	return XXH3_64bits(page, TLM_PAGE_SIZE);
}

bool tlm_page_is_zero(const void *page)
{
	const uint64_t *w = page;
	uint64_t acc = 0;

	/* OR-reduce in blocks: vectorises, and an early exit per block keeps random pages cheap. */
	for (size_t i = 0; i < TLM_PAGE_SIZE / 8; i += 32) {
		for (size_t j = 0; j < 32; j++)
			acc |= w[i + j];
		if (acc)
			return false;
	}
	return true;
}

void tlm_put_le64(uint8_t *p, uint64_t v)
{
	for (int i = 0; i < 8; i++)
		p[i] = (uint8_t)(v >> (8 * i));
}

uint64_t tlm_get_le64(const uint8_t *p)
{
	uint64_t v = 0;

	for (int i = 7; i >= 0; i--)
		v = (v << 8) | p[i];
	return v;
}

void tlm_digest_of_hashes(const uint64_t *hashes, uint64_t n, struct tlm_digest *out)
{
	XXH3_state_t *st = XXH3_createState();
	uint8_t le[8 * 512];
	XXH128_hash_t d;

	/* Hash the little-endian encoding, so the digest is the same on every host. */
	XXH3_128bits_reset(st);
	for (uint64_t i = 0; i < n; i += 512) {
		uint64_t m = n - i < 512 ? n - i : 512;

		for (uint64_t j = 0; j < m; j++)
			tlm_put_le64(le + 8 * j, hashes[i + j]);
		XXH3_128bits_update(st, le, (size_t)m * 8);
	}
	d = XXH3_128bits_digest(st);
	XXH3_freeState(st);
	tlm_put_le64(out->b, d.low64);
	tlm_put_le64(out->b + 8, d.high64);
}

void tlm_digest_hex(const struct tlm_digest *d, char out[33])
{
	static const char hex[] = "0123456789abcdef";

	for (int i = 0; i < 16; i++) {
		out[2 * i] = hex[d->b[i] >> 4];
		out[2 * i + 1] = hex[d->b[i] & 15];
	}
	out[32] = '\0';
}

int tlm_digest_parse(const char *hex, struct tlm_digest *out)
{
	if (!hex || strlen(hex) != 32)
		return -EINVAL;
	for (int i = 0; i < 16; i++) {
		int hi = tlm_hex_digit(hex[2 * i]), lo = tlm_hex_digit(hex[2 * i + 1]);

		if (hi < 0 || lo < 0)
			return -EINVAL;
		out->b[i] = (uint8_t)(hi << 4 | lo);
	}
	return 0;
}

struct hash_job {
	const uint8_t *pages;
	uint64_t first, count;
	uint64_t *hashes;
};

static void *hash_worker(void *arg)
{
	struct hash_job *j = arg;

	for (uint64_t i = 0; i < j->count; i++)
		j->hashes[j->first + i] = tlm_page_hash(j->pages + (j->first + i) * TLM_PAGE_SIZE);
	return NULL;
}

void tlm_hash_pages(const void *pages, uint64_t n, uint64_t *hashes, unsigned threads)
{
	struct hash_job jobs[64];
	pthread_t tid[64];
	unsigned started = 0;

	if (threads == 0)
		threads = (unsigned)sysconf(_SC_NPROCESSORS_ONLN);
	if (threads > 64)
		threads = 64;
	if (threads < 1 || n < 1024)   /* not worth a thread for small inputs */
		threads = 1;
	for (unsigned t = 0; t < threads; t++) {
		uint64_t per = n / threads, first = per * t;

		jobs[t] = (struct hash_job){ pages, first, t + 1 == threads ? n - first : per, hashes };
		if (t == 0 || pthread_create(&tid[t], NULL, hash_worker, &jobs[t]) != 0)
			continue;   /* job 0 (and any failed spawn) runs on this thread below */
		started |= 1u << (t & 31);
	}
	hash_worker(&jobs[0]);
	for (unsigned t = 1; t < threads; t++) {
		if (started & (1u << (t & 31)))
			pthread_join(tid[t], NULL);
		else
			hash_worker(&jobs[t]);
	}
}

/* Serialise header + hashes + trailer into one buffer. */
static uint8_t *index_serialise(const uint64_t *hashes, uint64_t n, const struct tlm_digest *d,
				size_t *len)
{
	size_t sz = TLM_IDX_HDR_SIZE + 8 * (size_t)n + 8;
	uint8_t *b = calloc(1, sz);

	if (!b)
		return NULL;
	memcpy(b, TLM_IDX_MAGIC, 8);
	tlm_put_le64(b + 8, TLM_TMPL_VERSION | ((uint64_t)TLM_PAGE_SIZE << 32));
	tlm_put_le64(b + 16, n);
	memcpy(b + 24, d->b, 16);
	/* flags (40..43) stay 0 */
	uint32_t hsum = (uint32_t)XXH3_64bits(b, 44);
	for (int i = 0; i < 4; i++)
		b[44 + i] = (uint8_t)(hsum >> (8 * i));
	for (uint64_t i = 0; i < n; i++)
		tlm_put_le64(b + TLM_IDX_HDR_SIZE + 8 * i, hashes[i]);
	tlm_put_le64(b + sz - 8, XXH3_64bits(b + TLM_IDX_HDR_SIZE, 8 * (size_t)n));
	*len = sz;
	return b;
}

int tlm_tmpl_write_index(const char *index_path, const uint64_t *hashes, uint64_t n,
			 struct tlm_digest *digest_out, char *err, size_t errlen)
{
	struct tlm_digest d;
	char tmp[4200];
	size_t len;
	uint8_t *buf;
	int fd, rc;

	tlm_digest_of_hashes(hashes, n, &d);
	buf = index_serialise(hashes, n, &d, &len);
	if (!buf) {
		snprintf(err, errlen, "%s: out of memory", index_path);
		return -ENOMEM;
	}
	fd = tlm_atomic_write_begin(index_path, tmp, sizeof(tmp));
	rc = fd < 0 ? fd : tlm_write_full(fd, buf, len);
	if (rc == 0)
		rc = tlm_atomic_write_commit(fd, tmp, index_path);
	else if (fd >= 0)
		tlm_atomic_write_abort(fd, tmp);
	free(buf);
	if (rc < 0) {
		snprintf(err, errlen, "%s: cannot write index: %s", index_path, strerror(-rc));
		return rc;
	}
	if (digest_out)
		*digest_out = d;
	return 0;
}

int tlm_tmpl_build_index(const char *pages_path, const char *index_path, unsigned threads,
			 struct tlm_digest *digest_out, char *err, size_t errlen)
{
	char def[4200];
	const void *pages;
	uint64_t *hashes, n;
	size_t len;
	int rc;

	rc = tlm_map_pages_file(pages_path, &pages, &len, err, errlen);
	if (rc < 0)
		return rc;
	n = len / TLM_PAGE_SIZE;
	hashes = malloc(n * sizeof(*hashes));
	if (!hashes) {
		munmap((void *)pages, len);
		snprintf(err, errlen, "%s: out of memory for %llu page hashes", pages_path,
			 (unsigned long long)n);
		return -ENOMEM;
	}
	tlm_hash_pages(pages, n, hashes, threads);
	munmap((void *)pages, len);
	if (!index_path) {
		snprintf(def, sizeof(def), "%s%s", pages_path, TLM_TMPL_INDEX_SUFFIX);
		index_path = def;
	}
	rc = tlm_tmpl_write_index(index_path, hashes, n, digest_out, err, errlen);
	free(hashes);
	return rc;
}
