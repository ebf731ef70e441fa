// Package computev1 holds the generated gRPC code of the compute plugin
// protocol, version 1. Only plugins/compute imports it: hosts and backends
// speak the Go-native types of package compute.
//
// Regenerate with protoc plus protoc-gen-go v1.36.12 and protoc-gen-go-grpc
// v1.6.2 on PATH:
//
//	go install google.golang.org/protobuf/cmd/protoc-gen-go@v1.36.12
//	go install google.golang.org/grpc/cmd/protoc-gen-go-grpc@v1.6.2
//	go generate ./plugins/compute/proto/computev1
package computev1

//go:generate protoc --proto_path=. --go_out=. --go_opt=paths=source_relative --go-grpc_out=. --go-grpc_opt=paths=source_relative compute.proto
