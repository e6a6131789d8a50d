/* tlm-template CLI: each bad input gives exit != 0 and one line naming the file and the
 * problem; the happy paths build, inspect, verify and select. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <sys/wait.h>

#include "tmpl_fixture.h"

static char bin[512];

/* Run "tlm-template ARGS", capture stdout+stderr into out; returns the exit status. */
static int run(char *out, size_t cap, const char *fmt, ...)
{
	char args[1024], cmd[2048];
	va_list ap;
	size_t n;
	FILE *p;
	int st;

	va_start(ap, fmt);
	vsnprintf(args, sizeof(args), fmt, ap);
	va_end(ap);
	snprintf(cmd, sizeof(cmd), "'%s' %s 2>&1", bin, args);
	p = popen(cmd, "r");
	assert_non_null(p);
	n = fread(out, 1, cap - 1, p);
	out[n] = '\0';
	st = pclose(p);
	return WIFEXITED(st) ? WEXITSTATUS(st) : 255;
}

static void expect_error(int rc, const char *out, const char *file, const char *problem)
{
	if (rc == 0 || !strstr(out, "tlm-template: ") || (file && !strstr(out, file)) ||
	    !strstr(out, problem))
		fail_msg("rc %d, output '%s' (expected '%s' about %s)", rc, out, problem,
			 file ? file : "-");
}

static int setup(void **state)
{
	struct fx *f = calloc(1, sizeof(*f));

	if (!f || fx_setup(f) < 0)
		return -1;
	fx_write_pages(f->pages, (const uint32_t[6]){ 1, 2, 0, 1, 3, 0 }, 6);
	*state = f;
	return 0;
}

static int teardown(void **state)
{
	fx_teardown(*state);
	free(*state);
	return 0;
}

static void test_happy_path(void **state)
{
	struct fx *f = *state;
	char out[4096];

	assert_int_equal(run(out, sizeof(out), "build --from %s", f->pages), 0);
	assert_non_null(strstr(out, "digest:"));
	assert_int_equal(run(out, sizeof(out), "inspect %s --json", f->pages), 0);
	assert_non_null(strstr(out, "\"pages\":6,"));
	assert_non_null(strstr(out, "\"zero_pages\":2,"));
	assert_non_null(strstr(out, "\"duplicate_pages\":2}"));
	assert_int_equal(run(out, sizeof(out), "verify %s", f->pages), 0);
	assert_non_null(strstr(out, "6 pages match"));
}

static void test_bad_inputs(void **state)
{
	struct fx *f = *state;
	char out[4096], path[256];
	uint8_t b = 1;

	snprintf(path, sizeof(path), "%s/none", f->dir);
	expect_error(run(out, sizeof(out), "build --from %s", path), out, path, "No such file");
	snprintf(path, sizeof(path), "%s/empty", f->dir);
	fclose(fopen(path, "w"));
	expect_error(run(out, sizeof(out), "build --from %s", path), out, path, "empty file");
	snprintf(path, sizeof(path), "%s/odd", f->dir);
	FILE *o = fopen(path, "w");
	fputs("not pages", o);
	fclose(o);
	expect_error(run(out, sizeof(out), "inspect %s", path), out, path, "not a multiple of 4096");
	/* no index yet */
	expect_error(run(out, sizeof(out), "inspect %s", f->pages), out, f->index, "No such file");
	assert_int_equal(run(out, sizeof(out), "build --from %s", f->pages), 0);
	fx_patch(f->index, 50, &b, 1);
	expect_error(run(out, sizeof(out), "inspect %s", f->pages), out, f->index,
		     "corrupt page hash array");
	expect_error(run(out, sizeof(out), "verify %s", f->pages), out, f->index,
		     "corrupt page hash array");
	assert_int_equal(run(out, sizeof(out), "build --from %s", f->pages), 0);
	fx_patch(f->pages, 4 * 4096 + 7, &b, 1);
	expect_error(run(out, sizeof(out), "verify %s", f->pages), out, f->pages,
		     "page 4 does not match");
	assert_int_equal(run(out, sizeof(out), "frobnicate"), 2);
	assert_int_equal(run(out, sizeof(out), "build --bogus"), 2);
	assert_int_equal(run(out, sizeof(out), "build"), 2);
	assert_int_equal(run(out, sizeof(out), "select --out x %s", f->pages), 2);
}

static void test_select(void **state)
{
	struct fx *f = *state;
	char out[4096], imgs[3][256], sel[256];

	/* Content 1 occurs 3x per image, 2 twice, 3..5 once each, plus zero pages. */
	for (int i = 0; i < 3; i++) {
		snprintf(imgs[i], sizeof(imgs[i]), "%s/img%d", f->dir, i);
		fx_write_pages(imgs[i], (const uint32_t[8]){ 1, 1, 1, 2, 2, 0, 0, 3 + (uint32_t)i }, 8);
	}
	snprintf(sel, sizeof(sel), "%s/sel", f->dir);
	assert_int_equal(run(out, sizeof(out), "select --max-pages 2 --out %s %s %s %s", sel,
			     imgs[0], imgs[1], imgs[2]), 0);
	assert_non_null(strstr(out, "selected 2 pages"));
	assert_non_null(strstr(out, "cover 15 of 24"));
	assert_int_equal(run(out, sizeof(out), "inspect %s --json", sel), 0);
	assert_non_null(strstr(out, "\"pages\":2,"));
	assert_non_null(strstr(out, "\"zero_pages\":0,"));
	assert_int_equal(run(out, sizeof(out), "verify %s", sel), 0);
	expect_error(run(out, sizeof(out), "select --max-pages 2 --min-count 10 --out %s %s", sel,
			 imgs[0]), out, NULL, "no page content occurs 10 times");
}

int main(void)
{
	const char *dir = getenv("TLM_BIN_DIR");
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_happy_path, setup, teardown),
		cmocka_unit_test_setup_teardown(test_bad_inputs, setup, teardown),
		cmocka_unit_test_setup_teardown(test_select, setup, teardown),
	};

	snprintf(bin, sizeof(bin), "%s/tlm-template", dir ? dir : ".");
	if (access(bin, X_OK) != 0) {
		fprintf(stderr, "FAIL: %s not found (a missing program is a failure; "
			"run through ctest, which sets TLM_BIN_DIR)\n", bin);
		return 1;
	}
	return cmocka_run_group_tests(tests, NULL, NULL);
}
