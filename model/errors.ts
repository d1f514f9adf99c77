/**
 * Errors raised by model/: tokenizer, demo corpus, token shards, safetensors and checkpoints. Codes are stable (scripts and the
 * coordinator may match on them) and are to be documented in README.md § Error codes like the other packages'.
 */
export const ModelErrorCodes = {
  /** A tokenizer.json is not valid JSON or not a ByteLevel BPE tokenizer in the `tokenizers` format; the message names the field. */
  MDL_ERR_TOKENIZER_FILE: 'invalid tokenizer file',
  /** BPE training was given impossible settings, or the corpus has too few distinct pairs to reach the vocabulary size. */
  MDL_ERR_TOKENIZER_TRAINING: 'tokenizer training failed',
  /** A corpus input (text or JSONL) could not be read or a JSONL line has no string `text`. */
  MDL_ERR_DATA_INPUT: 'invalid corpus input',
  /** A shard index or shard file is missing, malformed, or disagrees with its index (size, dtype, tokenizer). */
  MDL_ERR_SHARD: 'invalid token shard',
  /** A batch request that the shards cannot serve: bad batch/seq/rank/world size, or a cursor outside the shards. */
  MDL_ERR_BATCH: 'invalid batch request',
  /** The bundled demo corpus package is missing or unreadable (run `npm ci`). */
  MDL_ERR_CORPUS: 'demo corpus unavailable',
  /** Bytes that are not a valid safetensors file (the message names the problem and the tensor), or tensors that cannot be written as one. */
  MDL_ERR_SAFETENSORS: 'invalid safetensors data',
  /** A checkpoint fails verification: a file is missing, or its size or sha256 differs from manifest.json, or its contents are inconsistent; the message names the file. */
  MDL_ERR_CHECKPOINT_CORRUPT: 'corrupt checkpoint',
  /** Checkpoints exist under the folder but none of them verifies (each one's reason is in the message). */
  MDL_ERR_NO_GOOD_CHECKPOINT: 'no good checkpoint',
  /** A checkpoint could not be written: invalid step or contents, or a file-system error (the cause is kept). */
  MDL_ERR_CHECKPOINT_WRITE: 'checkpoint write failed',
  /** Model files (config.json, model.safetensors, tokenizer.json) are missing, malformed or disagree with each other. */
  MDL_ERR_MODEL_FILES: 'invalid model files',
  /** Shard tensors cannot be split or merged: a parameter is missing or not fully covered, a tensor has the wrong dtype or shape, or replicated copies disagree (the message names the parameter and the shards). */
  MDL_ERR_RESHARD: 'cannot reshard tensors',
  /** Data-preparation settings are invalid: a bad source ratio or threshold, an unknown config key; the message names the setting. */
  MDL_ERR_DATAPREP_CONFIG: 'invalid data-preparation settings',
  /** A prepared dataset folder does not fit the job: its vocabulary is larger than the model's, or its index is unusable. */
  MDL_ERR_DATASET_MISMATCH: 'prepared dataset does not fit the model',
  /** INT8 weights cannot be made or read: an input that is not finite F32, an I8 tensor without its scale, a scale of the wrong shape, not finite and positive, or without its I8 tensor (the message names the tensor). */
  MDL_ERR_QUANTIZATION: 'invalid quantized weights',
  /** A LoRA spec is invalid (rank, alpha, dropout, targets; the message names the field) or does not fit the model. */
  MDL_ERR_LORA_SPEC: 'invalid LoRA spec',
  /** Adapter files (adapter_config.json, adapter_model.safetensors) are missing, malformed, or disagree with each other or the base model; the message names the tensor or field. */
  MDL_ERR_ADAPTER_FILES: 'invalid adapter files',
} as const;

export type ModelErrorCode = keyof typeof ModelErrorCodes;

export class ModelError extends Error {
  readonly code: ModelErrorCode;
  constructor(code: ModelErrorCode, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'ModelError';
    this.code = code;
  }
}
