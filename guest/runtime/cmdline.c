/*
 * Boot information for images: the command line's key=value pairs and the
 * attached segments by name.
 */
#include "guest.h"

int cmdline_get(const char *cmdline, const char *key, char *buf, size_t size)
{
	size_t klen = strlen(key);

	for (const char *p = cmdline; *p; p++) {
		if ((p != cmdline && p[-1] != ' ') || memcmp(p, key, klen) != 0 ||
		    (p[klen] != '=' && p[klen] != ' ' && p[klen] != '\0'))
			continue;
		const char *v = p[klen] == '=' ? p + klen + 1 : p + klen;
		size_t n = 0;
		while (v[n] && v[n] != ' ' && n + 1 < size) {
			buf[n] = v[n];
			n++;
		}
		if (size)
			buf[n] = '\0';
		return 1;
	}
	return 0;
}

uint64_t cmdline_u64(const char *cmdline, const char *key, uint64_t def)
{
	char buf[32];
	uint64_t v = 0;
	const char *p = buf;
	unsigned int base = 10;

	if (!cmdline_get(cmdline, key, buf, sizeof(buf)) || !buf[0])
		return def;
	if (buf[0] == '0' && buf[1] == 'x') {
		base = 16;
		p += 2;
	}
	for (; *p; p++) {
		unsigned int d;
		if (*p >= '0' && *p <= '9')
			d = (unsigned int)(*p - '0');
		else if (base == 16 && *p >= 'a' && *p <= 'f')
			d = (unsigned int)(*p - 'a' + 10);
		else
			return def;
		v = v * base + d;
	}
	return v;
}

const struct umbra_segment_info *boot_segment(const struct umbra_boot_info *boot, const char *name)
{
	for (uint32_t i = 0; i < boot->nr_segments && i < UMBRA_MAX_SEGMENTS; i++)
		if (strcmp(boot->segments[i].name, name) == 0)
			return &boot->segments[i];
	return NULL;
}

const struct umbra_segment_info *cmdline_segment(const struct umbra_boot_info *boot, const char *prog,
						 const char *key)
{
	char name[UMBRA_SEGMENT_NAME_MAX];
	const struct umbra_segment_info *seg;

	if (!cmdline_get(boot->cmdline, key, name, sizeof(name))) {
		printf("%s: no %s= on the command line '%s'\n", prog, key, boot->cmdline);
		return NULL;
	}
	if (!(seg = boot_segment(boot, name)))
		printf("%s: no segment '%s' attached (%u attached)\n", prog, name, boot->nr_segments);
	return seg;
}
