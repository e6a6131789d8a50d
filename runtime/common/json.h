/*
 * json.h — a growable string buffer and a minimal JSON writer for stats output.
 */
#ifndef TLM_JSON_H
#define TLM_JSON_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct tlm_sbuf {
	char *p;
	size_t len, cap;
	bool oom;              /* an allocation failed; content is truncated */
};

void tlm_sbuf_init(struct tlm_sbuf *b);
void tlm_sbuf_fini(struct tlm_sbuf *b);
void tlm_sbuf_printf(struct tlm_sbuf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void tlm_sbuf_putc(struct tlm_sbuf *b, char c);

/* JSON writer over an sbuf. Commas are inserted automatically. */
struct tlm_json {
	struct tlm_sbuf *b;
	int depth;
	bool need_comma[16];
};

void tlm_json_init(struct tlm_json *j, struct tlm_sbuf *b);
void tlm_json_obj_begin(struct tlm_json *j, const char *key);   /* key NULL inside arrays/top */
void tlm_json_obj_end(struct tlm_json *j);
void tlm_json_arr_begin(struct tlm_json *j, const char *key);
void tlm_json_arr_end(struct tlm_json *j);
void tlm_json_u64(struct tlm_json *j, const char *key, uint64_t v);
void tlm_json_i64(struct tlm_json *j, const char *key, int64_t v);
void tlm_json_double(struct tlm_json *j, const char *key, double v);
void tlm_json_str(struct tlm_json *j, const char *key, const char *v);   /* escaped */
void tlm_json_bool(struct tlm_json *j, const char *key, bool v);

#endif
