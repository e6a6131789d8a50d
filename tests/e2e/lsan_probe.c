/* lsan_probe.c — leaks 4 KiB on purpose. leaks_e2e.sh runs it first: if LeakSanitizer
 * does not report this leak here, it could not report one in the daemons either. */
#include <stdlib.h>
#include <string.h>

static void *volatile lost;

int main(void)
{
	lost = malloc(4096);
	memset(lost, 1, 4096);
	lost = NULL;
	return 0;
}
