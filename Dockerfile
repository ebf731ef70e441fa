# Builds the groundmesh binary and the pure-Go GoMLX plugin.
FROM golang:1.26-bookworm AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
RUN go build -o /out/groundmesh ./cmd/groundmesh && \
    CGO_ENABLED=0 GOEXPERIMENT=simd go build -o /out/groundmesh-gomlx ./plugins/gomlx/cmd/groundmesh-gomlx

FROM debian:bookworm-slim
COPY --from=build /out/ /usr/local/bin/
ENTRYPOINT []
