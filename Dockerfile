# greenlight's image. No base image is pulled: scripts/build-image.sh builds the
# release binary and copies it, with the shared libraries it links against, into
# dist/rootfs; this file only packs that tree.
#
#   scripts/build-image.sh greenlight:latest
FROM scratch
COPY dist/rootfs/ /
ENV PATH=/usr/local/bin
VOLUME /var/lib/greenlight
EXPOSE 8787
ENTRYPOINT ["/usr/local/bin/greenlight"]
CMD ["serve", "--config", "/etc/greenlight/greenlight.toml"]
