/*
 * fuzz_template.c — the template index loader (runtime/template.c, tlm_tmpl_open). Input:
 *   byte 0     fix-ups: bit 0 header checksum, bit 1 trailer checksum, bit 2 digest (so
 *              mutations get past the checksums to the fields behind them), bit 3 open
 *              with TLM_TMPL_VERIFY_PAGES
 *   byte 1     the pages file has 1 + byte % 4 pages
 *   bytes 2-5  page i is filled with byte 2 + i
 *   rest       the index file
 * Both files are memfds opened through /proc/self/fd. Promises checked: a refusal has a
 * reason; an accepted template has the pages file's page count and every content lookup
 * returns a page with the same bytes.
 */
#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include <xxhash.h>

#include "fuzz.h"
#include "tlm_bytes.h"
#include "template_int.h"

#define FIX_HDR 0x1u
#define FIX_TRAILER 0x2u
#define FIX_DIGEST 0x4u
#define OPEN_VERIFY 0x8u

static int memfd_with(const char *name, const void *p, size_t n, char *path, size_t len)
{
	int fd = memfd_create(name, MFD_CLOEXEC);

	fuzz_check(fd >= 0 && write(fd, p, n) == (ssize_t)n, "memfd %s", name);
	snprintf(path, len, "/proc/self/fd/%d", fd);
	return fd;
}

static void fix_up(uint8_t *b, size_t len, unsigned flags, uint64_t npages)
{
	size_t arr = TLM_IDX_HDR_SIZE + 8 * npages;

	if ((flags & FIX_DIGEST) && len >= arr) {
		uint64_t h[4];
		struct tlm_digest d;

		for (uint64_t i = 0; i < npages; i++)
			h[i] = tlm_le64_get(b + TLM_IDX_HDR_SIZE + 8 * i);
		tlm_digest_of_hashes(h, npages, &d);
		memcpy(b + 24, d.b, 16);
	}
	if ((flags & FIX_HDR) && len >= TLM_IDX_HDR_SIZE) {
		uint32_t sum = (uint32_t)XXH3_64bits(b, 44);

		for (int i = 0; i < 4; i++)
			b[44 + i] = (uint8_t)(sum >> (8 * i));
	}
	if ((flags & FIX_TRAILER) && len >= TLM_IDX_HDR_SIZE + 8)
		tlm_le64_put(b + len - 8, XXH3_64bits(b + TLM_IDX_HDR_SIZE,
						      len - 8 - TLM_IDX_HDR_SIZE));
}

static void check_open(struct tlm_tmpl *t, const uint8_t *pages, uint64_t npages)
{
	fuzz_check(tlm_tmpl_page_count(t) == npages, "%llu pages, file has %llu",
		   (unsigned long long)tlm_tmpl_page_count(t), (unsigned long long)npages);
	for (uint64_t i = 0; i < npages; i++) {
		int64_t k = tlm_tmpl_lookup(t, pages + i * TLM_PAGE_SIZE);

		/* The index may lie about hashes (unverified open): then a lookup may miss,
		 * but a hit must never be a page with other bytes. */
		if (k >= 0)
			fuzz_check(!memcmp(tlm_tmpl_page(t, (uint64_t)k), pages + i * TLM_PAGE_SIZE,
					   TLM_PAGE_SIZE), "page %llu found as %lld with other bytes",
				   (unsigned long long)i, (long long)k);
	}
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static uint8_t pages[4 * TLM_PAGE_SIZE];
	char ppath[64], ipath[64], err[512] = "";
	struct tlm_tmpl *t;
	uint64_t npages;
	uint8_t *idx;
	size_t ilen;
	int pfd, ifd, rc;

	if (size < 6)
		return 0;
	npages = 1 + data[1] % 4;
	for (uint64_t i = 0; i < npages; i++)
		memset(pages + i * TLM_PAGE_SIZE, data[2 + i], TLM_PAGE_SIZE);
	ilen = size - 6;
	idx = malloc(ilen ? ilen : 1);
	fuzz_check(idx != NULL, "malloc");
	memcpy(idx, data + 6, ilen);
	fix_up(idx, ilen, data[0], npages);
	pfd = memfd_with("fuzz-pages", pages, npages * TLM_PAGE_SIZE, ppath, sizeof(ppath));
	ifd = memfd_with("fuzz-index", idx, ilen, ipath, sizeof(ipath));
	free(idx);
	rc = tlm_tmpl_open(&t, ppath, ipath, data[0] & OPEN_VERIFY ? TLM_TMPL_VERIFY_PAGES : 0,
			   err, sizeof(err));
	if (rc == 0) {
		check_open(t, pages, npages);
		tlm_tmpl_close(t);
	} else {
		fuzz_check(rc < 0 && err[0] && t == NULL, "rc %d reason '%s'", rc, err);
	}
	close(pfd);
	close(ifd);
	return 0;
}
