/* Declarations of glibc's argp interface, for building libelf against musl: libelf's
 * color.c declares an argp child parser but nothing in libbpf calls it, so nothing here
 * needs a definition at link time. */
#ifndef ARGP_STUB_H
#define ARGP_STUB_H
#include <stdio.h>
#include <errno.h>
#include <ctype.h>
#include <limits.h>
typedef int error_t;
struct argp_state;
struct argp_option {
	const char *name;
	int key;
	const char *arg;
	int flags;
	const char *doc;
	int group;
};
#define OPTION_ARG_OPTIONAL 0x1
#define OPTION_HIDDEN 0x2
#define OPTION_ALIAS 0x4
#define OPTION_DOC 0x8
#define OPTION_NO_USAGE 0x10
typedef error_t (*argp_parser_t)(int key, char *arg, struct argp_state *state);
struct argp_child;
struct argp {
	const struct argp_option *options;
	argp_parser_t parser;
	const char *args_doc;
	const char *doc;
	const struct argp_child *children;
	char *(*help_filter)(int key, const char *text, void *input);
	const char *argp_domain;
};
struct argp_child {
	const struct argp *argp;
	int flags;
	const char *header;
	int group;
};
struct argp_state {
	const struct argp *root_argp;
	int argc;
	char **argv;
	int next;
	unsigned flags;
	unsigned arg_num;
	int quoted;
	void *input;
	void **child_inputs;
	void *hook;
	char *name;
	FILE *err_stream;
	FILE *out_stream;
	void *pstate;
};
#define ARGP_ERR_UNKNOWN E2BIG
#define ARGP_KEY_ARG 0
#define ARGP_KEY_ARGS 0x1000006
#define ARGP_KEY_END 0x1000001
#define ARGP_KEY_NO_ARGS 0x1000002
#define ARGP_KEY_INIT 0x1000003
#define ARGP_KEY_FINI 0x1000007
#define ARGP_KEY_SUCCESS 0x1000004
#define ARGP_KEY_ERROR 0x1000005
#define ARGP_HELP_USAGE 0x01
#define ARGP_HELP_SHORT_USAGE 0x02
#define ARGP_HELP_SEE 0x04
#define ARGP_HELP_LONG 0x08
#define ARGP_HELP_EXIT_ERR 0x100
#define ARGP_HELP_EXIT_OK 0x200
#define ARGP_HELP_STD_ERR (ARGP_HELP_SEE | ARGP_HELP_EXIT_ERR)
extern void argp_help(const struct argp *argp, FILE *stream, unsigned flags, char *name);
extern void argp_state_help(const struct argp_state *state, FILE *stream, unsigned flags);
extern void argp_error(const struct argp_state *state, const char *fmt, ...);
extern error_t argp_parse(const struct argp *argp, int argc, char **argv, unsigned flags,
			  int *arg_index, void *input);
#endif
