package gomlx

import (
	"errors"
	"fmt"
	"io/fs"

	"github.com/groundmesh/groundmesh/plugins/compute"
)

// invalidf is an error wrapping compute.ErrInvalidArgument.
func invalidf(format string, args ...any) error {
	return fmt.Errorf("%w: %s", compute.ErrInvalidArgument, fmt.Sprintf(format, args...))
}

// fileError classifies an error reading an input file (checkpoint, shard):
// a missing file is compute.ErrNotFound, anything else (a corrupt file, a
// tensor of the wrong shape) compute.ErrInvalidArgument.
func fileError(err error) error {
	if errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("%w: %w", compute.ErrNotFound, err)
	}
	if errors.Is(err, compute.ErrInvalidArgument) || errors.Is(err, compute.ErrNotFound) {
		return err
	}
	return fmt.Errorf("%w: %w", compute.ErrInvalidArgument, err)
}
