#include "e2e_proc.h"

#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "ctl.h"
#include "tlm_test.h"
#include "json.h"
#include "tlm_uffd.h"

static void e2e_child(char *const argv[], char *const env[], int out, const char *logpath)
{
	int lfd = open(logpath, O_WRONLY | O_CREAT | O_APPEND, 0644);
	sigset_t none;

	sigemptyset(&none);
	sigprocmask(SIG_SETMASK, &none, NULL);
	if (lfd < 0 || dup2(out, 1) < 0 || dup2(lfd, 2) < 0)
		_exit(126);
	for (int i = 0; env && env[i]; i++) {
		if (strchr(env[i], '='))
			putenv(env[i]);
		else
			unsetenv(env[i]);
	}
	execv(argv[0], argv);
	fprintf(stderr, "exec %s: %s\n", argv[0], strerror(errno));
	_exit(127);
}

int e2e_spawn(struct e2e_proc *p, const char *name, char *const argv[], char *const env[],
	      const char *logpath)
{
	int fds[2];

	memset(p, 0, sizeof(*p));
	p->out = -1;
	snprintf(p->name, sizeof(p->name), "%s", name);
	snprintf(p->log, sizeof(p->log), "%s", logpath);
	if (pipe2(fds, O_CLOEXEC) < 0)
		return -errno;
	p->pid = fork();
	if (p->pid < 0) {
		close(fds[0]);
		close(fds[1]);
		return -errno;
	}
	if (p->pid == 0)
		e2e_child(argv, env, fds[1], logpath);
	close(fds[1]);
	p->out = fds[0];
	return 0;
}

static int e2e_take_line(struct e2e_proc *p, char *line, size_t len)
{
	char *nl = memchr(p->buf, '\n', p->blen);
	size_t n;

	if (!nl)
		return 0;
	n = (size_t)(nl - p->buf);
	snprintf(line, len, "%.*s", (int)n, p->buf);
	memmove(p->buf, nl + 1, p->blen - n - 1);
	p->blen -= n + 1;
	return 1;
}

int e2e_read_line(struct e2e_proc *p, char *line, size_t len, int timeout_ms)
{
	uint64_t end = tt_now_ms() + (uint64_t)timeout_ms;

	for (;;) {
		struct pollfd pfd = { .fd = p->out, .events = POLLIN };
		uint64_t now = tt_now_ms();
		ssize_t r;

		if (e2e_take_line(p, line, len))
			return 1;
		if (p->out < 0)
			return 0;
		int rc = poll(&pfd, 1, now >= end ? 0 : (int)(end - now));

		if (rc == 0)
			return -ETIMEDOUT;
		if (rc < 0)
			continue;
		if (p->blen == sizeof(p->buf))
			p->blen = 0;              /* a line longer than the buffer: drop it */
		r = read(p->out, p->buf + p->blen, sizeof(p->buf) - p->blen);
		if (r > 0) {
			p->blen += (size_t)r;
		} else if (r == 0 || errno != EINTR) {
			close(p->out);
			p->out = -1;
		}
	}
}

int e2e_expect(struct e2e_proc *p, const char *prefix, char *line, size_t len,
	       int timeout_ms)
{
	uint64_t end = tt_now_ms() + (uint64_t)timeout_ms;
	int rc;

	do {
		uint64_t now = tt_now_ms();

		rc = e2e_read_line(p, line, len, now >= end ? 0 : (int)(end - now));
		if (rc == 1 && strncmp(line, prefix, strlen(prefix)) == 0)
			return 1;
	} while (rc == 1);
	return rc;
}

int e2e_wait(struct e2e_proc *p, int timeout_ms, int *status)
{
	uint64_t end = tt_now_ms() + (uint64_t)timeout_ms;

	while (p->pid > 0) {
		pid_t r = waitpid(p->pid, &p->status, WNOHANG);

		if (r == p->pid) {
			p->pid = 0;
			break;
		}
		if (r < 0 && errno != EINTR)
			return -errno;
		if (tt_now_ms() >= end)
			return -ETIMEDOUT;
		usleep(5000);
	}
	if (status)
		*status = p->status;
	return 0;
}

int e2e_stop(struct e2e_proc *p, int sig, int timeout_ms)
{
	int st;

	if (p->pid > 0) {
		kill(p->pid, SIGCONT);
		kill(p->pid, sig);
		if (e2e_wait(p, timeout_ms, &st) < 0) {
			kill(p->pid, SIGKILL);
			e2e_wait(p, 5000, &st);
		}
	}
	st = p->status;
	return WIFEXITED(st) ? WEXITSTATUS(st) : WIFSIGNALED(st) ? -WTERMSIG(st) : -1;
}

