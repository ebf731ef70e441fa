package compute

import (
	"encoding/binary"
	"fmt"
	"math"

	"github.com/groundmesh/groundmesh/plugins/compute/proto/computev1"
)

// Conversions between the Go-native contract types and the generated
// computev1 types. Nothing outside this package sees computev1.

func packFloat32(v []float32) []byte {
	b := make([]byte, 4*len(v))
	for i, f := range v {
		binary.LittleEndian.PutUint32(b[4*i:], math.Float32bits(f))
	}
	return b
}

func unpackFloat32(b []byte) ([]float32, error) {
	if len(b)%4 != 0 {
		return nil, fmt.Errorf("packed float32: %d bytes is not a multiple of 4: %w", len(b), ErrInvalidArgument)
	}
	v := make([]float32, len(b)/4)
	for i := range v {
		v[i] = math.Float32frombits(binary.LittleEndian.Uint32(b[4*i:]))
	}
	return v, nil
}

// matrixToPB packs rows of equal length; nil stays nil.
func matrixToPB(m [][]float32) (*computev1.Matrix, error) {
	if m == nil {
		return nil, nil
	}
	cols := 0
	if len(m) > 0 {
		cols = len(m[0])
	}
	flat := make([]float32, 0, len(m)*cols)
	for i, row := range m {
		if len(row) != cols {
			return nil, fmt.Errorf("matrix row %d has %d columns, row 0 has %d", i, len(row), cols)
		}
		flat = append(flat, row...)
	}
	return &computev1.Matrix{Rows: int32(len(m)), Cols: int32(cols), Data: packFloat32(flat)}, nil
}

func matrixFromPB(m *computev1.Matrix) ([][]float32, error) {
	if m == nil {
		return nil, nil
	}
	if m.Rows < 0 || m.Cols < 0 || int64(len(m.Data)) != 4*int64(m.Rows)*int64(m.Cols) {
		return nil, fmt.Errorf("matrix %dx%d with %d bytes", m.Rows, m.Cols, len(m.Data))
	}
	flat, err := unpackFloat32(m.Data)
	if err != nil {
		return nil, err
	}
	out := make([][]float32, m.Rows)
	for i := range out {
		out[i] = flat[i*int(m.Cols) : (i+1)*int(m.Cols) : (i+1)*int(m.Cols)]
	}
	return out, nil
}

func describeToPB(d Description) *computev1.DescribeResponse {
	return &computev1.DescribeResponse{
		Backend: d.Backend, Version: d.Version, Devices: d.Devices,
		CanTrain: d.CanTrain, CanAttention: d.CanAttention, Dtypes: d.Dtypes, Features: d.Features,
	}
}

func describeFromPB(r *computev1.DescribeResponse) Description {
	return Description{
		Backend: r.GetBackend(), Version: r.GetVersion(), Devices: r.GetDevices(),
		CanTrain: r.GetCanTrain(), CanAttention: r.GetCanAttention(), Dtypes: r.GetDtypes(), Features: r.GetFeatures(),
	}
}

func trainRequestToPB(r TrainRequest) *computev1.TrainRequest {
	return &computev1.TrainRequest{
		RunId: r.RunID, Stage: r.Stage, ModelConfig: r.ModelConfig,
		InitCheckpoint: r.InitCheckpoint, ResumeCheckpoint: r.ResumeCheckpoint,
		Shards: r.Shards, Trainable: r.Trainable, Frozen: r.Frozen,
		Steps: int64(r.Steps), BatchSize: int64(r.BatchSize), LearningRate: r.LearningRate,
		WarmupSteps: int64(r.WarmupSteps), WeightDecay: r.WeightDecay, Seed: r.Seed,
		LogEvery: int64(r.LogEvery), CheckpointEvery: int64(r.CheckpointEvery), CheckpointDir: r.CheckpointDir,
		Objective: r.Objective,
	}
}

