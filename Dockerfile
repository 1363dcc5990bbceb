# relabel's container image, in two stages: one with the compiler and meson,
# and a runtime stage with only the shared libraries, the binary, its health
# check, the CA bundle and the configuration.
#
#   docker build -t relabel .          (podman: podman build --format docker,
#                                       OCI images cannot carry a HEALTHCHECK)
#   docker run -d --name relabel -p 465:465 -p 587:587 \
#       -v /srv/relabel/tls:/etc/relabel/tls:ro relabel
#
# BASE is any Debian bookworm image; packages it lacks are installed from
# its own apt sources.  BUILD_BASE names the build stage's image when it is
# another one: one that already holds BUILD_PACKAGES makes a build that
# needs no network at all (the CI test builds both with mmdebstrap).
#
# What the image expects (the README's "Deploy" says more):
#   /etc/relabel/relabel.ini   the configuration; the image's own (from
#                              deploy/container/relabel.ini) serves one brand
#                              from the certificate below, with Mailgun US
#   /etc/relabel/tls/          a volume with tls.crt (leaf first, then the
#                              chain) and tls.key, readable by uid 10465 or
#                              gid 10465; changes are picked up by themselves
# relabel runs as uid 10465 (not root) and logs to standard error.  Ports
# below 1024 need CAP_NET_BIND_SERVICE (podman passes it to the non-root
# process; with --cap-drop ALL add it back) or, in the container's own
# network namespace, net.ipv4.ip_unprivileged_port_start (Docker sets it to
# 0; the Kubernetes manifests set it too).  SIGTERM drains: relabel stops
# accepting, lets messages in progress finish for drain_timeout (30 s) and
# exits 0, so give `docker stop` a longer --time (-t 40).
ARG BASE=debian:bookworm-slim
ARG BUILD_BASE=${BASE}

FROM ${BUILD_BASE} AS build
ARG BUILD_PACKAGES="gcc libc6-dev binutils meson ninja-build pkg-config libuv1-dev libmbedtls-dev libinih-dev libcrypt-dev"
# Installs only what the base lacks, so a prepared base needs no network.
COPY deploy/container/install-packages.sh /usr/local/sbin/
RUN install-packages.sh $BUILD_PACKAGES
COPY . /src
# A release build with the project's own warnings-as-errors; the install
# rules put the stripped binary in /out.  Man pages and service files are
# for hosts, not for the image.
RUN meson setup /build /src --prefix=/usr --sysconfdir=/etc --buildtype=release \
        -Dman=disabled -Dsystemdsystemunitdir=no -Dsysusersdir=no \
    && ninja -C /build relabel relabel-healthcheck \
    && meson install -C /build --no-rebuild --strip --destdir /out \
    && install -D -s -m 755 /build/relabel-healthcheck /out/usr/libexec/relabel/healthcheck \
    && /out/usr/sbin/relabel --version

FROM ${BASE}
ARG RUNTIME_PACKAGES="ca-certificates libuv1 libmbedtls14 libinih1 libcrypt1"
COPY deploy/container/install-packages.sh /usr/local/sbin/
RUN set -eu; \
    install-packages.sh $RUNTIME_PACKAGES; \
    rm /usr/local/sbin/install-packages.sh; \
    groupadd --system --gid 10465 relabel; \
    useradd --uid 10465 --gid 10465 --no-create-home --home-dir /nonexistent --no-log-init \
        --shell /usr/sbin/nologin relabel; \
    install -d -m 755 /etc/relabel /etc/relabel/tls
COPY --from=build /out/usr/sbin/relabel /usr/sbin/relabel
COPY --from=build /out/usr/libexec/relabel/healthcheck /usr/libexec/relabel/healthcheck
COPY --from=build /out/usr/share/doc/relabel/relabel.ini.example /usr/share/doc/relabel/relabel.ini.example
COPY deploy/container/relabel.ini /etc/relabel/relabel.ini

USER 10465:10465
# 465 implicit TLS; 587, 25, 2525 STARTTLS; 9465 the metrics and health
# endpoint (no authentication: the image's configuration binds it to
# 127.0.0.1, for the HEALTHCHECK only).
EXPOSE 465 587 25 2525 9465
# The health check is a small C program, run directly (exec form): the
# image has no curl, and needs no shell for it.  Point it elsewhere with
# -e RELABEL_HEALTHCHECK_URL=http://127.0.0.1:PORT/healthz when the
# configuration moves [metrics] listen.
ENV RELABEL_HEALTHCHECK_URL=http://127.0.0.1:9465/healthz
HEALTHCHECK --interval=30s --timeout=5s --start-period=15s --retries=3 \
    CMD ["/usr/libexec/relabel/healthcheck"]
STOPSIGNAL SIGTERM
# relabel is PID 1: it handles SIGTERM, SIGINT and SIGHUP itself and starts
# no child processes, so it needs no init.
ENTRYPOINT ["/usr/sbin/relabel"]
CMD ["-c", "/etc/relabel/relabel.ini"]
