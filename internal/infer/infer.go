// Package infer is the inference layer that services/eval and
// services/ground share: the prompts they ask in the training template,
// the decoding (answer grammar and budget) each kind of question gets,
// reading a box answer back into the image's pixels, loading and
// checking images, and opening a checkpoint on a compute backend as a
// model.Generator. The model's own mechanics (tokenizer, template,
// grammars, the decoding loop, the box codec) live once in package model;
// this package decides how a service uses them, so that eval measures the
// same questions ground answers.
package infer

import (
	"go.opentelemetry.io/otel"
)

var tracer = otel.Tracer("groundmesh/infer")
