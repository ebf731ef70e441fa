// Package metrics scores grounding and hallucination benchmarks: referring
// expression comprehension (REC), POPE, the crop tasks of the multi-scale
// alignment data, and grounded descriptions.
//
// Everything here is pure: inputs are parsed predictions and structured
// ground truth, outputs are numbers. Parsing a model's text into a box goes
// through model's box codec, and every IoU is computed in the
// original image's pixel coordinates after the square padding is undone, so
// a benchmark's numbers do not depend on the image's aspect ratio.
//
// The definitions follow the field's published evaluation code, re-derived
// from their definitions: lmms-eval's refcoco_bbox_rec (IoU of xyxy boxes,
// correct at IoU >= threshold, a missing box scores IoU 0, centre accuracy)
// and LLaVA's POPE evaluation (answer normalization, TP/FP/TN/FN, precision,
// recall, F1, accuracy and the ratio of predicted "yes").
package metrics
