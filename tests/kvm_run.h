/*
 * What the KVM suites (test_kvm.c, test_kvm_paging.c, test_kvm_hostile.c) share: running the
 * umbra program on guest images and reading what it printed and wrote.
 *
 * UMBRA_BIN and UMBRA_GUEST_DIR override where the program and the images are
 * (the sandbox puts them under /umbra).
 */
#ifndef UMBRA_TESTS_KVM_RUN_H
#define UMBRA_TESTS_KVM_RUN_H

#include <check.h>
#include <json-c/json.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <sys/types.h>
#include <time.h>

#define RUN_TIMEOUT_S 60
#define OUTPUT_MAX (256 * 1024)

struct run_result {
	int status; /* exit status, or 128 + signal */
	int timed_out; /* killed after the time limit */
	double seconds; /* wall-clock time of the run */
	char out[OUTPUT_MAX];
	char err[OUTPUT_MAX];
};

/* The path of guest image @name (without ".elf"), and the images' directory. */
void guest_image(const char *name, char *path, size_t size);
void guest_image_dir(char *dir, size_t size);

/* Runs umbra with args (NULL-terminated, without argv[0]), collecting stdout,
 * stderr and the exit status; kills it after RUN_TIMEOUT_S (or @timeout_s). */
void run_umbra(const char *const args[], struct run_result *r);
void run_umbra_timeout(const char *const args[], int timeout_s, struct run_result *r);

/* Like run_umbra_timeout, and calls @sample(pid, @arg) every RUN_SAMPLE_MS
 * (or as soon after as the test process runs again) while umbra runs, from
 * the first moment after the fork: umbra's /proc entry may not be complete
 * yet, or already gone when it exits. */
#define RUN_SAMPLE_MS 10
typedef void (*run_sampler)(pid_t pid, void *arg);
void run_umbra_sampled(const char *const args[], int timeout_s, run_sampler sample, void *arg, struct run_result *r);

/* Runs umbra with @args (at most 28), then "--stats-json FILE" (FILE in
 * tmpdir), as run_umbra_sampled (@sample may be NULL), prints the test
 * case's name, time and exit status, and returns the parsed statistics
 * (json_object_put them); fails the test if umbra timed out or wrote none. */
struct json_object *run_umbra_stats(const char *const args[], int timeout_s, run_sampler sample, void *arg,
				    struct run_result *r);

/* Adds to @s a test case @name of the one test @test, with a fresh tmpdir
 * (tmpdir_setup, then @teardown: tmpdir_teardown or one that calls it) and
 * a timeout of @timeout_s: one case per test, so that each runs alone
 * (CK_RUN_CASE=NAME). */
void kvm_add_case(Suite *s, const char *name, const TTest *test, int timeout_s, SFun teardown);

/* The host memory of umbra's guest memfds (RAM areas and segments, not
 * the table pool), sampled from outside: a run_sampler whose @arg is a
 * struct memfd_samples. */
struct memfd_samples {
	uint64_t count; /* samples that found guest memfds */
	uint64_t max; /* bytes */
	double max_gap_ms; /* the longest time between two samples */
	struct timespec last;
};
void sample_memfds(pid_t pid, void *arg);

#define assert_status(r, want)                                                              \
	ck_assert_msg((r)->status == (want), "exit status: expected %d, got %d\nstdout:\n%s\nstderr:\n%s", \
		      (want), (r)->status, (r)->out, (r)->err)
#define assert_contains(hay, needle, r)                                                     \
	ck_assert_msg(strstr((hay), (needle)) != NULL,                                     \
		      "expected output containing \"%s\"\nstdout:\n%s\nstderr:\n%s", (needle), (r)->out, (r)->err)

/* A fresh directory per test (tmpdir_setup, tmpdir_teardown: a checked
 * fixture) and files in it. */
extern char tmpdir[64];
void tmpdir_setup(void);
void tmpdir_teardown(void);
void write_file(const char *path, const void *data, size_t len);
size_t read_file(const char *path, char *buf, size_t size);
void write_text(const char *path, const char *text);

/* FNV-1a 64, as the guest images compute it. */
uint64_t fnv1a(uint64_t hash, const uint8_t *p, size_t len);
/* Writes @len bytes of @data to @name in tmpdir and returns their FNV-1a sum
 * (what segread computes over a segment of that size). */
uint64_t write_segment_file(const char *name, const void *data, size_t len);
/* Fills @len bytes (a multiple of 8) from seed @x with a sequence that no
 * page of it repeats. */
void fill_pattern(uint8_t *data, size_t len, uint64_t x);

/* The number after @key in @text ("faults=" -> 12); fails the test if absent. */
unsigned long stat_value(const char *text, const char *key);
/* The integer at @path ("a.b.c") of JSON object @o; fails the test if absent. */
uint64_t json_u64(struct json_object *o, const char *path);

#endif
