package workflows

import (
	"go.temporal.io/sdk/worker"
	"go.temporal.io/sdk/workflow"
)

func workflowOpts(name string) workflow.RegisterOptions { return workflow.RegisterOptions{Name: name} }

// Register registers every workflow and the bridge activity on a worker.
func Register(w worker.Registry, acts *Activities) {
	w.RegisterWorkflowWithOptions(Pipeline, workflowOpts(PipelineWorkflowName))
	w.RegisterWorkflowWithOptions(Ingest, workflowOpts(IngestWorkflowName))
	w.RegisterWorkflowWithOptions(Synthesize, workflowOpts(SynthesizeWorkflowName))
	w.RegisterWorkflowWithOptions(Train, workflowOpts(TrainWorkflowName))
	w.RegisterWorkflowWithOptions(Evaluate, workflowOpts(EvaluateWorkflowName))
	w.RegisterWorkflowWithOptions(Export, workflowOpts(ExportWorkflowName))
	w.RegisterActivity(acts)
}
