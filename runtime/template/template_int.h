/*
 * template_int.h — template store internals shared by template.c, template_build.c,
 * the tlm-template CLI and the tests. Not part of the stable API.
 */
#ifndef TLM_TEMPLATE_INT_H
#define TLM_TEMPLATE_INT_H

#include "template.h"

/* mmap a pages file read-only (MAP_SHARED); refuses empty files and sizes that are not
 * a multiple of TLM_PAGE_SIZE with a one-line "FILE: problem". */
int tlm_map_pages_file(const char *path, const void **pages, size_t *len, char *err,
		       size_t errlen);

/* Write an index for given hashes (atomic). Tests use it to force hash collisions:
 * an index whose hashes collide on purpose must still never confuse two contents. */
int tlm_tmpl_write_index(const char *index_path, const uint64_t *hashes, uint64_t n,
			 struct tlm_digest *digest_out, char *err, size_t errlen);

/* `tlm-template select`: the max_pages most frequent non-zero page contents (occurring at
 * least min_count times) across imgs, written as a template at out (+ index). Prints a
 * summary; errors go to stderr as one line. 0 or -errno. */
int tlm_template_select(uint64_t max_pages, uint64_t min_count, const char *out,
			char **imgs, int nimg);

#endif
