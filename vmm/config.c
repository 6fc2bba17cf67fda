/*
 * The plan of a run: VMs and shared segments, from the command line or from a
 * JSON config file (docs/config.md). The file is untrusted input: every key is
 * checked, unknown keys, a key given twice in one object and a NUL byte in a
 * string are errors, and each error names the file, the key path and what the
 * value must be.
 */
#include <ctype.h>
#include <errno.h>
#include <inttypes.h>
#include <json-c/json.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "config_internal.h"
#include "vmm.h"

#define CONFIG_SIZE_MAX (1u << 20)

void plan_free(struct plan *plan)
{
	for (unsigned int i = 0; i < plan->nr_segments; i++)
		free(plan->segments[i].file);
	for (unsigned int i = 0; i < plan->nr_vms; i++)
		free(plan->vms[i].image);
	free(plan->vms);
	free(plan->groups);
	free(plan->pager.swap);
	memset(plan, 0, sizeof(*plan));
}

int plan_apply_pager_options(struct plan *plan, const struct vmm_pager_options *po, struct vmm_error *err)
{
	if (po->mem_limit)
		plan->pager.mem_limit = po->mem_limit;
	if (po->swap_size)
		plan->pager.swap_size = po->swap_size;
	if (po->policy >= 0)
		plan->pager.policy = po->policy;
	if (po->swap) {
		char *swap = strdup(po->swap);

		if (!swap)
			return vmm_error_set(err, ENOMEM, "out of memory");
		free(plan->pager.swap);
		plan->pager.swap = swap;
	}
	return 0;
}

bool plan_uses_pager(const struct plan *plan, unsigned int evict_ms)
{
	return plan->pager.mem_limit || plan->pager.swap_size || plan->pager.swap || evict_ms;
}

int plan_from_options(const struct vmm_options *opts, struct plan *plan, struct vmm_error *err)
{
	memset(plan, 0, sizeof(*plan));
	plan->vms = calloc(opts->vms, sizeof(*plan->vms));
	if (!plan->vms)
		return vmm_error_set(err, ENOMEM, "out of memory");
	for (unsigned int i = 0; i < opts->vms; i++) {
		struct plan_vm *v = &plan->vms[i];

		snprintf(v->name, sizeof(v->name), "vm%u", i);
		v->image = strdup(opts->image);
		if (!v->image) {
			plan_free(plan);
			return vmm_error_set(err, ENOMEM, "out of memory");
		}
		plan->nr_vms++;
		v->mem = opts->mem;
		v->vcpus = opts->vcpus;
		snprintf(v->cmdline, sizeof(v->cmdline), "%s", opts->cmdline);
		snprintf(v->group, sizeof(v->group), "%s", opts->group ? opts->group : "");
		v->table_quota = opts->table_quota;
		v->clones = opts->clones;
	}
	plan_set_default_quotas(plan);
	return 0;
}

/* ---- config file ---- */

/* Characters of a VM name in a config: room is left for the index (at most
 * 3 digits: VMM_MAX_VMS) of a VM with a count, and the NUL. */
#define CONFIG_VM_NAME_MAX (VMM_NAME_MAX - 5)
_Static_assert(VMM_MAX_VMS <= 1000, "a VM's index has at most 3 digits");

int config_error(struct config_ctx *c, const char *key, const char *fmt, ...)
{
	char msg[VMM_ERROR_MAX];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	return vmm_error_set(c->err, EINVAL, "config '%s': %s: %s", c->what, key, msg);
}

/* Rejects keys of obj that are not in allowed (NULL-terminated). */
static int check_keys(struct config_ctx *c, const char *path, struct json_object *obj,
		      const char *const *allowed)
{
	json_object_object_foreach(obj, key, val) {
		(void)val;
		bool known = false;
		for (const char *const *a = allowed; *a; a++)
			known |= strcmp(key, *a) == 0;
		if (!known) {
			char full[128];
			snprintf(full, sizeof(full), "%s%s%s", path, *path ? "." : "", key);
			return config_error(c, full, "unknown key");
		}
	}
	return 0;
}

static const char *type_name(struct json_object *v)
{
	return json_type_to_name(json_object_get_type(v));
}

static int get_string(struct config_ctx *c, const char *key, struct json_object *v, const char **out)
{
	if (!json_object_is_type(v, json_type_string))
		return config_error(c, key, "expected a string, got %s", type_name(v));
	*out = json_object_get_string(v);
	return 0;
}

