#include "json.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void tlm_sbuf_init(struct tlm_sbuf *b)
{
	memset(b, 0, sizeof(*b));
}

void tlm_sbuf_fini(struct tlm_sbuf *b)
{
	free(b->p);
	memset(b, 0, sizeof(*b));
}

static int sbuf_reserve(struct tlm_sbuf *b, size_t more)
{
	size_t cap = b->cap ? b->cap : 256;
	char *p;

	if (b->oom)
		return -1;
	if (b->len + more + 1 <= b->cap)
		return 0;
	while (cap < b->len + more + 1)
		cap *= 2;
	p = realloc(b->p, cap);
	if (!p) {
		b->oom = true;
		return -1;
	}
	b->p = p;
	b->cap = cap;
	return 0;
}

void tlm_sbuf_printf(struct tlm_sbuf *b, const char *fmt, ...)
{
	va_list ap;
	int n;

	va_start(ap, fmt);
	n = vsnprintf(NULL, 0, fmt, ap);
	va_end(ap);
	if (n < 0 || sbuf_reserve(b, (size_t)n) < 0)
		return;
	va_start(ap, fmt);
	vsnprintf(b->p + b->len, b->cap - b->len, fmt, ap);
	va_end(ap);
	b->len += (size_t)n;
}

void tlm_sbuf_putc(struct tlm_sbuf *b, char c)
{
	if (sbuf_reserve(b, 1) < 0)
		return;
	b->p[b->len++] = c;
	b->p[b->len] = '\0';
}

void tlm_json_init(struct tlm_json *j, struct tlm_sbuf *b)
{
	memset(j, 0, sizeof(*j));
	j->b = b;
}

static void json_escaped(struct tlm_sbuf *b, const char *s)
{
	tlm_sbuf_putc(b, '"');
	for (; *s; s++) {
		unsigned char c = (unsigned char)*s;

		if (c == '"' || c == '\\')
			tlm_sbuf_printf(b, "\\%c", c);
		else if (c < 0x20)
			tlm_sbuf_printf(b, "\\u%04x", c);
		else
			tlm_sbuf_putc(b, (char)c);
	}
	tlm_sbuf_putc(b, '"');
}

/* Comma and key for the next value at the current depth. */
static void json_key(struct tlm_json *j, const char *key)
{
	if (j->need_comma[j->depth])
		tlm_sbuf_putc(j->b, ',');
	j->need_comma[j->depth] = true;
	if (key) {
		json_escaped(j->b, key);
		tlm_sbuf_putc(j->b, ':');
	}
}

static void json_open(struct tlm_json *j, const char *key, char c)
{
	json_key(j, key);
	tlm_sbuf_putc(j->b, c);
	if (j->depth + 1 < (int)(sizeof(j->need_comma) / sizeof(j->need_comma[0])))
		j->depth++;
	j->need_comma[j->depth] = false;
}

static void json_close(struct tlm_json *j, char c)
{
	tlm_sbuf_putc(j->b, c);
	if (j->depth > 0)
		j->depth--;
}

void tlm_json_obj_begin(struct tlm_json *j, const char *key) { json_open(j, key, '{'); }
void tlm_json_obj_end(struct tlm_json *j) { json_close(j, '}'); }
void tlm_json_arr_begin(struct tlm_json *j, const char *key) { json_open(j, key, '['); }
void tlm_json_arr_end(struct tlm_json *j) { json_close(j, ']'); }

void tlm_json_u64(struct tlm_json *j, const char *key, uint64_t v)
{
	json_key(j, key);
	tlm_sbuf_printf(j->b, "%llu", (unsigned long long)v);
}

void tlm_json_i64(struct tlm_json *j, const char *key, int64_t v)
{
	json_key(j, key);
	tlm_sbuf_printf(j->b, "%lld", (long long)v);
}

void tlm_json_double(struct tlm_json *j, const char *key, double v)
{
	json_key(j, key);
	tlm_sbuf_printf(j->b, "%.3f", v);
}

void tlm_json_str(struct tlm_json *j, const char *key, const char *v)
{
	json_key(j, key);
	json_escaped(j->b, v ? v : "");
}

void tlm_json_bool(struct tlm_json *j, const char *key, bool v)
{
	json_key(j, key);
	tlm_sbuf_printf(j->b, "%s", v ? "true" : "false");
}
