/* Template store: hashing a pages file and writing its index (format.h). */
#include "template.h"
#include "template_int.h"
#include "tlm_io.h"
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


int tlm_tmpl_write_index(const char *index_path, const uint64_t *hashes, uint64_t n,
			 struct tlm_digest *digest_out, char *err, size_t errlen)
{
	struct tlm_digest d;
	char tmp[4200];
	size_t len;
	uint8_t *buf;
	int fd, rc;

	tlm_digest_of_hashes(hashes, n, &d);
	buf = tlm_idx_encode(hashes, n, &d, &len);
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