/* A size: a string such as "64M" or a non-negative integer of bytes. */
static int get_size(struct config_ctx *c, const char *key, struct json_object *v, uint64_t *out)
{
	if (json_object_is_type(v, json_type_int)) {
		int64_t n = json_object_get_int64(v);
		if (n < 0)
			return config_error(c, key, "%" PRId64 " is negative", n);
		*out = (uint64_t)n;
		return 0;
	}
	if (json_object_is_type(v, json_type_string)) {
		if (vmm_parse_size(json_object_get_string(v), out))
			return config_error(c, key, "'%s' is not a size (use e.g. \"64M\" or \"1G\")",
					    json_object_get_string(v));
		return 0;
	}
	return config_error(c, key, "expected a size (\"64M\" or a number of bytes), got %s", type_name(v));
}

/* An address: a string in hex ("0x2000000000") or decimal, or an integer. */
static int get_address(struct config_ctx *c, const char *key, struct json_object *v, uint64_t *out)
{
	if (json_object_is_type(v, json_type_int) && json_object_get_int64(v) >= 0) {
		*out = (uint64_t)json_object_get_int64(v);
		return 0;
	}
	if (json_object_is_type(v, json_type_string)) {
		const char *s = json_object_get_string(v);
		char *end;
		errno = 0;
		unsigned long long a = strtoull(s, &end, 0);
		if (*s && *s != '-' && !*end && !errno) {
			*out = a;
			return 0;
		}
		return config_error(c, key, "'%s' is not an address", s);
	}
	return config_error(c, key, "expected an address (\"0x...\"), got %s", type_name(v));
}

static int get_uint(struct config_ctx *c, const char *key, struct json_object *v, unsigned long max,
		    unsigned long *out)
{
	if (!json_object_is_type(v, json_type_int))
		return config_error(c, key, "expected a number, got %s", type_name(v));
	int64_t n = json_object_get_int64(v);
	if (n < 1 || (uint64_t)n > max)
		return config_error(c, key, "%" PRId64 " is outside 1..%lu", n, max);
	*out = (unsigned long)n;
	return 0;
}

