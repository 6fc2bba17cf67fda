/*
 * vmm/config_internal.h - what config.c (the plan from a JSON config) and
 * config_scan.c (the text pass for duplicate keys and NUL bytes) share.
 * Private to vmm/.
 */
#ifndef UMBRA_VMM_CONFIG_INTERNAL_H
#define UMBRA_VMM_CONFIG_INTERNAL_H

#include <stddef.h>

#include "vmm.h"

/* One config file being read: its name and directory, for messages and
 * relative paths, and where the first error goes. */
struct config_ctx {
	const char *what; /* the file, for messages */
	const char *base_dir;
	struct vmm_error *err;
};

/* Formats "config 'FILE': KEY: MESSAGE" into c->err; returns -EINVAL. */
int config_error(struct config_ctx *c, const char *key, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

/*
 * Rejects a key given twice in one object and a NUL byte in any key or
 * string of @text (@len bytes), which json-c has already parsed: json-c's
 * tree shows neither.  Returns 0, or -EINVAL / -ENOMEM with c->err set.
 * Linear in @len; never reads past @len.
 */
int config_check_keys_and_strings(struct config_ctx *c, const char *text, size_t len);

#endif /* UMBRA_VMM_CONFIG_INTERNAL_H */
