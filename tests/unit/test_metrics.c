/*
 * test_metrics.c - the counters and their text exposition: every family
 * once with HELP and TYPE before its samples, values after counting,
 * label values escaped, names that survive a new configuration, the
 * histogram's cumulative buckets, and NULL meaning "count nothing".
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "relabel/metrics.h"

static char *
render(const struct rl_metrics *m, bool ready)
{
    char *text = NULL;
    size_t len = 0;
    FILE *out = open_memstream(&text, &len);

    assert_non_null(out);
    rl_metrics_render(m, ready, out);
    assert_int_equal(fclose(out), 0);
    return text;
}

/* The sample line `line` (without its line end) is in text. */
static void
assert_sample(const char *text, const char *line)
{
    char want[512];

    snprintf(want, sizeof(want), "\n%s\n", line);
    if (strstr(text, want) == NULL)
        fail_msg("missing sample: %s\nin:\n%s", line, text);
}

/*
 * The shape of the format: each family's "# HELP" then "# TYPE" come once,
 * before any sample of it, and every sample belongs to the family declared
 * last (or to its _bucket/_sum/_count for a histogram).
 */
static void
assert_well_formed(const char *text)
{
    char family[128] = "", type[32] = "", seen[64][128];
    size_t nseen = 0;
    const char *p = text;

    while (*p != '\0') {
        const char *nl = strchr(p, '\n');
        size_t n;
        char line[1024];

        assert_non_null(nl);
        n = (size_t)(nl - p);
        assert_true(n < sizeof(line));
        memcpy(line, p, n);
        line[n] = '\0';
        p = nl + 1;
        if (strncmp(line, "# HELP ", 7) == 0) {
            assert_int_equal(sscanf(line + 7, "%127s", family), 1);
            for (size_t i = 0; i < nseen; i++)
                assert_string_not_equal(seen[i], family);
            assert_true(nseen < 64);
            snprintf(seen[nseen++], sizeof(seen[0]), "%s", family);
            type[0] = '\0';
        } else if (strncmp(line, "# TYPE ", 7) == 0) {
            char name[128];

            assert_int_equal(sscanf(line + 7, "%127s %31s", name, type), 2);
            assert_string_equal(name, family);
        } else {
            size_t flen = strlen(family);
            const char *rest = line + flen;

            assert_true(type[0] != '\0');
            assert_memory_equal(line, family, flen);
            if (strcmp(type, "histogram") == 0 &&
                (strncmp(rest, "_bucket", 7) == 0 || strncmp(rest, "_sum", 4) == 0 ||
                 strncmp(rest, "_count", 6) == 0))
                rest += rest[1] == 'b' ? 7 : rest[1] == 's' ? 4 : 6;
            assert_true(*rest == ' ' || *rest == '{');
        }
    }
}

static void
test_empty(void **state)
{
    struct rl_metrics *m = rl_metrics_new("1.2.3");
    char *text;

    (void)state;
    assert_non_null(m);
    text = render(m, false);
    assert_well_formed(text);
    assert_sample(text, "relabel_build_info{version=\"1.2.3\"} 1");
    assert_sample(text, "relabel_ready 0");
    assert_sample(text, "relabel_messages_total{result=\"aborted\"} 0");
    assert_sample(text, "relabel_bytes_total{direction=\"upstream_out\"} 0");
    assert_sample(text, "relabel_tls_handshake_failures_total{leg=\"client\",reason=\"verify\"} 0");
    assert_sample(text, "relabel_reloads_total{result=\"failed\"} 0");
    assert_sample(text, "relabel_session_duration_seconds_count 0");
    assert_non_null(strstr(text, "# TYPE relabel_session_duration_seconds histogram\n"));
    assert_non_null(strstr(text, "# TYPE relabel_connections_total counter\n"));
    assert_non_null(strstr(text, "# TYPE relabel_sessions_active gauge\n"));
    assert_non_null(strstr(text, "\nprocess_start_time_seconds "));
    free(text);
    text = render(m, true);
    assert_sample(text, "relabel_ready 1");
    free(text);
    rl_metrics_free(m);
}

