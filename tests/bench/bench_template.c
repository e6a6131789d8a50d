/*
 * tlm-bench-template — template store figures on a generated image:
 * XXH3 page hashing (one core and all cores), hash-table probes and byte-verified content
 * lookups per second, index build and open time. A benchmark, not a test: it prints.
 */
#include "template.h"
#include "util.h"

#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

static uint64_t rng_state = 0x2545f4914f6cdd1dull;

static uint64_t rng(void)
{
	rng_state ^= rng_state << 13;
	rng_state ^= rng_state >> 7;
	rng_state ^= rng_state << 17;
	return rng_state;
}

/* 60 % random, 20 % copies of earlier pages, 10 % zero, 10 % a few repeated patterns. */
static void fill_image(uint8_t *img, uint64_t n)
{
	for (uint64_t i = 0; i < n; i++) {
		uint8_t *p = img + i * TLM_PAGE_SIZE;
		unsigned kind = (unsigned)(rng() % 10);

		if (kind < 6 || i == 0) {
			for (size_t j = 0; j < TLM_PAGE_SIZE; j += 8) {
				uint64_t v = rng();
				memcpy(p + j, &v, 8);
			}
		} else if (kind < 8) {
			memcpy(p, img + (rng() % i) * TLM_PAGE_SIZE, TLM_PAGE_SIZE);
		} else if (kind == 8) {
			memset(p, 0, TLM_PAGE_SIZE);
		} else {
			memset(p, (int)(rng() % 16) + 1, TLM_PAGE_SIZE);
		}
	}
}

static double secs(uint64_t t0)
{
	return (double)(tlm_now_ns() - t0) / 1e9;
}

int main(int argc, char **argv)
{
	uint64_t size = 1ull << 30, n, *hashes, *probe, sink = 0;
	const char *dir = "/dev/shm";
	char path[512], err[512];
	struct tlm_tmpl *t;
	uint8_t *img;
	FILE *f;
	int c;

	while ((c = getopt(argc, argv, "s:d:h")) != -1) {
		if (c == 's' && tlm_parse_size(optarg, &size) == 0 && size >= (1u << 20))
			continue;
		if (c == 'd') {
			dir = optarg;
			continue;
		}
		fprintf(c == 'h' ? stdout : stderr,
			"Usage: tlm-bench-template [-s SIZE (>= 1M, default 1G)] [-d DIR (default /dev/shm)]\n");
		return c == 'h' ? 0 : 2;
	}
	n = size / TLM_PAGE_SIZE;
	snprintf(path, sizeof(path), "%s/tlm-bench-%d.pages", dir, (int)getpid());
	f = fopen(path, "w+");
	if (!f || ftruncate(fileno(f), (off_t)(n * TLM_PAGE_SIZE)) < 0) {
		fprintf(stderr, "tlm-bench-template: %s: %s\n", path, strerror(errno));
		return 1;
	}
	img = mmap(NULL, n * TLM_PAGE_SIZE, PROT_READ | PROT_WRITE, MAP_SHARED, fileno(f), 0);
	hashes = malloc(n * sizeof(*hashes));
	probe = malloc(n * sizeof(*probe));
	if (img == MAP_FAILED || !hashes || !probe) {
		fprintf(stderr, "tlm-bench-template: out of memory for %llu pages\n", (unsigned long long)n);
		return 1;
	}
	fill_image(img, n);
	printf("image: %llu pages (%.0f MiB) in %s\n", (unsigned long long)n, (double)size / 1048576, path);

	uint64_t t0 = tlm_now_ns();
	for (uint64_t i = 0; i < n; i++)
		hashes[i] = tlm_page_hash(img + i * TLM_PAGE_SIZE);
	printf("hash_1core_gbps: %.2f GB/s\n", (double)size / secs(t0) / 1e9);
	t0 = tlm_now_ns();
	tlm_hash_pages(img, n, hashes, 0);
	printf("hash_allcores_gbps: %.2f GB/s\n", (double)size / secs(t0) / 1e9);

	t0 = tlm_now_ns();
	if (tlm_tmpl_build_index(path, NULL, 0, NULL, err, sizeof(err)) < 0) {
		fprintf(stderr, "tlm-bench-template: %s\n", err);
		return 1;
	}
	printf("build_index_s: %.3f s\n", secs(t0));
	t0 = tlm_now_ns();
	if (tlm_tmpl_open(&t, path, NULL, 0, err, sizeof(err)) < 0) {
		fprintf(stderr, "tlm-bench-template: %s\n", err);
		return 1;
	}
	printf("open_index_s: %.3f s (load, validate, build lookup table)\n", secs(t0));

	for (uint64_t i = 0; i < n; i++)
		probe[i] = hashes[rng() % n];
	t0 = tlm_now_ns();
	for (uint64_t i = 0; i < n; i++)
		sink += (uint64_t)tlm_tmpl_probe_hash(t, probe[i]);
	printf("probe_mlookups_per_s: %.1f M/s\n", (double)n / secs(t0) / 1e6);
	t0 = tlm_now_ns();
	for (uint64_t i = 0; i < n; i++) {
		uint64_t k = rng() % n;
		sink += (uint64_t)tlm_tmpl_lookup_hashed(t, img + k * TLM_PAGE_SIZE, hashes[k]);
	}
	printf("content_mlookups_per_s: %.2f M/s (hash given, bytes verified)\n",
	       (double)n / secs(t0) / 1e6);
	tlm_tmpl_close(t);
	munmap(img, n * TLM_PAGE_SIZE);
	fclose(f);
	unlink(path);
	snprintf(path + strlen(path), sizeof(path) - strlen(path), "%s", TLM_TMPL_INDEX_SUFFIX);
	unlink(path);
	free(hashes);
	free(probe);
	return sink == 42 ? 3 : 0;   /* keep the lookups from being optimised away */
}
