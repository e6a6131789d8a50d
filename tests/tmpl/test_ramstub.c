/* The RAM stub (runtime/template/ramstub.h): written only over an empty file, recognised,
 * and what QEMU's size check and tlm-page-server's file source rely on. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "ramstub.h"

#define RAM_SIZE (1u << 20)

/* A RAM file as QEMU leaves it before mapping: created, sized, no block written. */
static int new_ram(char *path, size_t len)
{
	int fd;

	snprintf(path, len, "/dev/shm/tlm-ramstub.XXXXXX");
	fd = mkstemp(path);
	assert_true(fd >= 0);
	assert_int_equal(ftruncate(fd, RAM_SIZE), 0);
	return fd;
}

static void test_stub_of_empty_file(void **state)
{
	char path[64], err[256], text[TLM_RAMSTUB_SIZE + 1] = { 0 };
	struct stat st;
	pid_t pid = 0;
	int fd = new_ram(path, sizeof(path));

	(void)state;
	assert_int_equal(tlm_ramstub_check(fd, &pid), 0);      /* holes read as zeros */
	assert_int_equal(tlm_ramstub_write(fd, 4242, "/t/ram", err, sizeof(err)), 0);
	assert_int_equal(fstat(fd, &st), 0);
	assert_int_equal(st.st_size, TLM_RAMSTUB_SIZE);        /* smaller than any RAM */
	assert_int_equal(tlm_ramstub_check(fd, &pid), 1);
	assert_int_equal(pid, 4242);
	assert_int_equal(pread(fd, text, TLM_RAMSTUB_SIZE, 0), TLM_RAMSTUB_SIZE);
	assert_non_null(strstr(text, "template /t/ram\n"));
	assert_non_null(strstr(text, "without x-ignore-shared"));
	/* Written once more over itself (a second VM start on the same path): it has data. */
	assert_int_equal(tlm_ramstub_write(fd, 1, NULL, err, sizeof(err)), -EEXIST);
	close(fd);
	unlink(path);
}

static void test_file_with_data_is_kept(void **state)
{
	char path[64], err[256], page[4096], back[4096];
	struct stat st;
	pid_t pid = 0;
	int fd = new_ram(path, sizeof(path));

	(void)state;
	memset(page, 0xab, sizeof(page));
	assert_int_equal(pwrite(fd, page, sizeof(page), 8192), (ssize_t)sizeof(page));
	assert_int_equal(tlm_ramstub_write(fd, 7, NULL, err, sizeof(err)), -EEXIST);
	assert_int_equal(fstat(fd, &st), 0);
	assert_int_equal(st.st_size, RAM_SIZE);
	assert_int_equal(pread(fd, back, sizeof(back), 8192), (ssize_t)sizeof(back));
	assert_memory_equal(back, page, sizeof(page));
	assert_int_equal(tlm_ramstub_check(fd, &pid), 0);
	close(fd);
	unlink(path);
}

static void test_lookalikes_are_not_stubs(void **state)
{
	static const char *const heads[] = {
		"tlm-ram-stub 1\n",                    /* no pid line */
		"tlm-ram-stub 1\npid x\n",
		"tlm-ram-stub 1\npid 0\n",
		"tlm-ram-stub 2\npid 5\n",
		"tlm-ram-stub",
	};
	char path[64];
	pid_t pid = 0;

	(void)state;
	for (size_t i = 0; i < sizeof(heads) / sizeof(heads[0]); i++) {
		int fd = new_ram(path, sizeof(path));

		assert_int_equal(pwrite(fd, heads[i], strlen(heads[i]), 0),
				 (ssize_t)strlen(heads[i]));
		assert_int_equal(tlm_ramstub_check(fd, &pid), 0);
		close(fd);
		unlink(path);
	}
	assert_int_equal(tlm_ramstub_check(-1, &pid), -EBADF);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_stub_of_empty_file),
		cmocka_unit_test(test_file_with_data_is_kept),
		cmocka_unit_test(test_lookalikes_are_not_stubs),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