static void
test_counting(void **state)
{
    struct rl_metrics *m = rl_metrics_new("0.1.0");
    char *text;

    (void)state;
    rl_metrics_session_start(m, "smtps");
    rl_metrics_session_start(m, "smtps");
    rl_metrics_session_start(m, "submission");
    rl_metrics_session_end(m, "smtps", 0.05);
    rl_metrics_session_end(m, "submission", 700);
    rl_metrics_refused(m, "smtps", "max_connections_per_ip");
    rl_metrics_refused(m, "smtps", "no such reason");
    rl_metrics_refused(m, "smtps", NULL);
    rl_metrics_bytes(m, true, 100, 200);
    rl_metrics_bytes(m, false, 30, 40);
    rl_metrics_bytes(m, true, 1, 2);
    rl_metrics_message(m, 250);
    rl_metrics_message(m, 251);
    rl_metrics_message(m, 451);
    rl_metrics_message(m, 554);
    rl_metrics_message(m, 0);
    rl_metrics_auth(m, 235);
    rl_metrics_auth(m, 535);
    rl_metrics_auth(m, 454); /* neither */
    rl_metrics_auth(m, 334); /* neither */
    rl_metrics_plaintext_auth(m);
    rl_metrics_client_tls_failure(m, "timeout");
    rl_metrics_client_tls_failure(m, "whatever");
    rl_metrics_upstream_tls_failure(m, "mg", "verify");
    rl_metrics_upstream_tls_failure(m, "mg", "alert");
    rl_metrics_upstream_connect_failure(m, "mg");
    rl_metrics_upstream_connect_failure(m, "mg");
    rl_metrics_reload(m, true, 1700000000.5);
    rl_metrics_reload(m, false, 1800000000.0);

    text = render(m, true);
    assert_well_formed(text);
    assert_sample(text, "relabel_connections_total{listener=\"smtps\"} 2");
    assert_sample(text, "relabel_connections_total{listener=\"submission\"} 1");
    assert_sample(text, "relabel_sessions_active{listener=\"smtps\"} 1");
    assert_sample(text, "relabel_sessions_active{listener=\"submission\"} 0");
    assert_sample(text, "relabel_connections_refused_total{listener=\"smtps\","
                        "reason=\"max_connections_per_ip\"} 1");
    assert_sample(text, "relabel_connections_refused_total{listener=\"smtps\",reason=\"other\"} 2");
    assert_sample(text, "relabel_connections_refused_total{listener=\"submission\","
                        "reason=\"max_connections\"} 0");
    assert_sample(text, "relabel_bytes_total{direction=\"client_in\"} 101");
    assert_sample(text, "relabel_bytes_total{direction=\"client_out\"} 202");
    assert_sample(text, "relabel_bytes_total{direction=\"upstream_in\"} 30");
    assert_sample(text, "relabel_bytes_total{direction=\"upstream_out\"} 40");
    assert_sample(text, "relabel_messages_total{result=\"2xx\"} 2");
    assert_sample(text, "relabel_messages_total{result=\"4xx\"} 1");
    assert_sample(text, "relabel_messages_total{result=\"5xx\"} 1");
    assert_sample(text, "relabel_messages_total{result=\"aborted\"} 1");
    assert_sample(text, "relabel_auth_total{result=\"success\"} 1");
    assert_sample(text, "relabel_auth_total{result=\"failure\"} 1");
    assert_sample(text, "relabel_plaintext_auth_total 1");
    assert_sample(text,
                  "relabel_tls_handshake_failures_total{leg=\"client\",reason=\"timeout\"} 1");
    assert_sample(text,
                  "relabel_tls_handshake_failures_total{leg=\"client\",reason=\"protocol\"} 1");
    assert_sample(text,
                  "relabel_tls_handshake_failures_total{leg=\"upstream\",reason=\"verify\"} 1");
    assert_sample(text,
                  "relabel_tls_handshake_failures_total{leg=\"upstream\",reason=\"alert\"} 1");
    assert_sample(text, "relabel_upstream_verify_failures_total{upstream=\"mg\"} 1");
    assert_sample(text, "relabel_upstream_connect_failures_total{upstream=\"mg\"} 2");
    assert_sample(text, "relabel_reloads_total{result=\"ok\"} 1");
    assert_sample(text, "relabel_reloads_total{result=\"failed\"} 1");
    assert_sample(text, "relabel_last_reload_success_timestamp_seconds 1700000000.5");
    /* Buckets are cumulative; 700 s is only in +Inf. */
    assert_sample(text, "relabel_session_duration_seconds_bucket{le=\"0.1\"} 1");
    assert_sample(text, "relabel_session_duration_seconds_bucket{le=\"600\"} 1");
    assert_sample(text, "relabel_session_duration_seconds_bucket{le=\"+Inf\"} 2");
    assert_sample(text, "relabel_session_duration_seconds_sum 700.05");
    assert_sample(text, "relabel_session_duration_seconds_count 2");
    free(text);
    rl_metrics_free(m);
}

/* A configuration names its listeners and upstreams (shown at 0) and its
 * brands' certificates; a later one replaces the brands but no counter. */
