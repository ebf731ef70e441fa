package compute

import (
	"context"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/groundmesh/groundmesh/plugins/compute/proto/computev1"
)

// grpcServer is the plugin side of protocol v1: it serves a Backend and turns
// its errors into gRPC status codes.
type grpcServer struct {
	computev1.UnimplementedComputeServer
	impl Backend
}

func (s *grpcServer) Describe(ctx context.Context, _ *computev1.DescribeRequest) (*computev1.DescribeResponse, error) {
	d, err := s.impl.Describe(ctx)
	if err != nil {
		return nil, toStatus(err)
	}
	return describeToPB(d), nil
}

func (s *grpcServer) Train(req *computev1.TrainRequest, stream grpc.ServerStreamingServer[computev1.TrainEvent]) error {
	res, err := s.impl.Train(stream.Context(), trainRequestFromPB(req), func(p TrainProgress) error {
		return stream.Send(&computev1.TrainEvent{Event: &computev1.TrainEvent_Progress{Progress: progressToPB(p)}})
	})
	if err != nil {
		return toStatus(err)
	}
	return stream.Send(&computev1.TrainEvent{Event: &computev1.TrainEvent_Result{Result: resultToPB(res)}})
}

func (s *grpcServer) Load(ctx context.Context, req *computev1.LoadRequest) (*computev1.LoadResponse, error) {
	r, err := s.impl.Load(ctx, LoadRequest{
		ModelConfig: req.GetModelConfig(), Checkpoint: req.GetCheckpoint(), Device: req.GetDevice(), Dtype: req.GetDtype(),
	})
	if err != nil {
		return nil, toStatus(err)
	}
	return &computev1.LoadResponse{Session: r.Session}, nil
}

func (s *grpcServer) Prefill(ctx context.Context, req *computev1.PrefillRequest) (*computev1.ForwardResponse, error) {
	batch, err := sequencesFromPB(req.GetBatch())
	if err != nil {
		return nil, status.Error(codes.InvalidArgument, "prefill: "+err.Error())
	}
	r, err := s.impl.Prefill(ctx, PrefillRequest{Session: req.GetSession(), Batch: batch, WantAttention: req.GetWantAttention(), HeadOnly: req.GetHeadOnly()})
	if err != nil {
		return nil, toStatus(err)
	}
	return forwardResponse("prefill", r)
}

func (s *grpcServer) Decode(ctx context.Context, req *computev1.DecodeRequest) (*computev1.ForwardResponse, error) {
	r, err := s.impl.Decode(ctx, DecodeRequest{
		Session: req.GetSession(), CacheID: req.GetCacheId(), Tokens: req.GetTokens(), WantAttention: req.GetWantAttention(),
	})
	if err != nil {
		return nil, toStatus(err)
	}
	return forwardResponse("decode", r)
}

func forwardResponse(op string, r ForwardResult) (*computev1.ForwardResponse, error) {
	out, err := forwardToPB(r)
	if err != nil {
		// The backend broke the contract (ragged logits): a bug in the plugin.
		return nil, status.Error(codes.Internal, op+": "+err.Error())
	}
	return out, nil
}

func (s *grpcServer) ReleaseCache(ctx context.Context, req *computev1.ReleaseCacheRequest) (*computev1.ReleaseCacheResponse, error) {
	if err := s.impl.ReleaseCache(ctx, req.GetSession(), req.GetCacheId()); err != nil {
		return nil, toStatus(err)
	}
	return &computev1.ReleaseCacheResponse{}, nil
}

func (s *grpcServer) Unload(ctx context.Context, req *computev1.UnloadRequest) (*computev1.UnloadResponse, error) {
	if err := s.impl.Unload(ctx, req.GetSession()); err != nil {
		return nil, toStatus(err)
	}
	return &computev1.UnloadResponse{}, nil
}

func (s *grpcServer) Generate(ctx context.Context, req *computev1.GenerateRequest) (*computev1.GenerateResponse, error) {
	r, err := generateRequestFromPB(req)
	if err != nil {
		return nil, status.Error(codes.InvalidArgument, "generate: "+err.Error())
	}
	res, err := s.impl.Generate(ctx, r)
	if err != nil {
		return nil, toStatus(err)
	}
	out, err := generateResultToPB(res)
	if err != nil {
		return nil, status.Error(codes.Internal, "generate: "+err.Error())
	}
	return out, nil
}
