/*
 * glue_env.c — libtlm-glue.so's configuration (the environment, read once) and its log:
 * used by glue.c (mmap interposition) and glue_daemon.c (the daemon link).
 */
#include "glue_int.h"

#include <errno.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static struct glue_cfg cfg;
static pthread_once_t cfg_once = PTHREAD_ONCE_INIT;

static const char *glue_env(const char *name)
{
	const char *v = getenv(name);

	return v && *v ? v : NULL;
}

static void glue_config_load(void)
{
	static const char *const levels[] = { "error", "warn", "info", "debug" };
	const char *arm = glue_env("TLM_ARM");
	const char *lvl = glue_env("TLM_LOG_LEVEL");
	const char *track = glue_env("TLM_TRACK");

	cfg.level = GLUE_INFO;
	for (unsigned i = 0; lvl && i < 4; i++)
		if (strcmp(lvl, levels[i]) == 0)
			cfg.level = (enum glue_level)i;
	cfg.ram_path = glue_env("TLM_RAM_PATH");
	cfg.template_path = glue_env("TLM_TEMPLATE");
	cfg.sock_path = glue_env("TLM_SOCK");
	cfg.vm_id = glue_env("TLM_VM_ID");
	cfg.source = glue_env("TLM_SOURCE");
	cfg.region_file = glue_env("TLM_REGION_FILE");
	cfg.track = track && strcmp(track, "1") == 0;
	if (track && !cfg.track)
		glue_log(GLUE_WARN, "TLM_TRACK=%s is not 1; dirty tracking stays off", track);
	cfg.arm = GLUE_ARM_DEFERRED;
	if (arm && strcmp(arm, "map") == 0)
		cfg.arm = GLUE_ARM_MAP;
	else if (arm && strcmp(arm, "deferred") != 0)
		glue_log(GLUE_WARN, "TLM_ARM=%s is neither map nor deferred; using deferred", arm);
}

const struct glue_cfg *glue_config(void)
{
	pthread_once(&cfg_once, glue_config_load);
	return &cfg;
}

const char *glue_vm(void)
{
	const char *id = glue_config()->vm_id;

	return id ? id : "-";
}

void glue_log(enum glue_level level, const char *fmt, ...)
{
	static const char *const names[] = { "error", "warn", "info", "debug" };
	int saved = errno;
	char line[640];
	va_list ap;
	int n;

	/* Before the configuration is read cfg.level is 0: errors only. */
	if (level > cfg.level)
		goto out;
	n = snprintf(line, sizeof(line), "tlm-glue: [%d] %s: ", (int)getpid(), names[level]);
	va_start(ap, fmt);
	vsnprintf(line + n, sizeof(line) - (size_t)n - 1, fmt, ap);
	va_end(ap);
	n = (int)strlen(line);
	line[n++] = '\n';
	/* One write(2) per line: no stdio (it may allocate) and no interleaving. */
	if (write(STDERR_FILENO, line, (size_t)n) < 0)
		goto out;
out:
	errno = saved;
}