func trainRequestFromPB(r *computev1.TrainRequest) TrainRequest {
	return TrainRequest{
		RunID: r.GetRunId(), Stage: r.GetStage(), ModelConfig: r.GetModelConfig(),
		InitCheckpoint: r.GetInitCheckpoint(), ResumeCheckpoint: r.GetResumeCheckpoint(),
		Shards: r.GetShards(), Trainable: r.GetTrainable(), Frozen: r.GetFrozen(),
		Steps: int(r.GetSteps()), BatchSize: int(r.GetBatchSize()), LearningRate: r.GetLearningRate(),
		WarmupSteps: int(r.GetWarmupSteps()), WeightDecay: r.GetWeightDecay(), Seed: r.GetSeed(),
		LogEvery: int(r.GetLogEvery()), CheckpointEvery: int(r.GetCheckpointEvery()), CheckpointDir: r.GetCheckpointDir(),
		Objective: r.GetObjective(),
	}
}

func checkpointToPB(c *Checkpoint) *computev1.Checkpoint {
	if c == nil {
		return nil
	}
	return &computev1.Checkpoint{Path: c.Path, Step: int64(c.Step), Loss: c.Loss, Sha256: c.SHA256, Bytes: c.Bytes}
}

func checkpointFromPB(c *computev1.Checkpoint) *Checkpoint {
	if c == nil {
		return nil
	}
	return &Checkpoint{Path: c.GetPath(), Step: int(c.GetStep()), Loss: c.GetLoss(), SHA256: c.GetSha256(), Bytes: c.GetBytes()}
}

func progressToPB(p TrainProgress) *computev1.TrainProgress {
	return &computev1.TrainProgress{
		Step: int64(p.Step), Loss: p.Loss, LearningRate: p.LearningRate,
		TokensPerSec: p.TokensPerSec, Checkpoint: checkpointToPB(p.Checkpoint),
	}
}

func progressFromPB(p *computev1.TrainProgress) TrainProgress {
	return TrainProgress{
		Step: int(p.GetStep()), Loss: p.GetLoss(), LearningRate: p.GetLearningRate(),
		TokensPerSec: p.GetTokensPerSec(), Checkpoint: checkpointFromPB(p.GetCheckpoint()),
	}
}

func resultToPB(r TrainResult) *computev1.TrainResult {
	return &computev1.TrainResult{
		Final: checkpointToPB(&r.Final), Steps: int64(r.Steps),
		FirstLoss: r.FirstLoss, LastLoss: r.LastLoss, FlopsStep: r.FLOPsStep,
	}
}

func resultFromPB(r *computev1.TrainResult) TrainResult {
	out := TrainResult{
		Steps: int(r.GetSteps()), FirstLoss: r.GetFirstLoss(), LastLoss: r.GetLastLoss(), FLOPsStep: r.GetFlopsStep(),
	}
	if c := checkpointFromPB(r.GetFinal()); c != nil {
		out.Final = *c
	}
	return out
}

func sequencesToPB(batch []Sequence) []*computev1.Sequence {
	out := make([]*computev1.Sequence, len(batch))
	for i, s := range batch {
		imgs := make([]*computev1.Image, len(s.Images))
		for j, im := range s.Images {
			imgs[j] = &computev1.Image{Size: int32(im.Size), Pixels: packFloat32(im.Pixels)}
		}
		out[i] = &computev1.Sequence{Tokens: s.Tokens, Images: imgs}
	}
	return out
}

func sequencesFromPB(batch []*computev1.Sequence) ([]Sequence, error) {
	out := make([]Sequence, len(batch))
	for i, s := range batch {
		imgs := make([]Image, len(s.GetImages()))
		for j, im := range s.GetImages() {
			px, err := unpackFloat32(im.GetPixels())
			if err != nil {
				return nil, fmt.Errorf("sequence %d image %d: %w", i, j, err)
			}
			imgs[j] = Image{Size: int(im.GetSize()), Pixels: px}
		}
		out[i] = Sequence{Tokens: s.GetTokens(), Images: imgs}
	}
	return out, nil
}

func forwardToPB(r ForwardResult) (*computev1.ForwardResponse, error) {
	logits, err := matrixToPB(r.Logits)
	if err != nil {
		return nil, fmt.Errorf("logits: %w", err)
	}
	att, err := matrixToPB(r.Attention)
	if err != nil {
		return nil, fmt.Errorf("attention: %w", err)
	}
	var heads []*computev1.HeadBox
	for _, h := range r.HeadBoxes {
		heads = append(heads, &computev1.HeadBox{Box: h.Box[:], Score: h.Score, Ok: h.OK, Exists: h.Exists, Name: h.Name})
	}
	return &computev1.ForwardResponse{CacheId: r.CacheID, Logits: logits, Attention: att, HeadBoxes: heads}, nil
}

