#include "e2e_tmpl.h"
#include "tlm_test.h"
#include "tlm_io.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>
#include <xxhash.h>

#include "util.h"

/* Page i starts with its index and the seed: distinct and never zero. */
int e2e_make_pages(const char *path, uint64_t pages, uint64_t seed)
{
	uint64_t page[512], rng = seed;
	int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	int rc = 0;

	if (fd < 0)
		return -errno;
	for (uint64_t i = 0; i < pages && !rc; i++) {
		for (int w = 0; w < 512; w++)
			page[w] = tt_rand(&rng);
		page[0] = i + 1;
		page[1] = seed;
		rc = tlm_write_full(fd, page, sizeof(page));
	}
	close(fd);
	return rc;
}

static int e2e_index_body(const uint8_t *p, uint64_t n, uint64_t *hashes, uint8_t hdr[48],
			  uint8_t digest[16])
{
	uint32_t ver = 1, psize = 4096, flags = 0, sum;
	XXH128_hash_t d;

	for (uint64_t i = 0; i < n; i++)
		hashes[i] = XXH3_64bits(p + i * 4096, 4096);
	d = XXH3_128bits(hashes, n * 8);
	memcpy(digest, &d.low64, 8);
	memcpy(digest + 8, &d.high64, 8);
	memcpy(hdr, "TLMIDX\0\0", 8);
	memcpy(hdr + 8, &ver, 4);
	memcpy(hdr + 12, &psize, 4);
	memcpy(hdr + 16, &n, 8);
	memcpy(hdr + 24, digest, 16);
	memcpy(hdr + 40, &flags, 4);
	sum = (uint32_t)XXH3_64bits(hdr, 44);
	memcpy(hdr + 44, &sum, 4);
	hashes[n] = XXH3_64bits(hashes, n * 8);
	return 0;
}

int e2e_write_index(const char *pages_path, uint8_t digest[16])
{
	char path[4200];
	uint8_t hdr[48];
	struct stat st;
	uint64_t n, *hashes;
	void *p;
	int fd = open(pages_path, O_RDONLY | O_CLOEXEC), rc;

	if (fd < 0 || fstat(fd, &st) < 0 || st.st_size % 4096 || !st.st_size)
		return fd < 0 ? -errno : -EINVAL;
	n = (uint64_t)st.st_size / 4096;
	p = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_SHARED, fd, 0);
	close(fd);
	hashes = malloc((n + 1) * 8);
	if (p == MAP_FAILED || !hashes) {
		free(hashes);
		return -ENOMEM;
	}
	e2e_index_body(p, n, hashes, hdr, digest);
	munmap(p, (size_t)st.st_size);
	snprintf(path, sizeof(path), "%s.tlmi", pages_path);
	fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	rc = fd < 0 ? -errno : tlm_write_full(fd, hdr, sizeof(hdr));
	if (!rc)
		rc = tlm_write_full(fd, hashes, (n + 1) * 8);
	if (fd >= 0)
		close(fd);
	free(hashes);
	return rc;
}
