package eval

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"

	"github.com/groundmesh/groundmesh/model"
)

// benchResult is one scored (benchmark, split) of one predictor.
type benchResult struct {
	Bench   string
	Split   string
	Samples []SampleResult
	Metrics map[string]float64
}

// runBenchmark answers recs in batches with p and scores them. step is
// called after every batch with the number of records it held.
func runBenchmark(ctx context.Context, p Predictor, bench, split string, recs []model.Record, batch int, step func(n int)) (benchResult, error) {
	scoreAs := bench
	if bench == BenchRECBaseline {
		scoreAs = BenchREC
	}
	sc, err := newScorer(scoreAs)
	if err != nil {
		return benchResult{}, err
	}
	res := benchResult{Bench: bench, Split: split, Samples: make([]SampleResult, 0, len(recs))}
	for start := 0; start < len(recs); start += batch {
		if err := ctx.Err(); err != nil {
			return benchResult{}, fmt.Errorf("evaluate %s/%s: %w", bench, split, err)
		}
		chunk := recs[start:min(start+batch, len(recs))]
		preds, err := p.Predict(ctx, chunk)
		if err != nil {
			return benchResult{}, fmt.Errorf("predict %s/%s records %d-%d: %w", bench, split, start, start+len(chunk)-1, err)
		}
		if len(preds) != len(chunk) {
			return benchResult{}, fmt.Errorf("predict %s/%s: %d predictions for %d records", bench, split, len(preds), len(chunk))
		}
		for i, r := range chunk {
			s := sc.add(r, preds[i])
			s.Benchmark = bench
			res.Samples = append(res.Samples, s)
		}
		if step != nil {
			step(len(chunk))
		}
	}
	res.Metrics = sc.metrics()
	return res, nil
}

// encodeJSONL writes samples one JSON object per line.
func encodeJSONL(samples []SampleResult) ([]byte, error) {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	for i := range samples {
		if err := enc.Encode(&samples[i]); err != nil {
			return nil, fmt.Errorf("encode prediction %s: %w", samples[i].ID, err)
		}
	}
	return buf.Bytes(), nil
}

// decodeJSONL reads predictions.jsonl back.
func decodeJSONL(b []byte) ([]SampleResult, error) {
	var out []SampleResult
	dec := json.NewDecoder(bytes.NewReader(b))
	for dec.More() {
		var s SampleResult
		if err := dec.Decode(&s); err != nil {
			return nil, fmt.Errorf("decode predictions line %d: %w", len(out)+1, err)
		}
		out = append(out, s)
	}
	return out, nil
}