static void
test_configure(void **state)
{
    struct rl_metrics *m = rl_metrics_new("0.1.0");
    struct rl_upstream_conf ups[1] = {{.name = "mailgun-us"}};
    struct rl_brand_conf brands[2] = {{.name = "example", .upstream = &ups[0]},
                                      {.name = "other", .upstream = &ups[0]}};
    struct rl_listener_conf ls[2] = {{.name = "smtps", .brand = &brands[0]},
                                     {.name = "submission", .brand = &brands[1]}};
    struct rl_config cfg = {.listeners = ls,
                            .nlisteners = 2,
                            .brands = brands,
                            .nbrands = 2,
                            .upstreams = ups,
                            .nupstreams = 1};
    double not_after[2] = {1893456000, 1700000000};
    char *text;

    (void)state;
    rl_metrics_configure(m, &cfg, not_after);
    rl_metrics_session_start(m, "submission");
    text = render(m, false);
    assert_well_formed(text);
    assert_sample(text, "relabel_connections_total{listener=\"smtps\"} 0");
    assert_sample(text, "relabel_connections_total{listener=\"submission\"} 1");
    assert_sample(text, "relabel_upstream_connect_failures_total{upstream=\"mailgun-us\"} 0");
    assert_sample(text,
                  "relabel_certificate_not_after_timestamp_seconds{brand=\"example\"} 1893456000");
    assert_sample(text,
                  "relabel_certificate_not_after_timestamp_seconds{brand=\"other\"} 1700000000");
    /* Listeners appear in the order first seen. */
    assert_true(strstr(text, "{listener=\"smtps\"}") < strstr(text, "{listener=\"submission\"}"));
    free(text);

    cfg.nlisteners = 1;
    cfg.nbrands = 1;
    not_after[0] = 1900000000;
    rl_metrics_configure(m, &cfg, not_after);
    rl_metrics_session_end(m, "submission", 1);
    text = render(m, false);
    assert_sample(text, "relabel_connections_total{listener=\"submission\"} 1");
    assert_sample(text, "relabel_sessions_active{listener=\"submission\"} 0");
    assert_sample(text,
                  "relabel_certificate_not_after_timestamp_seconds{brand=\"example\"} 1900000000");
    assert_null(strstr(text, "{brand=\"other\"}"));
    free(text);
    rl_metrics_free(m);
}

static void
test_escaping(void **state)
{
    struct rl_metrics *m = rl_metrics_new("v\"1\\2\n");
    char *text = NULL;
    size_t len = 0;
    FILE *out;

    (void)state;
    rl_metrics_session_start(m, "we\"ird\\na\nme");
    text = render(m, false);
    assert_sample(text, "relabel_build_info{version=\"v\\\"1\\\\2\\n\"} 1");
    assert_sample(text, "relabel_connections_total{listener=\"we\\\"ird\\\\na\\nme\"} 1");
    assert_well_formed(text);
    free(text);
    rl_metrics_free(m);

    out = open_memstream(&text, &len);
    assert_non_null(out);
    rl_metrics_family(out, "x_total", "counter", "a \"quoted\" back\\slash\nnew line");
    rl_metrics_label_value(out, "");
    assert_int_equal(fclose(out), 0);
    assert_string_equal(text, "# HELP x_total a \"quoted\" back\\\\slash\\nnew line\n"
                              "# TYPE x_total counter\n\"\"");
    free(text);
}

/* Without a set nothing is counted and nothing breaks. */
static void
test_null(void **state)
{
    char *text = NULL;
    size_t len = 0;
    FILE *out = open_memstream(&text, &len);

    (void)state;
    rl_metrics_session_start(NULL, "x");
    rl_metrics_session_end(NULL, "x", 1);
    rl_metrics_refused(NULL, "x", "rate");
    rl_metrics_bytes(NULL, true, 1, 1);
    rl_metrics_message(NULL, 250);
    rl_metrics_auth(NULL, 235);
    rl_metrics_plaintext_auth(NULL);
    rl_metrics_client_tls_failure(NULL, "verify");
    rl_metrics_upstream_tls_failure(NULL, "u", "verify");
    rl_metrics_upstream_connect_failure(NULL, "u");
    rl_metrics_reload(NULL, true, 1);
    rl_metrics_configure(NULL, NULL, NULL);
    rl_metrics_render(NULL, true, out);
    rl_metrics_free(NULL);
    assert_int_equal(fclose(out), 0);
    assert_int_equal(len, 0);
    free(text);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_empty),     cmocka_unit_test(test_counting),
        cmocka_unit_test(test_configure), cmocka_unit_test(test_escaping),
        cmocka_unit_test(test_null),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
