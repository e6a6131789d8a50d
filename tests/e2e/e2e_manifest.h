/*
 * e2e_manifest.h — what a synthetic guest's RAM must contain: one XXH3-64 per page plus
 * the class each page was built as (the class the source page-server should find).
 *
 * File format (host byte order; written and read on the same host by tests):
 *   off  size  field
 *   0    8     magic "TLMMAN1\0"
 *   8    8     page count N
 *   16   8     page size (4096)
 *   24   32    expected pages per class: TEMPLATE, ZERO, REF, DATA (u64 each)
 *   56   8*N   page hashes (XXH3-64, seed 0), page 0 first
 *   ...  N     page classes (enum tlm_page_class)
 */
#ifndef TLM_E2E_MANIFEST_H
#define TLM_E2E_MANIFEST_H

#include <stddef.h>
#include <stdint.h>

#define E2E_PAGE 4096u

struct e2e_manifest {
	uint64_t pages;
	uint64_t count[5];        /* indexed by enum tlm_page_class (1..4) */
	uint64_t *hash;           /* pages entries */
	uint8_t *cls;             /* pages entries */
};

int e2e_manifest_alloc(struct e2e_manifest *m, uint64_t pages);
void e2e_manifest_free(struct e2e_manifest *m);
/* Atomic write (temp file, fsync, rename). 0 or -errno with err filled. */
int e2e_manifest_write(const char *path, const struct e2e_manifest *m, char *err,
		       size_t errlen);
int e2e_manifest_read(const char *path, struct e2e_manifest *m, char *err, size_t errlen);
/* Upper bound of CLASS_MAP runs for this content: class changes plus one per REF page. */
uint64_t e2e_manifest_runs(const struct e2e_manifest *m);

#endif