void e2e_close(struct e2e_proc *p)
{
	if (p->pid > 0)
		e2e_stop(p, SIGKILL, 5000);
	if (p->out >= 0)
		close(p->out);
	p->out = -1;
}

int e2e_run(char *const argv[], const char *logpath, int timeout_ms)
{
	struct e2e_proc p;
	int st;

	if (e2e_spawn(&p, "cmd", argv, NULL, logpath) < 0 || e2e_wait(&p, timeout_ms, &st) < 0) {
		e2e_close(&p);
		return -1;
	}
	e2e_close(&p);
	return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

char *e2e_ctl(const char *ctl, const char *cmd)
{
	struct tlm_sbuf b;
	int rc;

	tlm_sbuf_init(&b);
	rc = tlm_ctl_request(ctl, cmd, &b, 5000);
	if (rc < 0 || !b.p) {
		tlm_sbuf_fini(&b);
		return NULL;
	}
	return b.p;           /* the caller frees */
}

int e2e_skip_unless_uffd_root(const char *why_root)
{
	char why[160];

	if (tt_uffd_missing(UFFD_FEATURE_MINOR_SHMEM, why, sizeof(why)))
		return tt_skip("uffd", "%s", why);
	if (geteuid() != 0)
		return tt_skip("root", "needs root (%s)", why_root);
	return 0;
}

void e2e_pathf(char *out, size_t len, const char *dir, const char *fmt, ...)
{
	int n = snprintf(out, len, "%s/", dir);
	va_list ap;

	if (n < 0 || (size_t)n >= len)
		return;
	va_start(ap, fmt);
	vsnprintf(out + n, len - (size_t)n, fmt, ap);
	va_end(ap);
}

char *e2e_mkdtemp(const char *base)
{
	char *d = malloc(strlen(base) + 32);

	if (!d)
		return NULL;
	sprintf(d, "%s/tlm-e2e.XXXXXX", base);
	if (!mkdtemp(d)) {
		free(d);
		return NULL;
	}
	return d;
}

static int e2e_rm_one(const char *path, const struct stat *st, int flag, struct FTW *f)
{
	return remove(path);
}

void e2e_rmrf(const char *dir)
{
	if (dir && !getenv("TLM_KEEP_TMP"))
		nftw(dir, e2e_rm_one, 16, FTW_DEPTH | FTW_PHYS);
}

int e2e_write_file(const char *path, const void *data, size_t len, int mode)
{
	int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, mode);
	ssize_t w;

	if (fd < 0)
		return -errno;
	w = write(fd, data, len);
	close(fd);
	if (w != (ssize_t)len)
		return -EIO;
	return chmod(path, (mode_t)mode) < 0 ? -errno : 0;
}

int e2e_make_key(const char *path, uint8_t fill)
{
	char hex[65];

	for (int i = 0; i < 32; i++)
		snprintf(hex + 2 * i, 3, "%02x", (uint8_t)(fill + i * 37));
	return e2e_write_file(path, hex, 64, 0600);
}

char *e2e_read_file(const char *path)
{
	FILE *f = fopen(path, "re");
	char *s = NULL;
	size_t cap = 0, len = 0, r;

	if (!f)
		return NULL;
	do {
		if (len + 4096 + 1 > cap) {
			char *n = realloc(s, cap = cap * 2 + 8192);

			if (!n)
				break;
			s = n;
		}
		r = fread(s + len, 1, 4096, f);
		len += r;
	} while (r > 0);
	fclose(f);
	if (s)
		s[len] = '\0';
	return s;
}

bool e2e_file_contains(const char *path, const char *needle)
{
	char *s = e2e_read_file(path);
	bool found = s && strcasestr(s, needle);

	free(s);
	return found;
}

int e2e_bin(char *out, size_t len, const char *env_dir, const char *rel)
{
	const char *dir = getenv(env_dir);

	if (!dir) {
		fprintf(stderr, "%s is not set (run through ctest)\n", env_dir);
		return -ENOENT;
	}
	if (rel && *rel)
		snprintf(out, len, "%s/%s", dir, rel);
	else
		snprintf(out, len, "%s", dir);
	if (access(out, X_OK | R_OK) < 0) {
		fprintf(stderr, "%s: %s\n", out, strerror(errno));
		return -ENOENT;
	}
	return 0;
}

