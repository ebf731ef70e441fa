package compute

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"strconv"
	"strings"

	"github.com/hashicorp/go-plugin"
	"go.opentelemetry.io/contrib/instrumentation/google.golang.org/grpc/otelgrpc"
	"go.opentelemetry.io/otel/propagation"
	"google.golang.org/grpc"
	"google.golang.org/grpc/stats"

	"github.com/groundmesh/groundmesh/plugins/compute/proto/computev1"
)

// Handshake is the go-plugin handshake shared by the host and every backend
// plugin. The magic cookie only keeps a plugin binary from being run by hand
// by mistake; it is not a security measure.
var Handshake = plugin.HandshakeConfig{
	ProtocolVersion:  ProtocolVersion,
	MagicCookieKey:   MagicCookieKey,
	MagicCookieValue: MagicCookieValue,
}

// The handshake cookie.
const (
	MagicCookieKey   = "GROUNDMESH_COMPUTE_PLUGIN"
	MagicCookieValue = "b3c1e0d2-tinygrounder-compute"
)

// PluginName is the name under which a backend is dispensed from the
// plugin set.
const PluginName = "compute"

// maxMessageBytes bounds one gRPC message (a batch of images, a batch of
// logits); the 4 MiB gRPC default is too small for a batch of 224 px images.
const maxMessageBytes = 256 << 20

// PluginSets returns the versioned plugin sets: impl is served (plugin side)
// or nil (host side). Only protocol version 1 exists.
func PluginSets(impl Backend) map[int]plugin.PluginSet {
	return map[int]plugin.PluginSet{
		1: {PluginName: &GRPCPlugin{Impl: impl}},
	}
}

// GRPCPlugin is the go-plugin glue for protocol version 1: on the plugin side
// it registers Impl with the gRPC server; on the host side it returns a
// Backend that speaks gRPC to the plugin.
type GRPCPlugin struct {
	plugin.NetRPCUnsupportedPlugin
	// Impl is the backend served by the plugin process (nil on the host).
	Impl Backend
}

var _ plugin.GRPCPlugin = (*GRPCPlugin)(nil)

// GRPCServer registers the backend with the plugin's gRPC server.
func (p *GRPCPlugin) GRPCServer(_ *plugin.GRPCBroker, s *grpc.Server) error {
	if p.Impl == nil {
		return fmt.Errorf("compute plugin: serve: no backend")
	}
	computev1.RegisterComputeServer(s, &grpcServer{impl: p.Impl})
	return nil
}

// GRPCClient returns the host-side Backend over conn.
func (p *GRPCPlugin) GRPCClient(_ context.Context, _ *plugin.GRPCBroker, conn *grpc.ClientConn) (any, error) {
	return newGRPCClient(conn), nil
}

// PluginLogger is a plugin process's logger: JSON on stderr (which the
// host forwards, keeping each record's level and fields) at the level of
// GROUNDMESH_LOG_LEVEL (debug, info by default, warn or error). A bad
// level ends the process with a message naming the plugin.
func PluginLogger(plugin string) *slog.Logger {
	level := slog.LevelInfo
	if v := os.Getenv("GROUNDMESH_LOG_LEVEL"); v != "" {
		if err := level.UnmarshalText([]byte(v)); err != nil {
			fmt.Fprintf(os.Stderr, "%s: GROUNDMESH_LOG_LEVEL %q: %v\n", plugin, v, err)
			os.Exit(2)
		}
	}
	return slog.New(slog.NewJSONHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
}

// PluginCount reads a count >= 0 from the environment variable key (0
// when unset), as a plugin process's main does; a bad value ends the
// process with a message naming the plugin, as PluginLogger does.
func PluginCount(plugin, key string) int {
	v := os.Getenv(key)
	if v == "" {
		return 0
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < 0 {
		fmt.Fprintf(os.Stderr, "%s: %s %q: want a count >= 0\n", plugin, key, v)
		os.Exit(2)
	}
	return n
}

// Serve runs impl as a plugin process; a backend's main calls it and nothing
// else. It blocks until the host ends the plugin. Started by hand (without
// the handshake cookie) it prints a message and exits.
func Serve(impl Backend) {
	plugin.Serve(&plugin.ServeConfig{
		HandshakeConfig:  Handshake,
		VersionedPlugins: PluginSets(impl),
		GRPCServer: func(opts []grpc.ServerOption) *grpc.Server {
			return grpc.NewServer(append(opts, serverOptions()...)...)
		},
	})
}

// onlyCompute keeps go-plugin's own services (stdio, controller, broker)
// out of the traces.
func onlyCompute(info *stats.RPCTagInfo) bool {
	return strings.HasPrefix(info.FullMethodName, "/"+computev1.Compute_ServiceDesc.ServiceName+"/")
}

// propagator carries W3C trace context in gRPC metadata whatever global
// propagator the process has configured.
var propagator = propagation.NewCompositeTextMapPropagator(propagation.TraceContext{}, propagation.Baggage{})

func serverOptions() []grpc.ServerOption {
	return []grpc.ServerOption{
		grpc.MaxRecvMsgSize(maxMessageBytes),
		grpc.MaxSendMsgSize(maxMessageBytes),
		grpc.StatsHandler(otelgrpc.NewServerHandler(
			otelgrpc.WithPropagators(propagator),
			otelgrpc.WithFilter(onlyCompute),
		)),
	}
}

func dialOptions() []grpc.DialOption {
	return []grpc.DialOption{
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(maxMessageBytes), grpc.MaxCallSendMsgSize(maxMessageBytes)),
		grpc.WithStatsHandler(otelgrpc.NewClientHandler(
			otelgrpc.WithPropagators(propagator),
			otelgrpc.WithFilter(onlyCompute),
		)),
	}
}
