/* tlm_test.c — shared test helpers (tlm_test.h). */
#include "tlm_test.h"

#include <errno.h>
#include <jansson.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tlm_uffd.h"

bool tt_required(const char *kind)
{
	const char *req = getenv("TLM_REQUIRE");
	size_t n = strlen(kind);

	while (req && *req) {
		size_t len = strcspn(req, ",");

		if (len == n && strncmp(req, kind, n) == 0)
			return true;
		req += len + (req[len] == ',');
	}
	return false;
}

int tt_skip(const char *kind, const char *fmt, ...)
{
	bool req = tt_required(kind);
	va_list ap;

	fflush(stdout);
	fprintf(req ? stderr : stdout, req ? "FAIL: required %s unavailable: " : "SKIP: ",
		kind);
	va_start(ap, fmt);
	vfprintf(req ? stderr : stdout, fmt, ap);
	va_end(ap);
	fputc('\n', req ? stderr : stdout);
	return req ? 1 : 77;
}

const char *tt_uffd_missing(uint64_t need, char *why, size_t len)
{
	uint64_t features = 0;
	int rc = tlm_uffd_probe(&features, NULL);

	if (rc < 0)
		snprintf(why, len, "userfaultfd unavailable: %s", strerror(-rc));
	else if ((features & need) != need)
		snprintf(why, len, "userfaultfd lacks feature bits 0x%llx (has 0x%llx)",
			 (unsigned long long)(need & ~features), (unsigned long long)features);
	else
		return NULL;
	return why;
}

void tt_fill(void *buf, size_t len, uint64_t *state)
{
	uint8_t *p = buf;

	for (size_t i = 0; i + 8 <= len; i += 8) {
		uint64_t v = tt_rand(state);

		memcpy(p + i, &v, 8);
	}
}

uint64_t tt_now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

struct timespec tt_deadline(int ms)
{
	struct timespec ts;

	clock_gettime(CLOCK_REALTIME, &ts);
	ts.tv_sec += ms / 1000;
	ts.tv_nsec += (long)(ms % 1000) * 1000000L;
	if (ts.tv_nsec >= 1000000000L) {
		ts.tv_sec++;
		ts.tv_nsec -= 1000000000L;
	}
	return ts;
}

void tt_sleep_ms(int ms)
{
	struct timespec ts = { ms / 1000, (long)(ms % 1000) * 1000000L };

	while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
		;
}

bool tt_wait(bool (*cond)(void *arg), void *arg, int ms)
{
	uint64_t end = tt_now_ms() + (uint64_t)ms;

	for (;;) {
		if (cond(arg))
			return true;
		if (tt_now_ms() >= end)
			return false;
		tt_sleep_ms(1);
	}
}

/* Depth-first: the first member named key anywhere under v (v itself excluded); with
 * obj, the first such member whose value is an object. */
static json_t *json_find(json_t *v, const char *key, bool obj)
{
	const char *k;
	json_t *m, *hit;
	size_t i;

	if (json_is_object(v)) {
		if ((m = json_object_get(v, key)) && (!obj || json_is_object(m)))
			return m;
		json_object_foreach(v, k, m)
			if ((hit = json_find(m, key, obj)))
				return hit;
	} else if (json_is_array(v)) {
		json_array_foreach(v, i, m)
			if ((hit = json_find(m, key, obj)))
				return hit;
	}
	return NULL;
}

/* The member key inside the first object member named in; a new reference or NULL. */
static json_t *json_lookup(const char *json, const char *in, const char *key, int *rc)
{
	json_t *root = json_loads(json, JSON_DECODE_ANY, NULL), *scope, *v = NULL;

	*rc = -EINVAL;
	if (!root)
		return NULL;
	*rc = -ENOENT;
	scope = in ? json_find(root, in, true) : root;
	if (scope && (v = json_find(scope, key, false)))
		json_incref(v);
	json_decref(root);
	return v;
}

int tt_json_u64(const char *json, const char *in, const char *key, uint64_t *out)
{
	int rc;
	json_t *v = json_lookup(json, in, key, &rc);

	if (v && json_is_integer(v) && json_integer_value(v) >= 0) {
		*out = (uint64_t)json_integer_value(v);
		rc = 0;
	} else if (v && json_is_real(v) && json_real_value(v) >= 0) {
		*out = (uint64_t)json_real_value(v);
		rc = 0;
	}
	json_decref(v);
	return rc;
}

int tt_json_str(const char *json, const char *in, const char *key, char *out, size_t len)
{
	int rc;
	json_t *v = json_lookup(json, in, key, &rc);

	if (v && json_is_string(v)) {
		snprintf(out, len, "%s", json_string_value(v));
		rc = 0;
	}
	json_decref(v);
	return rc;
}
