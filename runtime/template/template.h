/*
 * template.h — the template store: a file of 4 KiB pages plus an index.
 *
 * A template is two files:
 *   PAGES        raw guest pages, page i at offset i * page_size (kept on tmpfs when in use)
 *   PAGES.tlmi   the index (default name; any name may be given): header + per-page XXH3-64
 *
 * The in-memory index adds a hash -> page lookup table (open addressing) holding the
 * first page of every distinct content; lookups by content verify the bytes on a hash hit,
 * so a hash collision can never return a page with other content.
 *
 * Usage:
 *     struct tlm_tmpl *t;
 *     char err[256];
 *     if (tlm_tmpl_open(&t, "base.pages", NULL, 0, err, sizeof err) < 0) die("%s", err);
 *     int64_t k = tlm_tmpl_lookup(t, page_bytes);   // -ENOENT: no template page has it
 *     const void *p = tlm_tmpl_page(t, k);
 *     tlm_tmpl_close(t);
 *
 * Index file format and digest: format.h.
 */
#ifndef TLM_TEMPLATE_H
#define TLM_TEMPLATE_H

#include <stddef.h>
#include <stdint.h>
#include <stdbool.h>

#include "format.h"

struct tlm_tmpl;   /* opaque */

/* tlm_tmpl_open flags */
#define TLM_TMPL_NO_VERIFY_PAGES 0x0u /* default: trust pages, check index consistency only */
#define TLM_TMPL_VERIFY_PAGES    0x1u /* rehash every page and compare with the index */

/* Open a template: mmap PAGES read-only (MAP_SHARED, so every user shares the page cache),
 * load and validate the index (index_path NULL = PAGES.tlmi), build the lookup table.
 * Returns 0 or -errno; err gets one line naming the file and the problem. */
int tlm_tmpl_open(struct tlm_tmpl **out, const char *pages_path, const char *index_path,
		  unsigned flags, char *err, size_t errlen);
void tlm_tmpl_close(struct tlm_tmpl *t);

uint64_t tlm_tmpl_page_count(const struct tlm_tmpl *t);
const struct tlm_digest *tlm_tmpl_digest(const struct tlm_tmpl *t);
const void *tlm_tmpl_page(const struct tlm_tmpl *t, uint64_t k);   /* NULL if k out of range */
uint64_t tlm_tmpl_page_hash(const struct tlm_tmpl *t, uint64_t k);
const char *tlm_tmpl_pages_path(const struct tlm_tmpl *t);

/* Content lookup: the lowest template page whose bytes equal `page` (TLM_PAGE_SIZE bytes).
 * Returns k >= 0, or -ENOENT. `hash` variant skips hashing when the caller has it. */
int64_t tlm_tmpl_lookup(const struct tlm_tmpl *t, const void *page);
int64_t tlm_tmpl_lookup_hashed(const struct tlm_tmpl *t, const void *page, uint64_t hash);

/* Hash-only probe (no byte check): first candidate page for `hash`, or -ENOENT.
 * For statistics and benchmarks; never use it to decide page content. */
int64_t tlm_tmpl_probe_hash(const struct tlm_tmpl *t, uint64_t hash);

/* ---- building ----------------------------------------------------------------------- */

/* Hash every page of `pages` (n pages) into hashes[] using `threads` threads (0 = all CPUs). */
void tlm_hash_pages(const void *pages, uint64_t n, uint64_t *hashes, unsigned threads);

/* Write the index for a pages file atomically (temp name, fsync, rename).
 * Returns 0 or -errno with err filled; digest_out may be NULL. */
int tlm_tmpl_build_index(const char *pages_path, const char *index_path, unsigned threads,
			 struct tlm_digest *digest_out, char *err, size_t errlen);

/* Statistics as printed by `tlm-template inspect`. */
struct tlm_tmpl_stats {
	uint64_t pages, zero_pages, distinct, duplicate_pages;  /* duplicate: equals an earlier page */
};
void tlm_tmpl_stats(const struct tlm_tmpl *t, struct tlm_tmpl_stats *s);

#endif /* TLM_TEMPLATE_H */
