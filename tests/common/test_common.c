/* Unit tests for runtime/ helpers: histogram, JSON writer, parsing, atomic writes,
 * control socket round trip. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "tlm_test.h"
#include "tlm_io.h"
#include "ctl.h"
#include "json.h"
#include "stats.h"
#include "util.h"

static void test_hist_quantiles(void **state)
{
	struct tlm_hist h;

	tlm_hist_init(&h);
	assert_int_equal(tlm_hist_quantile(&h, 0.5), 0);
	for (uint64_t i = 1; i <= 1000; i++)
		tlm_hist_add(&h, i * 1000);       /* 1 us .. 1 ms */
	assert_int_equal(h.count, 1000);
	assert_int_equal(h.max_ns, 1000000);
	assert_int_equal(h.min_ns, 1000);
	/* Log-linear buckets: within 1/32 above the true value, never below it. */
	uint64_t p50 = tlm_hist_quantile(&h, 0.5), p99 = tlm_hist_quantile(&h, 0.99);
	assert_true(p50 >= 500000 && p50 <= 515625);
	assert_true(p99 >= 990000 && p99 <= 1000000);
	assert_int_equal(tlm_hist_quantile(&h, 1.0), 1000000);
}

/* Every value below 2^40 ns lands in a bucket whose upper edge is at or above it, by at
 * most 1/TLM_HIST_SUB (a far larger second value keeps max from clamping the answer). */
static void test_hist_bucket_edges(void **state)
{
	uint64_t seed = 88172645463325252ull;

	for (unsigned i = 0; i < 20000; i++) {
		struct tlm_hist h;
		uint64_t v, up;

		seed ^= seed << 13, seed ^= seed >> 7, seed ^= seed << 17;
		v = i < 80 ? (1ull << (i / 2)) - (i & 1) : seed >> (24 + seed % 40);
		tlm_hist_init(&h);
		tlm_hist_add(&h, v);
		tlm_hist_add(&h, UINT64_MAX / 2);
		up = tlm_hist_quantile(&h, 0.4);
		assert_true(up >= v);
		assert_true(up - v <= v / TLM_HIST_SUB);
	}
}

static void test_hist_small_and_huge(void **state)
{
	struct tlm_hist h, m;

	tlm_hist_init(&h);
	tlm_hist_init(&m);
	tlm_hist_add(&h, 0);
	tlm_hist_add(&h, 3);
	tlm_hist_add(&m, UINT64_MAX / 2);   /* clamps into the last bucket */
	tlm_hist_merge(&h, &m);
	assert_int_equal(h.count, 3);
	assert_int_equal(tlm_hist_quantile(&h, 0.1), 0);
	assert_int_equal(tlm_hist_quantile(&h, 0.5), 3);
	assert_int_equal(tlm_hist_quantile(&h, 1.0), UINT64_MAX / 2);
}

static void test_json_writer(void **state)
{
	struct tlm_sbuf b;
	struct tlm_json j;

	tlm_sbuf_init(&b);
	tlm_json_init(&j, &b);
	tlm_json_obj_begin(&j, NULL);
	tlm_json_str(&j, "id", "vm\"1\n");
	tlm_json_u64(&j, "n", 42);
	tlm_json_arr_begin(&j, "a");
	tlm_json_u64(&j, NULL, 1);
	tlm_json_bool(&j, NULL, true);
	tlm_json_arr_end(&j);
	tlm_json_obj_begin(&j, "o");
	tlm_json_obj_end(&j);
	tlm_json_obj_end(&j);
	assert_string_equal(b.p, "{\"id\":\"vm\\\"1\\u000a\",\"n\":42,\"a\":[1,true],\"o\":{}}");
	tlm_sbuf_fini(&b);
}

static void test_parse(void **state)
{
	uint64_t v;

	assert_int_equal(tlm_parse_size("4k", &v), 0);
	assert_int_equal(v, 4096);
	assert_int_equal(tlm_parse_size("256M", &v), 0);
	assert_int_equal(v, 256ull << 20);
	assert_int_equal(tlm_parse_size("0x10", &v), 0);
	assert_int_equal(v, 16);
	assert_int_equal(tlm_parse_size("", &v), -EINVAL);
	assert_int_equal(tlm_parse_size("12q", &v), -EINVAL);
	assert_int_equal(tlm_parse_size("-1", &v), -EINVAL);
	assert_int_equal(tlm_parse_size("99999999999T", &v), -ERANGE);
	assert_int_equal(tlm_parse_u64("18446744073709551616", &v), -ERANGE);
}

static void test_atomic_write(void **state)
{
	char dir[] = "/tmp/tlm-test-XXXXXX", path[256], tmp[300], buf[8] = { 0 };
	int fd;

	assert_non_null(mkdtemp(dir));
	snprintf(path, sizeof(path), "%s/f", dir);
	fd = tlm_atomic_write_begin(path, tmp, sizeof(tmp));
	assert_true(fd >= 0);
	assert_int_equal(tlm_write_full(fd, "abc", 3), 0);
	assert_int_equal(access(path, F_OK), -1);      /* nothing visible before commit */
	assert_int_equal(tlm_atomic_write_commit(fd, tmp, path), 0);
	fd = open(path, O_RDONLY);
	assert_int_equal(tlm_read_full(fd, buf, 3), 0);
	assert_int_equal(tlm_read_full(fd, buf, 1), -ECONNRESET);   /* EOF before len */
	close(fd);
	assert_string_equal(buf, "abc");
	fd = tlm_atomic_write_begin(path, tmp, sizeof(tmp));
	tlm_atomic_write_abort(fd, tmp);
	assert_int_equal(access(tmp, F_OK), -1);
	unlink(path);
	rmdir(dir);
}

