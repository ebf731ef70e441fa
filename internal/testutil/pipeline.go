package testutil

import (
	"encoding/json"
	"fmt"
)

// SmallPipeline is the input of a whole pipeline small enough for a test
// or a soak (about a minute here): ingest of 40 scenes of the given seed,
// 20,000 synthesized samples, three training stages of a few steps on the
// GoMLX plugin, every benchmark scored on a few records, no report.
func SmallPipeline(seed int) json.RawMessage {
	return json.RawMessage(fmt.Sprintf(`{
 "dataset": {"images": 40, "size": 64, "seed": %d},
 "synth": {"samples": 20000},
 "train": {"backend": "gomlx", "spec": {
   "model": {"vision_width": 16, "width": 32, "depth": 1, "heads": 2},
   "stage1": {"steps": 4, "batch_size": 4, "warmup": 1, "checkpoint_every": 2},
   "stage2": {"steps": 2, "batch_size": 4, "warmup": 1, "checkpoint_every": 2},
   "stage3": {"steps": 2, "batch_size": 4, "warmup": 1, "checkpoint_every": 2}}},
 "eval": {"max_samples": 6, "max_samples_by": {"rec": 40, "pope-random": 40, "pope-popular": 40, "pope-adversarial": 40}, "report": false}
}`, seed))
}

// EvaluationsRecordedTwiceSQL counts the (run, checkpoint, stage,
// benchmark, split) groups that hold more than one evaluation: after any
// fault it must be 0. The run is part of the key because baselines have no
// checkpoint and each run records its own.
const EvaluationsRecordedTwiceSQL = `SELECT count(*) FROM (SELECT 1 FROM evaluations GROUP BY run_id, checkpoint_id, stage, benchmark, split HAVING count(*) > 1) d`
