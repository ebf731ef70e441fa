// Command toyplugin serves computetest's toy backend as a compute plugin,
// for services/train's kill test. TOY_STEP_DELAY slows its steps.
package main

import (
	"os"
	"time"

	"github.com/groundmesh/groundmesh/plugins/compute"
	"github.com/groundmesh/groundmesh/plugins/compute/computetest"
)

func main() {
	delay, _ := time.ParseDuration(os.Getenv("TOY_STEP_DELAY"))
	compute.Serve(computetest.NewToy(computetest.ToyOptions{StepDelay: delay}))
}
