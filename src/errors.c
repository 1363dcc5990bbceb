/*
 * errors.c - names and texts for relabel's error codes, generated from the
 * one RL_ERRNO_MAP list; anything else is handed to libuv.
 */
#include <uv.h>

#include "relabel/errors.h"

const char *
rl_strerror(int err)
{
    switch (err) {
#define RL_ERRNO_STR(name, val, str)                                                               \
    case val:                                                                                      \
        return str;
        RL_ERRNO_MAP(RL_ERRNO_STR)
#undef RL_ERRNO_STR
    default:
        return uv_strerror(err);
    }
}

const char *
rl_err_name(int err)
{
    switch (err) {
#define RL_ERRNO_NAME(name, val, str)                                                              \
    case val:                                                                                      \
        return "RL_E_" #name;
        RL_ERRNO_MAP(RL_ERRNO_NAME)
#undef RL_ERRNO_NAME
    default:
        return uv_err_name(err);
    }
}
