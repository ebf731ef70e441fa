# Builds the groundmesh binary and the pure-Go GoMLX plugin.
FROM golang:1.26-bookworm AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
# "simd" builds GoMLX's SIMD kernels into the plugin: about 2x faster where the
# nodes have AVX-512, slower on AVX2-only nodes (see the Makefile).
ARG PLUGIN_GOEXPERIMENT=
RUN go build -o /out/groundmesh ./cmd/groundmesh && \
    CGO_ENABLED=0 GOEXPERIMENT=$PLUGIN_GOEXPERIMENT go build -o /out/groundmesh-gomlx ./plugins/gomlx/cmd/groundmesh-gomlx && \
    (cd /out && sha256sum groundmesh-gomlx > groundmesh-gomlx.sha256)

FROM debian:bookworm-slim
COPY --from=build /out/ /usr/local/bin/
ENTRYPOINT []
