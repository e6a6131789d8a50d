/*
 * format.h — the template index file: the one reader and writer of the format, used by
 * the template store, the tools and the preload library (which reads only the header).
 *
 * A template is two files:
 *   PAGES        raw guest pages, page i at offset i * 4096 (kept on tmpfs when in use)
 *   PAGES.tlmi   the index (default name; any name may be given)
 *
 * Index file (all integers little-endian):
 *   off  size  field
 *   0    8     magic "TLMIDX\0\0"
 *   8    4     version (1)
 *   12   4     page_size (4096)
 *   16   8     page_count
 *   24   16    digest (XXH3-128 of the hash array: low64, high64)
 *   40   4     flags (0)
 *   44   4     header checksum: low 32 bits of XXH3-64 over bytes 0..43
 *   48   8*N   page hashes (XXH3-64, seed 0), page 0 first
 *   ...  8     trailer: XXH3-64 over the hash array (detects a truncated/corrupt array)
 *
 * The digest (XXH3-128 over the little-endian hash array) names a template on both
 * hosts: two templates with equal digests hold equal pages.
 *
 * Depends on xxHash and protocol/tlm_bytes.h only (the preload library links it).
 */
#ifndef TLM_TEMPLATE_FORMAT_H
#define TLM_TEMPLATE_FORMAT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define TLM_PAGE_SIZE 4096u
#define TLM_TMPL_INDEX_SUFFIX ".tlmi"
#define TLM_TMPL_VERSION 1u
#define TLM_IDX_MAGIC "TLMIDX\0\0"
#define TLM_IDX_HDR_SIZE 48u

struct tlm_digest {
	uint8_t b[16];
};

struct tlm_idx_header {
	uint64_t page_count;
	struct tlm_digest digest;
};

uint64_t tlm_page_hash(const void *page);                  /* XXH3-64, seed 0 */
bool tlm_page_is_zero(const void *page);
void tlm_digest_of_hashes(const uint64_t *hashes, uint64_t n, struct tlm_digest *out);
void tlm_digest_hex(const struct tlm_digest *d, char out[33]);
int tlm_digest_parse(const char *hex, struct tlm_digest *out);   /* 0 or -EINVAL */

/* Check the first len bytes of an index and decode its header: 0, or -EINVAL with
 * "PATH: problem" in err (magic, checksum, version, page size, flags). */
int tlm_idx_header_decode(const uint8_t *b, size_t len, struct tlm_idx_header *h,
			  const char *path, char *err, size_t errlen);
/* Read and decode only the header of the index file at path. */
int tlm_idx_header_read(const char *path, struct tlm_idx_header *h, char *err, size_t errlen);

/* A whole index for n hashes (header, array, trailer), malloc'ed; NULL without memory. */
uint8_t *tlm_idx_encode(const uint64_t *hashes, uint64_t n, const struct tlm_digest *d,
			size_t *len);
/* Check a whole index (header, size, trailer, digest) and decode its n hashes into
 * hashes[] (n from the header, which the caller checked against its pages). */
int tlm_idx_decode(const uint8_t *b, size_t len, uint64_t n, uint64_t *hashes,
		   const char *path, char *err, size_t errlen);

#endif
