/*
 * e2e_tmpl.h — test templates: a pages file of random, distinct, non-zero pages (so every
 * page class the tests build is unambiguous), and a stand-alone writer of the index
 * format documented in runtime/template.h (used by the glue tests, which must not depend
 * on the template store; the end-to-end test uses `tlm-template build` instead).
 */
#ifndef TLM_E2E_TMPL_H
#define TLM_E2E_TMPL_H

#include <stdint.h>

int e2e_make_pages(const char *path, uint64_t pages, uint64_t seed);
int e2e_write_index(const char *pages_path, uint8_t digest[16]);

#endif
