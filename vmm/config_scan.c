/*
 * vmm/config_scan.c - the second pass over a config file's text: keys seen
 * twice in one object, NUL bytes in strings (config.c parses the tree).
 */
#include <ctype.h>
#include <errno.h>
#include <json-c/json.h>
#include <stdio.h>
#include <string.h>

#include "config_internal.h"
#include "vmm.h"

/* ---- keys seen twice, NUL bytes ----
 *
 * Two things json-c does not show in the tree it parses: of two equal keys in
 * one object it keeps the last (its hash table replaces the value, and
 * json_object_object_length counts the key once), and a string with \u0000
 * becomes a C string that ends at the NUL (a key is cut there; a value reads
 * shorter through json_object_get_string). Neither a json-c 0.16 tokener flag
 * nor json_c_visit, which walks the tree, can see them, so once json-c has
 * accepted the text a second pass reads the text itself: it finds each
 * string token with json-c's syntax ('...' or "..." with backslash escapes;
 * comments between tokens), has a json-c tokener decode it (so "name" and
 * "\u006eame" are one key to both passes), and rejects a decoded NUL in any
 * key or value and a key already seen in the same object, naming the path.
 * The keys seen in an object are kept in a json-c object used as a hash set:
 * linear in the size of the text, however many keys a hostile file has. The
 * nesting is at most the tokener's depth (JSON_TOKENER_DEFAULT_DEPTH): json-c
 * parsed the same text.
 */
struct json_scan {
	struct config_ctx *c;
	const char *text;
	size_t pos, len;
	struct json_tokener *tok; /* decodes one string token */
};

#define JSON_PATH_MAX 128

/* Skips white space and comments. */
static void scan_skip_space(struct json_scan *s)
{
	while (s->pos < s->len) {
		const char *p = s->text + s->pos;
		if (isspace((unsigned char)*p)) {
			s->pos++;
		} else if (p[0] == '/' && p[1] == '*') {
			const char *end = strstr(p + 2, "*/");
			s->pos = end ? (size_t)(end + 2 - s->text) : s->len;
		} else if (p[0] == '/' && p[1] == '/') {
			const char *end = strchr(p, '\n');
			s->pos = end ? (size_t)(end - s->text) : s->len;
		} else {
			return;
		}
	}
}

/* Decodes the string token at s->pos (its quote) into *str, a new reference,
 * and moves past it. Returns 0 or the out-of-memory error. */
static int scan_string(struct json_scan *s, struct json_object **str)
{
	const char quote = s->text[s->pos];
	size_t end = s->pos + 1;

	while (end < s->len && s->text[end] != quote)
		end += s->text[end] == '\\' ? 2 : 1;
	end = end < s->len ? end + 1 : s->len;
	json_tokener_reset(s->tok);
	*str = json_tokener_parse_ex(s->tok, s->text + s->pos, (int)(end - s->pos));
	s->pos = end;
	if (!*str)
		return vmm_error_set(s->c->err, ENOMEM, "out of memory");
	return 0;
}

static const char *path_name(const char *path)
{
	return *path ? path : "top level";
}

static int scan_value(struct json_scan *s, const char *path);

/* The object at s->pos ('{') at @path: each key once, none with a NUL. */
static int scan_object(struct json_scan *s, const char *path)
{
	struct json_object *seen = json_object_new_object(), *key;
	char child[JSON_PATH_MAX];
	int ret = 0;

	if (!seen)
		return vmm_error_set(s->c->err, ENOMEM, "out of memory");
	s->pos++;
	for (scan_skip_space(s); !ret && s->pos < s->len && s->text[s->pos] != '}'; scan_skip_space(s)) {
		if (s->text[s->pos] == ',') {
			s->pos++;
			continue;
		}
		if ((ret = scan_string(s, &key)))
			break;
		const char *k = json_object_get_string(key);
		if (strlen(k) != (size_t)json_object_get_string_len(key))
			ret = config_error(s->c, path_name(path), "key '%s' contains a NUL byte (\\u0000)", k);
		else if (json_object_object_get_ex(seen, k, NULL))
			ret = config_error(s->c, path_name(path), "duplicate key '%s'", k);
		else if (json_object_object_add(seen, k, NULL))
			ret = vmm_error_set(s->c->err, ENOMEM, "out of memory");
		snprintf(child, sizeof(child), "%s%s%s", path, *path ? "." : "", k);
		json_object_put(key);
		scan_skip_space(s);
		s->pos += s->pos < s->len && s->text[s->pos] == ':';
		if (!ret)
			ret = scan_value(s, child);
	}
	s->pos++;
	json_object_put(seen);
	return ret;
}

/* The value at s->pos at @path (after white space): objects and arrays are
 * scanned, a string must hold no NUL, other values are skipped. */
static int scan_value(struct json_scan *s, const char *path)
{
	struct json_object *str;
	char child[JSON_PATH_MAX];
	size_t index = 0;
	int ret = 0;

	scan_skip_space(s);
	if (s->pos >= s->len)
		return 0;
	switch (s->text[s->pos]) {
	case '{':
		return scan_object(s, path);
	case '[':
		s->pos++;
		for (scan_skip_space(s); !ret && s->pos < s->len && s->text[s->pos] != ']'; scan_skip_space(s)) {
			if (s->text[s->pos] == ',') {
				s->pos++;
				index++;
				continue;
			}
			snprintf(child, sizeof(child), "%s[%zu]", path, index);
			ret = scan_value(s, child);
		}
		s->pos++;
		return ret;
	case '"':
	case '\'':
		if ((ret = scan_string(s, &str)))
			return ret;
		if (strlen(json_object_get_string(str)) != (size_t)json_object_get_string_len(str))
			ret = config_error(s->c, path_name(path), "contains a NUL byte (\\u0000)");
		json_object_put(str);
		return ret;
	default: /* a number, true, false, null: up to the next separator */
		do
			s->pos++;
		while (s->pos < s->len && !strchr(",]}/", s->text[s->pos]) && !isspace((unsigned char)s->text[s->pos]));
		return 0;
	}
}

int config_check_keys_and_strings(struct config_ctx *c, const char *text, size_t len)
{
	struct json_scan s = { .c = c, .text = text, .len = len, .tok = json_tokener_new() };
	int ret;

	if (!s.tok)
		return vmm_error_set(c->err, ENOMEM, "out of memory");
	ret = scan_value(&s, "");
	json_tokener_free(s.tok);
	return ret;
}
