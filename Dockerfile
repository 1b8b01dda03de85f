# greenlight's image. No base image is pulled: scripts/build-image.sh builds the
# release binary and copies it, with the shared libraries it links against, into
# dist/rootfs; this file only packs that tree.
#
#   scripts/build-image.sh greenlight:latest
FROM scratch
COPY dist/rootfs/ /
COPY --chown=10001:10001 dist/state/ /var/lib/greenlight/
ENV PATH=/usr/local/bin
# Every command (serve, and `docker exec ... greenlight status`) finds the config.
ENV GREENLIGHT_CONFIG=/etc/greenlight/greenlight.toml
VOLUME /var/lib/greenlight
EXPOSE 8787
# Not root: user greenlight (10001), owner of /var/lib/greenlight. It needs the
# Docker socket's group (`--group-add $(stat -c %g /var/run/docker.sock)`) and
# write access to nginx's upstreams directory; where those cannot be given, run
# it as root (docker-compose.yml does, for its shared upstreams volume).
USER 10001:10001
# GET /healthz on server.listen (no shell or curl in the image: greenlight asks).
HEALTHCHECK --interval=5s --timeout=3s --start-period=5s --retries=3 \
    CMD ["/usr/local/bin/greenlight", "healthz"]
ENTRYPOINT ["/usr/local/bin/greenlight"]
CMD ["serve"]