static bool is_valid_name(const char *name, size_t max)
{
	size_t n = strlen(name);

	if (n == 0 || n >= max)
		return false;
	for (const char *p = name; *p; p++)
		if (!((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9') ||
		      *p == '-' || *p == '_'))
			return false;
	return true;
}

static char *resolve_path(struct config_ctx *c, const char *path)
{
	char *full;

	if (path[0] == '/' || !c->base_dir || !*c->base_dir)
		return strdup(path);
	if (asprintf(&full, "%s/%s", c->base_dir, path) < 0)
		return NULL;
	return full;
}

/*
 * The start of every named entry (a segment, a VM) at @path: @obj must be an
 * object with only @keys, and a "name" of 1..@max_len letters, digits, '-'
 * or '_', returned in *@name (owned by @obj).  Returns 0 or the error.
 */
static int parse_object_name(struct config_ctx *c, const char *path, struct json_object *obj,
			     const char *const *keys, size_t max_len, const char **name)
{
	struct json_object *v;
	char key[64];
	int ret;

	if (!json_object_is_type(obj, json_type_object))
		return config_error(c, path, "expected an object, got %s", type_name(obj));
	if ((ret = check_keys(c, path, obj, keys)))
		return ret;
	snprintf(key, sizeof(key), "%s.name", path);
	if (!json_object_object_get_ex(obj, "name", &v))
		return config_error(c, key, "missing");
	if ((ret = get_string(c, key, v, name)))
		return ret;
	if (!is_valid_name(*name, max_len + 1))
		return config_error(c, key, "'%s' must be 1 to %zu letters, digits, '-' or '_'", *name, max_len);
	return 0;
}

static int parse_segment(struct config_ctx *c, unsigned int i, struct json_object *js, struct plan *plan)
{
	static const char *const keys[] = { "name", "size", "gpa", "writable", "file", "notifier_mode", NULL };
	struct plan_segment *seg = &plan->segments[i];
	struct json_object *v;
	char key[64], path[32];
	const char *s = NULL;
	int ret;

	snprintf(path, sizeof(path), "segments[%u]", i);
	if ((ret = parse_object_name(c, path, js, keys, sizeof(seg->name) - 1, &s)))
		return ret;
	snprintf(key, sizeof(key), "%s.name", path);
	for (unsigned int j = 0; j < i; j++)
		if (strcmp(plan->segments[j].name, s) == 0)
			return config_error(c, key, "'%s' is already the name of segments[%u]", s, j);
	snprintf(seg->name, sizeof(seg->name), "%s", s);

	snprintf(key, sizeof(key), "%s.size", path);
	if (!json_object_object_get_ex(js, "size", &v))
		return config_error(c, key, "missing");
	if ((ret = get_size(c, key, v, &seg->size)))
		return ret;
	if (seg->size == 0 || seg->size % VMM_SEGMENT_ALIGN || seg->size > VMM_SEGMENTS_TOTAL_MAX)
		return config_error(c, key, "must be a multiple of 2M from 2M to 64G");

	snprintf(key, sizeof(key), "%s.gpa", path);
	if (!json_object_object_get_ex(js, "gpa", &v))
		return config_error(c, key, "missing");
	if ((ret = get_address(c, key, v, &seg->gpa)))
		return ret;
	if (seg->gpa % VMM_SEGMENT_ALIGN || seg->gpa < VMM_SEGMENT_GPA_MIN || seg->gpa > VMM_SEGMENT_GPA_END ||
	    seg->size > VMM_SEGMENT_GPA_END - seg->gpa)
		return config_error(c, key, "%#" PRIx64 "+%#" PRIx64 " must be 2M-aligned and lie within %#llx..%#llx",
				    seg->gpa, seg->size, VMM_SEGMENT_GPA_MIN, VMM_SEGMENT_GPA_END);
	uint64_t total = seg->size;
	for (unsigned int j = 0; j < i; j++) {
		const struct plan_segment *o = &plan->segments[j];
		if (seg->gpa < o->gpa + o->size && o->gpa < seg->gpa + seg->size)
			return config_error(c, key, "overlaps segment '%s' (%#" PRIx64 "+%#" PRIx64 ")", o->name,
					    o->gpa, o->size);
		total += o->size;
	}
	if (total > VMM_SEGMENTS_TOTAL_MAX)
		return config_error(c, key, "segments total more than 64G");

	seg->notifier_mode = -1;
	if (json_object_object_get_ex(js, "notifier_mode", &v)) {
		enum notifier_mode mode;

		snprintf(key, sizeof(key), "%s.notifier_mode", path);
		if ((ret = get_string(c, key, v, &s)))
			return ret;
		if (vmm_parse_notifier_mode(s, &mode))
			return config_error(c, key, "'%s' must be range or page", s);
		seg->notifier_mode = (int)mode;
	}
	seg->writable = true;
	if (json_object_object_get_ex(js, "writable", &v)) {
		snprintf(key, sizeof(key), "%s.writable", path);
		if (!json_object_is_type(v, json_type_boolean))
			return config_error(c, key, "expected true or false, got %s", type_name(v));
		seg->writable = json_object_get_boolean(v);
	}
	if (json_object_object_get_ex(js, "file", &v)) {
		snprintf(key, sizeof(key), "%s.file", path);
		if ((ret = get_string(c, key, v, &s)))
			return ret;
		seg->file = resolve_path(c, s);
		if (!seg->file)
			return vmm_error_set(c->err, ENOMEM, "out of memory");
	}
	return 0;
}

/* vms[i].segments: names of declared segments, each attached once. */
static int parse_vm_segments(struct config_ctx *c, const char *path, struct json_object *v,
			     const struct plan *plan, struct plan_vm *proto)
{
	char key[64];
	const char *s = NULL;
	int ret;

	snprintf(key, sizeof(key), "%s.segments", path);
	if (!json_object_is_type(v, json_type_array))
		return config_error(c, key, "expected an array of segment names, got %s", type_name(v));
	for (size_t k = 0; k < json_object_array_length(v); k++) {
		struct json_object *name = json_object_array_get_idx(v, k);
		snprintf(key, sizeof(key), "%s.segments[%zu]", path, k);
		if ((ret = get_string(c, key, name, &s)))
			return ret;
		unsigned int found = plan->nr_segments;
		for (unsigned int j = 0; j < plan->nr_segments; j++)
			if (strcmp(plan->segments[j].name, s) == 0)
				found = j;
		if (found == plan->nr_segments)
			return config_error(c, key, "no segment is called '%s'", s);
		for (unsigned int j = 0; j < proto->nr_segments; j++)
			if (proto->segments[j] == found)
				return config_error(c, key, "'%s' is attached twice", s);
		proto->segments[proto->nr_segments++] = found;
	}
	return 0;
}

/* vms[i].group, vms[i].table_quota (docs/security.md, docs/config.md) and
 * vms[i].clones (docs/abi.md, "Clones"). */
static int parse_vm_sharing(struct config_ctx *c, const char *path, struct json_object *jv, struct plan_vm *proto)
{
	struct json_object *v;
	unsigned long n = 0;
	const char *s = NULL;
	char key[64];
	int ret;

	if (json_object_object_get_ex(jv, "group", &v)) {
		snprintf(key, sizeof(key), "%s.group", path);
		if ((ret = get_string(c, key, v, &s)))
			return ret;
		if (vmm_check_group(key, s, NULL))
			return config_error(c, key, "must be 1 to %u printable ASCII characters, no space",
					    VMM_GROUP_NAME_MAX - 1);
		snprintf(proto->group, sizeof(proto->group), "%s", s);
	}
	if (json_object_object_get_ex(jv, "table_quota", &v)) {
		snprintf(key, sizeof(key), "%s.table_quota", path);
		if ((ret = get_uint(c, key, v, VMM_TABLE_QUOTA_MAX, &n)))
			return ret;
		if (vmm_check_table_quota(key, n, NULL))
			return config_error(c, key, "%lu pages: must be %u to %" PRIu64, n, VMM_TABLE_QUOTA_MIN,
					    VMM_TABLE_QUOTA_MAX);
		proto->table_quota = n;
	}
	if (json_object_object_get_ex(jv, "clones", &v)) {
		snprintf(key, sizeof(key), "%s.clones", path);
		if ((ret = get_uint(c, key, v, UMBRA_CLONE_MAX, &n)))
			return ret;
		if (n == 0)
			return config_error(c, key, "must be 1 to %u clones (leave it out for none)", UMBRA_CLONE_MAX);
		proto->clones = (unsigned int)n;
	}
	return 0;
}

/* Adds count VMs like proto to the plan, numbered NAME0, NAME1, ... when
 * count > 1; names must be unique. */
static int add_vms(struct config_ctx *c, const char *path, const struct plan_vm *proto, unsigned long count,
		   const char *image, struct plan *plan)
{
	if (plan->nr_vms + count > VMM_MAX_VMS)
		return config_error(c, path, "more than %u VMs in all", VMM_MAX_VMS);
	for (unsigned long k = 0; k < count; k++) {
		struct plan_vm *vm = &plan->vms[plan->nr_vms];
		*vm = *proto;
		if (count > 1) {
			/* name has at most CONFIG_VM_NAME_MAX characters, k at most 3 digits */
			char numbered[VMM_NAME_MAX + 24];
			int len = snprintf(numbered, sizeof(numbered), "%s%lu", proto->name, k);
			memcpy(vm->name, numbered, (size_t)len + 1 <= sizeof(vm->name) ? (size_t)len + 1 : 0);
		}
		for (unsigned int j = 0; j < plan->nr_vms; j++)
			if (strcmp(plan->vms[j].name, vm->name) == 0)
				return config_error(c, path, "VM name '%s' is used twice", vm->name);
		vm->image = resolve_path(c, image);
		if (!vm->image)
			return vmm_error_set(c->err, ENOMEM, "out of memory");
		plan->nr_vms++;
	}
	return 0;
}

static int parse_vm(struct config_ctx *c, unsigned int i, struct json_object *jv, struct plan *plan)
{
	static const char *const keys[] = { "name", "image", "count", "mem", "vcpus", "cmdline",
					    "segments", "group", "table_quota", "clones", NULL };
	struct plan_vm proto = { .mem = VMM_MEM_DEFAULT, .vcpus = 1 };
	unsigned long count = 1, n = 0;
	struct json_object *v;
	char key[64], path[32];
	const char *s = NULL, *image = NULL;
	int ret;

	snprintf(path, sizeof(path), "vms[%u]", i);
	if ((ret = parse_object_name(c, path, jv, keys, CONFIG_VM_NAME_MAX, &s)))
		return ret;
	snprintf(key, sizeof(key), "%s.name", path);
	snprintf(proto.name, sizeof(proto.name), "%s", s);

	snprintf(key, sizeof(key), "%s.image", path);
	if (!json_object_object_get_ex(jv, "image", &v))
		return config_error(c, key, "missing");
	if ((ret = get_string(c, key, v, &image)))
		return ret;
	if (json_object_object_get_ex(jv, "count", &v)) {
		snprintf(key, sizeof(key), "%s.count", path);
		if ((ret = get_uint(c, key, v, VMM_MAX_VMS, &count)))
			return ret;
	}
	if (json_object_object_get_ex(jv, "vcpus", &v)) {
		snprintf(key, sizeof(key), "%s.vcpus", path);
		if ((ret = get_uint(c, key, v, UMBRA_MAX_VCPUS, &n)))
			return ret;
		proto.vcpus = (unsigned int)n;
	}
	if (json_object_object_get_ex(jv, "mem", &v)) {
		snprintf(key, sizeof(key), "%s.mem", path);
		if ((ret = get_size(c, key, v, &proto.mem)))
			return ret;
	}
	snprintf(key, sizeof(key), "%s.mem", path);
	if (vmm_check_mem(key, proto.mem, proto.vcpus, NULL))
		return config_error(c, key, "%" PRIu64 " bytes: must be a multiple of 2M from 4M to 64G, "
				    "leaving 2M beside %u vCPU stacks of 64K", proto.mem, proto.vcpus);
	if (json_object_object_get_ex(jv, "cmdline", &v)) {
		snprintf(key, sizeof(key), "%s.cmdline", path);
		if ((ret = get_string(c, key, v, &s)))
			return ret;
		if (strlen(s) >= UMBRA_CMDLINE_MAX)
			return config_error(c, key, "%zu bytes, at most %u allowed", strlen(s), UMBRA_CMDLINE_MAX - 1);
		snprintf(proto.cmdline, sizeof(proto.cmdline), "%s", s);
	}
	if (json_object_object_get_ex(jv, "segments", &v) && (ret = parse_vm_segments(c, path, v, plan, &proto)))
		return ret;
	if ((ret = parse_vm_sharing(c, path, jv, &proto)))
		return ret;
	return add_vms(c, path, &proto, count, image, plan);
}

/* The top-level pager keys: "mem_limit", "swap", "swap_size",
 * "reclaim_policy" (docs/config.md). */
static int parse_pager(struct config_ctx *c, struct json_object *root, struct plan *plan)
{
	struct json_object *v;
	const char *text = NULL;
	int ret;

	if (json_object_object_get_ex(root, "mem_limit", &v)) {
		if ((ret = get_size(c, "mem_limit", v, &plan->pager.mem_limit)))
			return ret;
		if (vmm_check_mem_limit("mem_limit", plan->pager.mem_limit, NULL))
			return config_error(c, "mem_limit", "%" PRIu64 " bytes: must be at least 4M",
					    plan->pager.mem_limit);
	}
	if (json_object_object_get_ex(root, "swap_size", &v)) {
		if ((ret = get_size(c, "swap_size", v, &plan->pager.swap_size)))
			return ret;
		if (vmm_check_swap_size("swap_size", plan->pager.swap_size, NULL))
			return config_error(c, "swap_size", "%" PRIu64 " bytes: must be from 1M to 16T",
					    plan->pager.swap_size);
	}
	if (json_object_object_get_ex(root, "swap", &v)) {
		if ((ret = get_string(c, "swap", v, &text)))
			return ret;
		if (!*text)
			return config_error(c, "swap", "an empty file name");
		plan->pager.swap = strdup(text);
		if (!plan->pager.swap)
			return vmm_error_set(c->err, ENOMEM, "out of memory");
	}
	if (json_object_object_get_ex(root, "reclaim_policy", &v)) {
		if ((ret = get_string(c, "reclaim_policy", v, &text)))
			return ret;
		if (vmm_parse_policy(text, &plan->pager.policy))
			return config_error(c, "reclaim_policy", "'%s': must be \"clock\" or \"round-robin\"", text);
	}
	return 0;
}

int plan_from_config_text(const char *text, const char *base_dir, const char *what, struct plan *plan,
			  struct vmm_error *err)
{
	static const char *const keys[] = { "segments", "vms", "mem_limit", "swap", "swap_size",
					    "reclaim_policy", NULL };
	struct config_ctx c = { what, base_dir, err };
	struct json_tokener *tok;
	struct json_object *root, *v;
	int ret;

	memset(plan, 0, sizeof(*plan));
	tok = json_tokener_new();
	if (!tok)
		return vmm_error_set(err, ENOMEM, "out of memory");
	size_t len = strlen(text);
	root = json_tokener_parse_ex(tok, text, (int)len);
	enum json_tokener_error jerr = json_tokener_get_error(tok);
	if (!root || jerr != json_tokener_success || json_tokener_get_parse_end(tok) < len) {
		size_t end = json_tokener_get_parse_end(tok);
		unsigned int line = 1;
		for (size_t k = 0; k < end && k < len; k++)
			line += text[k] == '\n';
		if (jerr == json_tokener_success)
			jerr = root ? json_tokener_error_parse_unexpected : json_tokener_continue;
		json_tokener_free(tok);
		json_object_put(root);
		return vmm_error_set(err, EINVAL, "config '%s': line %u: not valid JSON (%s)", what, line,
				     jerr == json_tokener_continue ? "unexpected end of file" :
				     json_tokener_error_desc(jerr));
	}
	json_tokener_free(tok);
	if ((ret = config_check_keys_and_strings(&c, text, len)))
		goto put_root;

	plan->vms = calloc(VMM_MAX_VMS, sizeof(*plan->vms));
	if (!plan->vms) {
		ret = vmm_error_set(err, ENOMEM, "out of memory");
		goto put_root;
	}
	if (!json_object_is_type(root, json_type_object)) {
		ret = config_error(&c, "top level", "expected an object with \"vms\" (and \"segments\")");
		goto free_plan;
	}
	if ((ret = check_keys(&c, "", root, keys)))
		goto free_plan;
	if (json_object_object_get_ex(root, "segments", &v)) {
		if (!json_object_is_type(v, json_type_array)) {
			ret = config_error(&c, "segments", "expected an array, got %s", type_name(v));
			goto free_plan;
		}
		if (json_object_array_length(v) > UMBRA_MAX_SEGMENTS) {
			ret = config_error(&c, "segments", "%zu segments, at most %u allowed",
					   json_object_array_length(v), UMBRA_MAX_SEGMENTS);
			goto free_plan;
		}
		for (size_t i = 0; i < json_object_array_length(v); i++) {
			plan->nr_segments = (unsigned int)i + 1; /* so that plan_free sees it */
			if ((ret = parse_segment(&c, (unsigned int)i, json_object_array_get_idx(v, i), plan)))
				goto free_plan;
		}
	}
	if ((ret = parse_pager(&c, root, plan)))
		goto free_plan;
	if (!json_object_object_get_ex(root, "vms", &v) || !json_object_is_type(v, json_type_array) ||
	    json_object_array_length(v) == 0) {
		ret = config_error(&c, "vms", "expected a non-empty array of VMs");
		goto free_plan;
	}
	for (size_t i = 0; i < json_object_array_length(v); i++)
		if ((ret = parse_vm(&c, (unsigned int)i, json_object_array_get_idx(v, i), plan)))
			goto free_plan;
	plan_set_default_quotas(plan);
	json_object_put(root);
	return 0;

free_plan:
	plan_free(plan);
put_root:
	json_object_put(root);
	return ret;
}

int plan_from_config(const char *path, struct plan *plan, struct vmm_error *err)
{
	FILE *f = fopen(path, "re");
	char *text, *dir, *slash;
	size_t len;
	int ret;

	if (!f)
		return vmm_error_set(err, errno, "cannot open config '%s': %s", path, strerror(errno));
	text = malloc(CONFIG_SIZE_MAX + 1);
	if (!text) {
		fclose(f);
		return vmm_error_set(err, ENOMEM, "out of memory");
	}
	len = fread(text, 1, CONFIG_SIZE_MAX + 1, f);
	bool failed = ferror(f);
	fclose(f);
	if (failed || len > CONFIG_SIZE_MAX) {
		free(text);
		return vmm_error_set(err, EINVAL, "config '%s': %s", path,
				     failed ? "read error" : "larger than 1 MiB");
	}
	text[len] = '\0';
	if (strlen(text) != len) {
		free(text);
		return vmm_error_set(err, EINVAL, "config '%s': contains a NUL byte", path);
	}
	dir = strdup(path);
	if (!dir) {
		free(text);
		return vmm_error_set(err, ENOMEM, "out of memory");
	}
	slash = strrchr(dir, '/');
	if (slash)
		*slash = '\0';
	ret = plan_from_config_text(text, slash ? dir : "", path, plan, err);
	free(dir);
	free(text);
	return ret;
}
