-- services/train: ONNX exports beside GGUF ones (model/onnx bundles, float32
-- or float16 weights).

-- +goose Up
ALTER TABLE model_exports DROP CONSTRAINT IF EXISTS model_exports_format_check;
ALTER TABLE model_exports ADD CONSTRAINT model_exports_format_check CHECK (format IN ('gguf', 'onnx'));
ALTER TABLE model_exports ADD CONSTRAINT model_exports_onnx_dtype_check CHECK (format <> 'onnx' OR dtype IN ('float32', 'float16'));

-- +goose Down
DELETE FROM model_exports WHERE format = 'onnx';
ALTER TABLE model_exports DROP CONSTRAINT IF EXISTS model_exports_onnx_dtype_check;
ALTER TABLE model_exports DROP CONSTRAINT IF EXISTS model_exports_format_check;
ALTER TABLE model_exports ADD CONSTRAINT model_exports_format_check CHECK (format IN ('gguf'));