func forwardFromPB(r *computev1.ForwardResponse) (ForwardResult, error) {
	logits, err := matrixFromPB(r.GetLogits())
	if err != nil {
		return ForwardResult{}, fmt.Errorf("logits: %w", err)
	}
	att, err := matrixFromPB(r.GetAttention())
	if err != nil {
		return ForwardResult{}, fmt.Errorf("attention: %w", err)
	}
	var heads []HeadBox
	for i, h := range r.GetHeadBoxes() {
		if h.GetOk() && len(h.GetBox()) != 4 {
			return ForwardResult{}, fmt.Errorf("head box %d: %d numbers, want 4", i, len(h.GetBox()))
		}
		hb := HeadBox{Score: h.GetScore(), OK: h.GetOk(), Exists: h.GetExists(), Name: h.GetName()}
		copy(hb.Box[:], h.GetBox())
		heads = append(heads, hb)
	}
	return ForwardResult{CacheID: r.GetCacheId(), Logits: logits, Attention: att, HeadBoxes: heads}, nil
}

func generateRequestToPB(r GenerateRequest) *computev1.GenerateRequest {
	return &computev1.GenerateRequest{
		Session: r.Session, Batch: sequencesToPB(r.Batch),
		Grammar: &computev1.Grammar{Kind: r.Grammar.Kind, Lo: int32(r.Grammar.Lo), Hi: int32(r.Grammar.Hi)},
		MaxNew:  int32(r.MaxNew), BoxFromHead: r.BoxFromHead, YesNoFromHead: r.YesNoFromHead, NameFromHead: r.NameFromHead, WantAttention: r.WantAttention,
	}
}

func generateRequestFromPB(r *computev1.GenerateRequest) (GenerateRequest, error) {
	batch, err := sequencesFromPB(r.GetBatch())
	if err != nil {
		return GenerateRequest{}, err
	}
	g := r.GetGrammar()
	return GenerateRequest{
		Session: r.GetSession(), Batch: batch,
		Grammar: Grammar{Kind: g.GetKind(), Lo: int(g.GetLo()), Hi: int(g.GetHi())},
		MaxNew:  int(r.GetMaxNew()), BoxFromHead: r.GetBoxFromHead(), YesNoFromHead: r.GetYesNoFromHead(), NameFromHead: r.GetNameFromHead(), WantAttention: r.GetWantAttention(),
	}, nil
}

func generateResultToPB(r GenerateResult) (*computev1.GenerateResponse, error) {
	out := &computev1.GenerateResponse{}
	for i, a := range r.Answers {
		att, err := matrixToPB(a.Attention)
		if err != nil {
			return nil, fmt.Errorf("answer %d attention: %w", i, err)
		}
		ga := &computev1.GeneratedAnswer{Tokens: a.Tokens, Finish: a.Finish, Attention: att}
		if a.Head.OK {
			ga.Head = &computev1.HeadBox{Box: a.Head.Box[:], Score: a.Head.Score, Ok: true, Exists: a.Head.Exists, Name: a.Head.Name}
		}
		out.Answers = append(out.Answers, ga)
	}
	return out, nil
}

func generateResultFromPB(r *computev1.GenerateResponse) (GenerateResult, error) {
	var out GenerateResult
	for i, a := range r.GetAnswers() {
		att, err := matrixFromPB(a.GetAttention())
		if err != nil {
			return GenerateResult{}, fmt.Errorf("answer %d attention: %w", i, err)
		}
		ga := GeneratedAnswer{Tokens: a.GetTokens(), Finish: a.GetFinish(), Attention: att}
		if h := a.GetHead(); h.GetOk() {
			if len(h.GetBox()) != 4 {
				return GenerateResult{}, fmt.Errorf("answer %d head box has %d numbers, want 4", i, len(h.GetBox()))
			}
			ga.Head = HeadBox{Box: [4]float32(h.GetBox()), Score: h.GetScore(), Exists: h.GetExists(), Name: h.GetName(), OK: true}
		}
		out.Answers = append(out.Answers, ga)
	}
	return out, nil
}
