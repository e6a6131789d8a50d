/* format.c — the template index file format (format.h). */
#include "format.h"
#include "tlm_bytes.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
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
			tlm_le64_put(le + 8 * j, hashes[i + j]);
		XXH3_128bits_update(st, le, (size_t)m * 8);
	}
	d = XXH3_128bits_digest(st);
	XXH3_freeState(st);
	tlm_le64_put(out->b, d.low64);
	tlm_le64_put(out->b + 8, d.high64);
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

#define BAD(...) do { snprintf(err, errlen, __VA_ARGS__); return -EINVAL; } while (0)

int tlm_idx_header_decode(const uint8_t *b, size_t len, struct tlm_idx_header *h,
			  const char *path, char *err, size_t errlen)
{
	uint32_t version, psize;

	if (len < TLM_IDX_HDR_SIZE)
		BAD("%s: truncated index header (%zu bytes)", path, len);
	if (memcmp(b, TLM_IDX_MAGIC, 8) != 0)
		BAD("%s: not a tlm template index (bad magic)", path);
	if (tlm_le32_get(b + 44) != (uint32_t)XXH3_64bits(b, 44))
		BAD("%s: corrupt index header (checksum mismatch)", path);
	version = tlm_le32_get(b + 8);
	psize = tlm_le32_get(b + 12);
	if (version != TLM_TMPL_VERSION)
		BAD("%s: unsupported index version %u (this tlm reads %u)", path, version,
		    TLM_TMPL_VERSION);
	if (psize != TLM_PAGE_SIZE)
		BAD("%s: page size %u does not match %u", path, psize, TLM_PAGE_SIZE);
	if (tlm_le32_get(b + 40) != 0)
		BAD("%s: unknown index flags", path);
	h->page_count = tlm_le64_get(b + 16);
	memcpy(h->digest.b, b + 24, 16);
	return 0;
}

int tlm_idx_header_read(const char *path, struct tlm_idx_header *h, char *err, size_t errlen)
{
	uint8_t b[TLM_IDX_HDR_SIZE];
	ssize_t n;
	int fd = open(path, O_RDONLY | O_CLOEXEC);

	if (fd < 0) {
		int rc = -errno;

		snprintf(err, errlen, "%s: %s", path, strerror(errno));
		return rc;
	}
	n = pread(fd, b, sizeof(b), 0);
	close(fd);
	return tlm_idx_header_decode(b, n < 0 ? 0 : (size_t)n, h, path, err, errlen);
}

uint8_t *tlm_idx_encode(const uint64_t *hashes, uint64_t n, const struct tlm_digest *d,
			size_t *len)
{
	size_t sz = TLM_IDX_HDR_SIZE + 8 * (size_t)n + 8;
	uint8_t *b = calloc(1, sz);

	if (!b)
		return NULL;
	memcpy(b, TLM_IDX_MAGIC, 8);
	tlm_le32_put(b + 8, TLM_TMPL_VERSION);
	tlm_le32_put(b + 12, TLM_PAGE_SIZE);
	tlm_le64_put(b + 16, n);
	memcpy(b + 24, d->b, 16);
	/* flags (40..43) stay 0 */
	tlm_le32_put(b + 44, (uint32_t)XXH3_64bits(b, 44));
	for (uint64_t i = 0; i < n; i++)
		tlm_le64_put(b + TLM_IDX_HDR_SIZE + 8 * i, hashes[i]);
	tlm_le64_put(b + sz - 8, XXH3_64bits(b + TLM_IDX_HDR_SIZE, 8 * (size_t)n));
	*len = sz;
	return b;
}

int tlm_idx_decode(const uint8_t *b, size_t len, uint64_t n, uint64_t *hashes,
		   const char *path, char *err, size_t errlen)
{
	struct tlm_digest d;

	if (len != TLM_IDX_HDR_SIZE + 8 * n + 8)
		BAD("%s: truncated or oversized index (%zu bytes, expected %llu)", path, len,
		    (unsigned long long)(TLM_IDX_HDR_SIZE + 8 * n + 8));
	if (tlm_le64_get(b + len - 8) != XXH3_64bits(b + TLM_IDX_HDR_SIZE, 8 * n))
		BAD("%s: corrupt page hash array (checksum mismatch)", path);
	for (uint64_t i = 0; i < n; i++)
		hashes[i] = tlm_le64_get(b + TLM_IDX_HDR_SIZE + 8 * i);
	tlm_digest_of_hashes(hashes, n, &d);
	if (memcmp(d.b, b + 24, 16) != 0)
		BAD("%s: digest does not match the page hashes", path);
	return 0;
}
