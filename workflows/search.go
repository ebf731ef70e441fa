package workflows

import (
	"context"
	"fmt"
	"maps"
	"slices"

	enumspb "go.temporal.io/api/enums/v1"
	"go.temporal.io/api/operatorservice/v1"
	"go.temporal.io/sdk/client"
	"go.temporal.io/sdk/temporal"
	"go.temporal.io/sdk/workflow"
)

// The Pipeline's search attributes, so that the Temporal UI (and `temporal
// workflow list --query`) can filter runs: `GroundmeshBackend = "gomlx"`,
// `GroundmeshStage = "train"`, `GroundmeshDataset = "<dataset id>"`.
var (
	SearchDataset = temporal.NewSearchAttributeKeyKeyword("GroundmeshDataset")
	SearchBackend = temporal.NewSearchAttributeKeyKeyword("GroundmeshBackend")
	// SearchStage is the stage the Pipeline is in (ingest, synth, train,
	// eval, promote), then "done".
	SearchStage = temporal.NewSearchAttributeKeyKeyword("GroundmeshStage")
)

// searchAttributesVersion marks the Pipeline histories that set search
// attributes; histories recorded before them replay without.
const searchAttributesVersion = "search-attributes"

// searchUpdater sets the Pipeline's search attributes where its history
// is new enough to carry them.
func searchUpdater(ctx workflow.Context) func(...temporal.SearchAttributeUpdate) {
	on := workflow.GetVersion(ctx, searchAttributesVersion, workflow.DefaultVersion, 1) == 1
	return func(u ...temporal.SearchAttributeUpdate) {
		if !on {
			return
		}
		if err := workflow.UpsertTypedSearchAttributes(ctx, u...); err != nil {
			workflow.GetLogger(ctx).Warn("set search attributes", "err", err)
		}
	}
}

// SearchAttributeTypes are the Pipeline's search attributes by name, with
// their types (for a namespace registered with them).
func SearchAttributeTypes() map[string]enumspb.IndexedValueType {
	want := map[string]enumspb.IndexedValueType{}
	for _, k := range []temporal.SearchAttributeKeyKeyword{SearchDataset, SearchBackend, SearchStage} {
		want[k.GetName()] = enumspb.INDEXED_VALUE_TYPE_KEYWORD
	}
	return want
}

// EnsureSearchAttributes registers the Pipeline's search attributes in
// namespace where they are missing. A Pipeline that sets an attribute the
// namespace lacks fails its workflow task, so a worker must not start
// without them: the error says how an operator adds them when this
// client may not.
func EnsureSearchAttributes(ctx context.Context, c client.Client, namespace string) error {
	want := SearchAttributeTypes()
	have, err := c.OperatorService().ListSearchAttributes(ctx, &operatorservice.ListSearchAttributesRequest{Namespace: namespace})
	if err != nil {
		return fmt.Errorf("list search attributes of namespace %q: %w", namespace, err)
	}
	missing := map[string]enumspb.IndexedValueType{}
	for name, typ := range want {
		got, ok := have.GetCustomAttributes()[name]
		switch {
		case !ok:
			missing[name] = typ
		case got != typ:
			return fmt.Errorf("namespace %q has search attribute %s of type %s, want %s", namespace, name, got, typ)
		}
	}
	if len(missing) == 0 {
		return nil
	}
	if _, err := c.OperatorService().AddSearchAttributes(ctx, &operatorservice.AddSearchAttributesRequest{
		Namespace: namespace, SearchAttributes: missing,
	}); err != nil {
		names := slices.Sorted(maps.Keys(missing))
		return fmt.Errorf("add search attributes %v to namespace %q: %w (an operator can: temporal operator search-attribute create --namespace %s --name %s --type Keyword, for each)",
			names, namespace, err, namespace, names[0])
	}
	return nil
}
