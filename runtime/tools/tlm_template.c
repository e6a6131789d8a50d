/*
 * tlm-template — build, select, inspect and verify tlm templates.
 * Errors: one line "tlm-template: FILE: problem" on stderr, exit 1; usage errors exit 2.
 */
#include "log.h"
#include "template.h"
#include "template_int.h"
#include "util.h"

#include <errno.h>
#include <getopt.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#define PROG "tlm-template"

static const char usage_text[] =
	"Usage: tlm-template COMMAND [OPTIONS]\n"
	"  build --from RAMFILE [--index OUT] [--threads N]\n"
	"      index a template VM's RAM image (default index: RAMFILE.tlmi)\n"
	"  select --max-pages N --out PAGES [--min-count C] IMG...\n"
	"      choose the N page contents that occur most often across VM memory images\n"
	"      (zero pages excluded: they travel as a flag) and write them as a template\n"
	"  inspect PAGES [--index IDX] [--json]\n"
	"      page count, digest, zero, distinct and duplicate pages\n"
	"  verify PAGES [--index IDX]\n"
	"      rehash every page and compare with the index (exit 0 only if all match)\n"
	"Common options: -v/--verbose, -h/--help.\n";

static int usage_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static int usage_error(const char *fmt, ...)
{
	va_list ap;

	fprintf(stderr, PROG ": ");
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fprintf(stderr, " (try --help)\n");
	return 2;
}

static int fail(const char *msg)
{
	fprintf(stderr, PROG ": %s\n", msg);
	return 1;
}

struct opts {
	const char *from, *index, *out;
	uint64_t max_pages, min_count, threads;
	int json;
};

/* Parse options shared by all subcommands; positional args stay in argv[optind..]. */
static int parse_opts(int argc, char **argv, struct opts *o)
{
	static const struct option lo[] = {
		{ "from", required_argument, NULL, 'f' }, { "index", required_argument, NULL, 'i' },
		{ "out", required_argument, NULL, 'o' }, { "max-pages", required_argument, NULL, 'n' },
		{ "min-count", required_argument, NULL, 'c' },
		{ "threads", required_argument, NULL, 't' }, { "json", no_argument, NULL, 'j' },
		{ "verbose", no_argument, NULL, 'v' }, { "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	int c;

	memset(o, 0, sizeof(*o));
	o->min_count = 2;
	optind = 1;
	while ((c = getopt_long(argc, argv, "f:i:o:n:c:t:jvh", lo, NULL)) != -1) {
		switch (c) {
		case 'f': o->from = optarg; break;
		case 'i': o->index = optarg; break;
		case 'o': o->out = optarg; break;
		case 'j': o->json = 1; break;
		case 'v': tlm_log_set_level(TLM_LOG_DEBUG); break;
		case 'h': fputs(usage_text, stdout); exit(0);
		case 'n': case 'c': case 't': {
			uint64_t *dst = c == 'n' ? &o->max_pages : c == 'c' ? &o->min_count : &o->threads;

			if (tlm_parse_u64(optarg, dst) < 0)
				return usage_error("bad number '%s'", optarg);
			break;
		}
		default: return 2;
		}
	}
	return 0;
}

static void print_summary(const struct tlm_tmpl *t, const char *path, int json)
{
	struct tlm_tmpl_stats s;
	char hex[33];

	tlm_tmpl_stats(t, &s);
	tlm_digest_hex(tlm_tmpl_digest(t), hex);
	if (json) {
		printf("{\"pages_file\":\"%s\",\"pages\":%llu,\"bytes\":%llu,\"digest\":\"%s\","
		       "\"zero_pages\":%llu,\"distinct\":%llu,\"duplicate_pages\":%llu}\n", path,
		       (unsigned long long)s.pages, (unsigned long long)s.pages * TLM_PAGE_SIZE, hex,
		       (unsigned long long)s.zero_pages, (unsigned long long)s.distinct,
		       (unsigned long long)s.duplicate_pages);
		return;
	}
	printf("pages file:      %s\npages:           %llu (%.1f MiB)\ndigest:          %s\n"
	       "zero pages:      %llu\ndistinct:        %llu\nduplicate pages: %llu\n", path,
	       (unsigned long long)s.pages, (double)s.pages * TLM_PAGE_SIZE / 1048576.0, hex,
	       (unsigned long long)s.zero_pages, (unsigned long long)s.distinct,
	       (unsigned long long)s.duplicate_pages);
}

static int cmd_build(int argc, char **argv)
{
	struct opts o;
	struct tlm_tmpl *t;
	char err[512];
	uint64_t t0;
	int rc = parse_opts(argc, argv, &o);

	if (rc)
		return rc;
	if (!o.from)
		return usage_error("build: %s", "--from RAMFILE is required");
	t0 = tlm_now_ns();
	if (tlm_tmpl_build_index(o.from, o.index, (unsigned)o.threads, NULL, err, sizeof(err)) < 0 ||
	    tlm_tmpl_open(&t, o.from, o.index, 0, err, sizeof(err)) < 0)
		return fail(err);
	printf("built index in %.3f s\n", (double)(tlm_now_ns() - t0) / 1e9);
	print_summary(t, o.from, 0);
	tlm_tmpl_close(t);
	return 0;
}

static int cmd_inspect_verify(int argc, char **argv, int verify)
{
	struct opts o;
	struct tlm_tmpl *t;
	char err[512];
	int rc = parse_opts(argc, argv, &o);

	if (rc)
		return rc;
	if (optind + 1 != argc)
		return usage_error("%s: exactly one PAGES file expected", argv[0]);
	if (tlm_tmpl_open(&t, argv[optind], o.index, verify ? TLM_TMPL_VERIFY_PAGES : 0, err,
			  sizeof(err)) < 0)
		return fail(err);
	if (verify)
		printf("%s: %llu pages match the index\n", argv[optind],
		       (unsigned long long)tlm_tmpl_page_count(t));
	else
		print_summary(t, argv[optind], o.json);
	tlm_tmpl_close(t);
	return 0;
}

int main(int argc, char **argv)
{
	tlm_log_init(PROG, TLM_LOG_WARN);
	if (argc < 2)
		return usage_error("%s", "no command given");
	if (!strcmp(argv[1], "-h") || !strcmp(argv[1], "--help")) {
		fputs(usage_text, stdout);
		return 0;
	}
	if (!strcmp(argv[1], "build"))
		return cmd_build(argc - 1, argv + 1);
	if (!strcmp(argv[1], "inspect"))
		return cmd_inspect_verify(argc - 1, argv + 1, 0);
	if (!strcmp(argv[1], "verify"))
		return cmd_inspect_verify(argc - 1, argv + 1, 1);
	if (!strcmp(argv[1], "select")) {
		struct opts o;
		int rc = parse_opts(argc - 1, argv + 1, &o);

		if (rc)
			return rc;
		if (!o.out || !o.max_pages)
			return usage_error("select: %s", "--out PAGES and --max-pages N (> 0) are required");
		if (optind >= argc - 1)
			return usage_error("select: %s", "no images given");
		return tlm_template_select(o.max_pages, o.min_count, o.out, argv + 1 + optind,
					   argc - 1 - optind) < 0 ? 1 : 0;
	}
	return usage_error("unknown command '%s'", argv[1]);
}
