/*
 * dst_report.h — a region's statistics: the JSON object `stats` replies with (one per
 * region; keys are listed in dst_report.c) and the once-a-second progress line.
 */
#ifndef TLM_DST_REPORT_H
#define TLM_DST_REPORT_H

#include <stdint.h>

#include "dst_region.h"

struct tlm_json;

void dst_region_stats_json(const struct dst_region *r, struct tlm_json *j);
/* One line on stderr while the region migrates, at most once per ~second. */
void dst_region_progress(struct dst_region *r, uint64_t now_ns);

#endif /* TLM_DST_REPORT_H */