static int echo_handler(void *ctx, char *line, struct tlm_sbuf *reply)
{
	(*(int *)ctx)++;
	tlm_sbuf_printf(reply, "ok %s", line);
	return 0;
}

static void test_ctl_roundtrip(void **state)
{
	char dir[] = "/tmp/tlm-ctl-XXXXXX", path[256], err[256];
	struct tlm_sbuf reply;
	struct stat st;
	int lfd, calls = 0;
	pid_t pid;

	assert_non_null(mkdtemp(dir));
	snprintf(path, sizeof(path), "%s/sub/ctl.sock", dir);
	lfd = tlm_ctl_listen(path, err, sizeof(err));
	assert_true(lfd >= 0);
	assert_int_equal(stat(path, &st), 0);
	assert_int_equal(st.st_mode & 0777, 0600);
	pid = fork();
	if (pid == 0) {      /* client in a child: the server side must not block us */
		tlm_sbuf_init(&reply);
		int rc = tlm_ctl_request(path, "stats vm1", &reply, 2000);
		_exit(rc == 0 && reply.p && strcmp(reply.p, "ok stats vm1\n") == 0 ? 0 : 1);
	}
	for (int i = 0; i < 200 && calls == 0; i++) {
		tlm_ctl_serve_one(lfd, echo_handler, &calls);
		usleep(10000);
	}
	int status;
	waitpid(pid, &status, 0);
	assert_int_equal(calls, 1);
	assert_true(WIFEXITED(status) && WEXITSTATUS(status) == 0);
	close(lfd);
	tlm_sbuf_init(&reply);
	assert_true(tlm_ctl_request(path, "x", &reply, 500) < 0);   /* nobody listening */
	tlm_sbuf_fini(&reply);
	unlink(path);
	snprintf(path, sizeof(path), "%s/sub", dir);
	rmdir(path);
	rmdir(dir);
}

/* A socket directory others may write to is refused (they could replace the socket). */
static void test_ctl_dir_refused(void **state)
{
	char dir[] = "/tmp/tlm-ctl-XXXXXX", path[256], err[256] = "";

	assert_non_null(mkdtemp(dir));
	assert_int_equal(chmod(dir, 0777), 0);
	snprintf(path, sizeof(path), "%s/ctl.sock", dir);
	assert_int_equal(tlm_ctl_listen(path, err, sizeof(err)), -EPERM);
	print_message("%s\n", err);
	assert_non_null(strstr(err, "writable by group or others (mode 0777"));
	assert_int_equal(chmod(dir, 0700), 0);
	int lfd = tlm_ctl_listen(path, err, sizeof(err));
	assert_true(lfd >= 0);
	close(lfd);
	unlink(path);
	rmdir(dir);
}

/* SO_PEERCRED: a client of another uid gets no answer, even with access to the socket. */
static void test_ctl_other_uid(void **state)
{
	char dir[] = "/tmp/tlm-ctl-XXXXXX", path[256], err[256];
	int lfd, calls = 0, status;
	pid_t pid;

	if (geteuid() != 0)     /* switching to another uid needs root */
		TT_SKIP_CASE("root", "test_ctl_other_uid: needs root to switch uid\n");
	assert_non_null(mkdtemp(dir));
	snprintf(path, sizeof(path), "%s/ctl.sock", dir);
	lfd = tlm_ctl_listen(path, err, sizeof(err));
	assert_true(lfd >= 0);
	/* Let the other uid reach the socket: only the peer check stands in its way. */
	assert_int_equal(chmod(dir, 0711), 0);
	assert_int_equal(chmod(path, 0666), 0);
	pid = fork();
	if (pid == 0) {
		struct tlm_sbuf reply;

		if (setgid(65534) || setuid(65534))
			_exit(2);
		signal(SIGPIPE, SIG_IGN);       /* the daemon may close before we write */
		tlm_sbuf_init(&reply);
		tlm_ctl_request(path, "stats", &reply, 3000);
		_exit(reply.len == 0 ? 0 : 1);
	}
	for (int i = 0; i < 300 && waitpid(pid, &status, WNOHANG) == 0; i++) {
		tlm_ctl_serve_one(lfd, echo_handler, &calls);
		usleep(10000);
	}
	assert_int_equal(calls, 0);
	assert_true(WIFEXITED(status) && WEXITSTATUS(status) == 0);
	close(lfd);
	unlink(path);
	rmdir(dir);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_hist_quantiles),
		cmocka_unit_test(test_hist_bucket_edges),
		cmocka_unit_test(test_hist_small_and_huge),
		cmocka_unit_test(test_json_writer),
		cmocka_unit_test(test_parse),
		cmocka_unit_test(test_atomic_write),
		cmocka_unit_test(test_ctl_roundtrip),
		cmocka_unit_test(test_ctl_dir_refused),
		cmocka_unit_test(test_ctl_other_uid),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
