package infer

// MeanAttention is the mean over an answer's tokens of their attention
// over the image's patches (model.Generation.Attention): one map for the
// whole answer, as the report and the grounding API show it. Nil when
// there is none.
func MeanAttention(a [][]float32) []float32 {
	if len(a) == 0 || len(a[0]) == 0 {
		return nil
	}
	out := make([]float32, len(a[0]))
	for _, row := range a {
		for i := range min(len(row), len(out)) {
			out[i] += row[i]
		}
	}
	for i := range out {
		out[i] /= float32(len(a))
	}
	return out
}
