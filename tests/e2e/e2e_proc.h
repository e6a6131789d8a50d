/*
 * e2e_proc.h — child processes for the end-to-end tests: spawn with extra environment,
 * stdout on a pipe read line by line with a timeout, stderr to a log file, wait with a
 * timeout, and small helpers (temp dirs, files, binaries, log greps, stats polling).
 */
#ifndef TLM_E2E_PROC_H
#define TLM_E2E_PROC_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

struct e2e_proc {
	char name[32];
	pid_t pid;                /* 0 once reaped */
	int status;               /* wait status once reaped */
	int out;                  /* read end of the child's stdout, -1 at EOF */
	char buf[8192];
	size_t blen;
	char log[512];            /* stderr log file */
};

/* env: "K=V" entries to set, "K" entries to unset, NULL-terminated (may be NULL). */
int e2e_spawn(struct e2e_proc *p, const char *name, char *const argv[], char *const env[],
	      const char *logpath);
/* One line of stdout without the newline: 1 = line, 0 = EOF, -ETIMEDOUT. */
int e2e_read_line(struct e2e_proc *p, char *line, size_t len, int timeout_ms);
/* Read lines until one starts with prefix (copied to line); 1, 0 on EOF, -ETIMEDOUT. */
int e2e_expect(struct e2e_proc *p, const char *prefix, char *line, size_t len,
	       int timeout_ms);
/* Wait for exit: 0 and *status, or -ETIMEDOUT. */
int e2e_wait(struct e2e_proc *p, int timeout_ms, int *status);
/* Signal, then wait up to timeout (SIGKILL after it). Returns the exit code or -signal. */
int e2e_stop(struct e2e_proc *p, int sig, int timeout_ms);
void e2e_close(struct e2e_proc *p);
/* Run to completion: the exit code, or -1 (killed, timeout, cannot start). */
int e2e_run(char *const argv[], const char *logpath, int timeout_ms);
/* A control socket request (runtime/ctl.h): the reply (malloc'ed) or NULL. */
char *e2e_ctl(const char *ctl, const char *cmd);

/* Helpers. */
char *e2e_mkdtemp(const char *base);               /* malloc'ed path */
/* out = dir/name, name from fmt. */
void e2e_pathf(char *out, size_t len, const char *dir, const char *fmt, ...)
	__attribute__((format(printf, 4, 5)));
void e2e_rmrf(const char *dir);
int e2e_write_file(const char *path, const void *data, size_t len, int mode);
/* A 32-byte pre-shared key file (hex, 0600) derived from fill. */
int e2e_make_key(const char *path, uint8_t fill);
char *e2e_read_file(const char *path);              /* malloc'ed, NUL-terminated */
bool e2e_file_contains(const char *path, const char *needle);   /* case-insensitive */
/* Path of a built binary: $env_dir/rel, or $env_dir itself when rel is NULL/""
 * (env_dir names an env var set by tlm_test). */
int e2e_bin(char *out, size_t len, const char *env_dir, const char *rel);
/* 0 when userfaultfd with MINOR_SHMEM is there and we are root (why_root says what needs
 * root); else the exit code of tt_skip() (77, or 1 under TLM_REQUIRE). */
int e2e_skip_unless_uffd_root(const char *why_root);

#endif
